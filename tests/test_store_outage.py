"""Store outages for the stateless app, on a Redis and an S3 of its own (the shared ones stay up):
a dead or hung store answers 503 JSON naming it within the timeout, never a hang, and the app
recovers when the store comes back on the same port.
"""

from __future__ import annotations

import io
import signal
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient

from statelab import services
from statelab.config import BackingUrls, Secret
from statelab.errors import ServiceFailed
from statelab.procs import ManagedProcess
from statelab.seed import SEED_PASSWORD
from tests.support.apps import app_test_config, login, make_app

pytestmark = pytest.mark.live
STORE_TIMEOUT_S = 0.5
MAX_ANSWER_S = 3.0


def _start_s3(run_dir: Path, attempts: int = 3) -> services.Service:
    """Start S3, retrying: start_s3 picks 12 free ports, and one may be taken before weed binds it."""
    for attempt in range(attempts):
        try:
            return services.start_s3(run_dir).wait_ready()
        except ServiceFailed as exc:
            if "not available" not in str(exc) or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


class Stores:
    """A dedicated Redis and S3 that a test may stop and restart on the same ports."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.redis = services.start_redis(run_dir)
        self.s3 = _start_s3(run_dir)
        self.redis.wait_ready()

    def restart_redis(self) -> None:
        self.redis.stop()
        self.redis = services.start_redis(self.run_dir, port=int(self.redis.extra["port"])).wait_ready()

    def restart_s3(self) -> None:
        # start_s3 picks fresh ports; to come back on the same ones, rerun the same command line.
        old = self.s3.process
        old.stop()
        proc = ManagedProcess(old.name, old.argv, old.log_path, probe=old.probe, env=old.env, cwd=old.cwd).start()
        self.s3 = services.Service("s3", proc, self.s3.url, extra=self.s3.extra).wait_ready()

    def stop(self) -> None:
        self.redis.stop()
        self.s3.stop()


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stores]:
    """One pair for the module: every test leaves both stores running again when it ends."""
    own = Stores(tmp_path_factory.mktemp("outage-stores"))
    try:
        yield own
    finally:
        own.stop()


@pytest.fixture
def app(stores: Stores, backing: BackingUrls, tmp_path: Path) -> Iterator[Flask]:
    urls = BackingUrls(database_url=backing.database_url, redis_url=stores.redis.url, s3_endpoint=stores.s3.url,
                       s3_access_key=stores.s3.extra["access_key"], s3_secret_key=Secret(stores.s3.extra["secret_key"]))
    built = make_app("stateless", app_test_config("stateless", urls, tmp_path / "uploads",
                                                  LAB_STORE_TIMEOUT_S=str(STORE_TIMEOUT_S)))
    with ExitStack() as stack:
        stack.callback(built.extensions["lab"].close)
        yield built


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


def assert_503_naming(client: FlaskClient, store: str, method: str, path: str, **kwargs: Any) -> None:
    response, elapsed = timed(lambda: client.open(path, method=method, **kwargs))
    assert response.status_code == 503, (path, response.status_code, response.data[:200])
    assert response.get_json()["error"].startswith(f"{store} unreachable"), response.get_json()
    assert elapsed < MAX_ANSWER_S, f"{method} {path} took {elapsed:.2f} s with {store} down"


def wait_until(client: FlaskClient, path: str, timeout_s: float = 15.0) -> None:
    """Poll GET path until it answers 200 (the app recovered), failing at the deadline."""
    deadline = time.monotonic() + timeout_s
    while (response := client.get(path)).status_code != 200:
        assert time.monotonic() < deadline, (path, response.status_code, response.get_json())
        time.sleep(0.05)


def wait_ready(client: FlaskClient) -> None:
    wait_until(client, "/readyz")


def test_redis_down_then_back(stores: Stores, app: Flask, username: str) -> None:
    client = app.test_client()
    login(client, username)
    assert client.get("/readyz").status_code == 200
    stores.redis.stop()
    assert_503_naming(client, "redis", "GET", "/readyz")
    assert_503_naming(client, "redis", "GET", "/me")
    assert_503_naming(client, "redis", "GET", "/cart")
    assert_503_naming(client, "redis", "GET", "/products/3")
    assert_503_naming(client, "redis", "POST", "/login", json={"username": username, "password": SEED_PASSWORD})
    assert client.get("/healthz").status_code == 200  # alive, only not ready

    stores.restart_redis()
    wait_ready(client)
    # A Redis without persistence came back empty: the old session is gone, a new login works.
    assert client.get("/me").status_code == 401
    login(client, username)
    assert client.post("/cart/items", json={"product_id": 2, "qty": 1}).status_code == 201


def test_hung_redis_times_out(stores: Stores, app: Flask, username: str) -> None:
    client = app.test_client()
    login(client, username)
    stores.redis.process.signal(signal.SIGSTOP)
    try:
        assert_503_naming(client, "redis", "GET", "/readyz")
        assert_503_naming(client, "redis", "GET", "/me")
    finally:
        stores.redis.process.signal(signal.SIGCONT)
    wait_ready(client)
    assert client.get("/me").status_code == 200


def test_s3_down_then_back(stores: Stores, app: Flask, username: str) -> None:
    client = app.test_client()
    login(client, username)
    key = client.post("/uploads", data={"file": (io.BytesIO(b"kept"), "k.txt")}).get_json()["key"]
    stores.s3.process.stop()
    assert_503_naming(client, "s3", "GET", "/readyz")
    assert_503_naming(client, "s3", "POST", "/uploads", data={"file": (io.BytesIO(b"lost"), "l.txt")})
    assert_503_naming(client, "s3", "GET", f"/uploads/{key}")
    assert client.get("/me").status_code == 200  # the rest of the app still works

    stores.restart_s3()
    wait_ready(client)
    # SeaweedFS answers the bucket check before its volume is back (reads give 500, which the app
    # reports as 503): wait for the read itself. It keeps its data on disk, so the upload survives.
    wait_until(client, f"/uploads/{key}")
    assert client.get(f"/uploads/{key}").data == b"kept"
    assert client.post("/uploads", data={"file": (io.BytesIO(b"new"), "n.txt")}).status_code == 201
