"""Shared fixtures: real backing servers started by the runtime's own service code, once per session.

Fixtures only: shared helpers and fakes live in `tests/support/`, which tests import directly.
"""

from __future__ import annotations

import itertools
import os
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import psutil
import pytest
from flask import Flask
from flask.testing import FlaskClient

from statelab import seed, services
from statelab.config import APP_KINDS, BackingUrls, Secret
from tests.support.apps import app_test_config, make_app

if TYPE_CHECKING:
    from statelab.control import ControlServer
    from statelab.topology import Lab


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("run")


@pytest.fixture(scope="session")
def backing_services(run_dir: Path) -> Iterator[dict[str, services.Service]]:
    """PostgreSQL, Redis and SeaweedFS S3 as real processes, started in parallel."""
    with ExitStack() as stack:
        yield services.start_backing_stores(run_dir, stack)


@pytest.fixture(scope="session")
def backing(backing_services: dict[str, services.Service]) -> BackingUrls:
    """URLs of the seeded database, Redis and S3 (what LAB_* variables carry to an app)."""
    db_url = services.create_database(backing_services["postgres"].url)
    seed.seed(db_url)
    s3 = backing_services["s3"]
    return BackingUrls(database_url=db_url, redis_url=backing_services["redis"].url,
                       s3_endpoint=s3.url, s3_access_key=s3.extra["access_key"],
                       s3_secret_key=Secret(s3.extra["secret_key"]))


@pytest.fixture(scope="session", autouse=True)
def no_orphans_after_session() -> Iterator[None]:
    """After the whole session, no child process of the test run may be left running."""
    yield
    from statelab.procs import stop_all

    stop_all()
    me = psutil.Process(os.getpid())
    leftovers = [p for p in me.children(recursive=True) if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not leftovers, f"processes left running after the tests: {leftovers}"


# --- the two apps (fixtures for the app tests) -----------------------------------------------------

# Each test that logs in takes fresh users from here, so carts and sessions never meet across tests.
_next_user = itertools.count(3001)


@pytest.fixture
def app_factory(backing: BackingUrls, tmp_path: Path) -> Iterator[Callable[..., Flask]]:
    """Build apps (kind, **LAB_* overrides) against the shared stores; close them after the test."""
    built: list[Flask] = []

    def build(kind: str, **overrides: Any) -> Flask:
        app = make_app(kind, app_test_config(kind, backing, tmp_path / "uploads" / kind, **overrides))
        built.append(app)
        return app

    yield build
    for app in built:
        app.extensions["lab"].close()


@pytest.fixture(params=APP_KINDS)
def client(request: pytest.FixtureRequest, app_factory: Callable[..., Flask]) -> FlaskClient:
    """A test client of one of the two apps (tests using it run once per app)."""
    return app_factory(request.param).test_client()


@pytest.fixture
def username() -> str:
    """Return a seeded user nobody else in this test session logs in as."""
    return seed.username(next(_next_user))


@pytest.fixture(scope="session")
def backing_worker(backing: BackingUrls, run_dir: Path) -> Iterator[None]:
    """One RQ worker on the shared Redis, for the stateless app's jobs (the stateful app needs none)."""
    worker = services.start_worker("rq-worker", run_dir, backing.app_env())
    yield
    worker.stop()


@pytest.fixture
def small_lab(tmp_path: Path) -> Iterator[tuple["Lab", "ControlServer"]]:
    """A real, small stateless lab (2 instances) with its control API, stopped after the test."""
    from statelab.control import ControlServer
    from statelab.topology import Lab, LabSpec

    with ExitStack() as stack:
        lab = Lab(LabSpec(app="stateless", instances=2, run_dir=tmp_path / "lab", seed_users=200,
                          seed_products=50))
        stack.callback(lab.stop)
        lab.start()
        control = ControlServer(lab).start()
        stack.callback(control.stop)
        yield lab, control
