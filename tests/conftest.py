"""Shared fixtures: real backing servers started by the runtime's own service code, once per session."""

from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import psutil
import pytest

from statelab import services
from statelab.config import BackingUrls, Secret

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
        started = {}
        for name, start in (("postgres", services.start_postgres), ("redis", services.start_redis),
                            ("s3", services.start_s3)):
            svc = start(run_dir)
            stack.callback(svc.stop)
            started[name] = svc
        for svc in started.values():
            svc.wait_ready()
        yield started


@pytest.fixture(scope="session")
def backing(backing_services: dict[str, services.Service]) -> BackingUrls:
    """URLs of the seeded database, Redis and S3 (what LAB_* variables carry to an app)."""
    from statelab import seed

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

import itertools  # noqa: E402
import secrets  # noqa: E402
from typing import Any, Callable  # noqa: E402

from flask import Flask  # noqa: E402
from flask.testing import FlaskClient  # noqa: E402

from statelab.config import APP_KINDS  # noqa: E402

# Each test that logs in takes fresh users from here, so carts and sessions never meet across tests.
_next_user = itertools.count(3001)


def app_test_config(kind: str, backing: BackingUrls, upload_dir: Path, **overrides: Any) -> dict[str, Any]:
    """Return the test_config for create_app: the backing stores' LAB_* variables plus overrides."""
    return {"TESTING": True, **backing.app_env(), "LAB_INSTANCE_ID": f"{kind}-test",
            "LAB_UPLOAD_DIR": str(upload_dir), **overrides}


def make_app(kind: str, config: dict[str, Any]) -> Flask:
    """Build one of the two apps from a test_config."""
    if kind == "stateful":
        import stateful_app

        return stateful_app.create_app(config)
    import stateless_app

    return stateless_app.create_app(config)


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
    return f"user{next(_next_user):04d}"


def login(client: FlaskClient, name: str) -> dict[str, Any]:
    """Log client in as a seeded user and return the response body."""
    response = client.post("/login", json={"username": name, "password": "statelab"})
    assert response.status_code == 200, response.get_json()
    return response.get_json()  # type: ignore[no-any-return]


def random_key() -> str:
    return secrets.token_hex(16)


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
