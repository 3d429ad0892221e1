"""Shared fixtures: real backing servers started by the runtime's own service code, once per session."""

from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path
from typing import Iterator

import psutil
import pytest

from statelab import services
from statelab.config import BackingUrls, Secret


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
