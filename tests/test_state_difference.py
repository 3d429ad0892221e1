"""Two real instances of each app: state created on instance 1 is unknown to instance 2 for the
stateful app (the disaster) and visible there for the stateless one (the design survives).
"""

from __future__ import annotations

import hashlib
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
import redis
import requests

from statelab import services
from statelab.config import APP_KINDS, BackingUrls
from statelab.seed import SEED_PASSWORD

pytestmark = pytest.mark.live
TIMEOUT_S = 5


@dataclass
class Pair:
    kind: str
    urls: tuple[str, str]

    @property
    def shared(self) -> bool:
        """Whether the design shares state between instances (what each test expects)."""
        return self.kind == "stateless"


@pytest.fixture(scope="module", params=APP_KINDS)
def pair(request: pytest.FixtureRequest, backing: BackingUrls, run_dir: Path) -> Iterator[Pair]:
    """Two gunicorn instances of one app (plus an RQ worker for the stateless one), stopped in finally."""
    kind = request.param
    with ExitStack() as stack:
        started = []
        for n in (1, 2):
            env = {**backing.app_env(), "LAB_UPLOAD_DIR": str(run_dir / "uploads" / f"{kind}-{n}")}
            app = services.start_app(kind, f"{kind}-{n}", run_dir, env)
            stack.callback(app.stop)
            started.append(app)
        if kind == "stateless":
            stack.callback(services.start_worker(f"worker-{kind}", run_dir, backing.app_env()).stop)
        for app in started:
            app.wait_ready()
        yield Pair(kind, (started[0].url, started[1].url))


def _login(base: str, username: str) -> requests.Session:
    http = requests.Session()
    r = http.post(base + "/login", json={"username": username, "password": SEED_PASSWORD}, timeout=TIMEOUT_S)
    assert r.status_code == 200, r.text
    return http


def _stats(base: str) -> dict[str, Any]:
    return requests.get(base + "/stats", timeout=TIMEOUT_S).json()  # type: ignore[no-any-return]


def test_session(pair: Pair, username: str) -> None:
    one = _login(pair.urls[0], username)
    cookie = one.cookies["lab_session"]
    on_two = requests.get(pair.urls[1] + "/me", cookies={"lab_session": cookie}, timeout=TIMEOUT_S)
    assert on_two.headers["X-Served-By"] == f"{pair.kind}-2"
    assert on_two.status_code == (200 if pair.shared else 401)
    in_memory = _stats(pair.urls[0])["sessions_in_memory"]
    assert in_memory == 0 if pair.shared else in_memory >= 1


def test_cart(pair: Pair, username: str) -> None:
    one, two = _login(pair.urls[0], username), _login(pair.urls[1], username)
    added = one.post(pair.urls[0] + "/cart/items", json={"product_id": 5, "qty": 3}, timeout=TIMEOUT_S)
    assert added.status_code == 201
    cart_on_two = two.get(pair.urls[1] + "/cart", timeout=TIMEOUT_S).json()
    assert cart_on_two == {"items": [{"product_id": 5, "qty": 3}] if pair.shared else []}


def test_upload_and_job(pair: Pair, username: str) -> None:
    one, two = _login(pair.urls[0], username), _login(pair.urls[1], username)
    data = b"alpha beta\ngamma\n"
    key = one.post(pair.urls[0] + "/uploads", files={"file": ("f.txt", data)}, timeout=TIMEOUT_S).json()["key"]
    assert _stats(pair.urls[0])["local_files"] == (0 if pair.shared else 1)

    download = two.get(f"{pair.urls[1]}/uploads/{key}", timeout=TIMEOUT_S)
    assert download.status_code == (200 if pair.shared else 404)
    # Processing on instance 2 an upload that instance 1 received: the stateful job has no file.
    processed = two.post(f"{pair.urls[1]}/uploads/{key}/process", timeout=TIMEOUT_S)
    assert processed.status_code == (202 if pair.shared else 404)

    job_id = one.post(f"{pair.urls[0]}/uploads/{key}/process", timeout=TIMEOUT_S).json()["job_id"]
    done = _wait_done(pair.urls[0], one, job_id)
    assert done["result"]["sha256"] == hashlib.sha256(data).hexdigest()
    on_two = two.get(f"{pair.urls[1]}/jobs/{job_id}", timeout=TIMEOUT_S)
    assert on_two.status_code == (200 if pair.shared else 404)
    if pair.shared:
        assert on_two.json() == done


def test_product_cache(pair: Pair, backing: BackingUrls) -> None:
    product_id = 450 if pair.shared else 451
    assert backing.redis_url
    redis.Redis.from_url(backing.redis_url, socket_timeout=2).delete(f"product:{product_id}")
    requests.get(f"{pair.urls[0]}/products/{product_id}", timeout=TIMEOUT_S).raise_for_status()
    before = _stats(pair.urls[1])
    requests.get(f"{pair.urls[1]}/products/{product_id}", timeout=TIMEOUT_S).raise_for_status()
    after = _stats(pair.urls[1])
    hits, misses = after["cache_hits"] - before["cache_hits"], after["cache_misses"] - before["cache_misses"]
    assert (hits, misses) == ((1, 0) if pair.shared else (0, 1))
    assert after["db_queries"] - before["db_queries"] == (0 if pair.shared else 1)


def _wait_done(base: str, http: requests.Session, job_id: str, timeout_s: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body: dict[str, Any] = http.get(f"{base}/jobs/{job_id}", timeout=TIMEOUT_S).json()
        if body["status"] in ("done", "failed"):
            assert body["status"] == "done", body
            return body
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} not done after {timeout_s} s")
