"""Concurrency lessons on real gunicorn instances: one user's concurrent cart adds (a naive read-modify-write
of a cart blob loses items, HINCRBY and the stateful app's lock do not), and one stateful instance with
four gunicorn workers, whose memory is split four ways without any balancer.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Callable, Iterator

import pytest
import requests

from statelab import services
from statelab.config import BackingUrls
from statelab.seed import SEED_PASSWORD

pytestmark = pytest.mark.live
ADDS = 400
CONCURRENT = 8


@pytest.fixture
def start(backing: BackingUrls, tmp_path: Path) -> Iterator[Callable[..., services.Service]]:
    with ExitStack() as stack:
        def start_app(kind: str, instance_id: str, workers: int = 1, **env: str) -> services.Service:
            full_env = {**backing.app_env(), "LAB_UPLOAD_DIR": str(tmp_path / instance_id), **env}
            app = services.start_app(kind, instance_id, tmp_path, full_env, workers=workers)
            stack.callback(app.stop)
            return app.wait_ready()

        yield start_app


def _login_cookie(url: str, username: str) -> str:
    http = requests.Session()
    assert http.post(f"{url}/login", json={"username": username, "password": SEED_PASSWORD}, timeout=5).ok
    return str(http.cookies["lab_session"])


def _lost_items(urls: list[str], cookie: str) -> int:
    """Add one item ADDS times from CONCURRENT clients spread over urls; return how many the cart lost."""
    local = threading.local()

    def add(i: int) -> int:
        if not hasattr(local, "http"):
            local.http = requests.Session()
            local.http.cookies.set("lab_session", cookie)
        return int(local.http.post(f"{urls[i % len(urls)]}/cart/items", json={"product_id": 7, "qty": 1},
                                   timeout=10).status_code)

    with ThreadPoolExecutor(CONCURRENT) as pool:
        assert set(pool.map(add, range(ADDS))) == {201}
    items = requests.get(f"{urls[0]}/cart", cookies={"lab_session": cookie}, timeout=5).json()["items"]
    return ADDS - sum(item["qty"] for item in items if item["product_id"] == 7)


def test_a_naive_cart_loses_concurrent_adds_and_an_atomic_one_does_not(start: Callable[..., services.Service], username: str,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    lost = {}
    for mode in ("naive", "atomic"):  # the two modes keep a cart under different keys: same user, fresh carts
        apps = [start("stateless", f"{mode}-{i}", LAB_CART_MODE=mode) for i in (1, 2)]
        lost[mode] = _lost_items([a.url for a in apps], _login_cookie(apps[0].url, username))
        for app in apps:
            app.stop()
    stateful = start("stateful", "stateful-1")
    lost["stateful"] = _lost_items([stateful.url], _login_cookie(stateful.url, username))
    assert lost["naive"] > 0 and lost["atomic"] == 0 and lost["stateful"] == 0, lost
    with capsys.disabled():
        per_1000 = {k: round(v * 1000 / ADDS) for k, v in lost.items()}
        print(f"\nitems lost per 1,000 concurrent adds of one user ({CONCURRENT} clients): {per_1000}")


def test_four_gunicorn_workers_split_one_instances_sessions(start: Callable[..., services.Service], username: str,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    app = start("stateful", "split-1", workers=4)
    cookie = _login_cookie(app.url, username)
    answers: list[tuple[int, int]] = []  # (status of /me, pid of the worker), each on a new connection
    for _ in range(120):
        me = requests.get(f"{app.url}/me", cookies={"lab_session": cookie}, timeout=5).status_code
        pid = requests.get(f"{app.url}/stats", timeout=5).json()["pid"]
        answers.append((me, pid))
    pids = {pid for _, pid in answers}
    logged_out = sum(1 for status, _ in answers if status == 401)
    assert len(pids) >= 2, "every connection reached one worker: no split to see"
    assert 0 < logged_out < len(answers)  # the login lives in one worker's memory only
    with capsys.disabled():
        print(f"\none instance, 4 gunicorn workers: {logged_out}/{len(answers)} requests logged out "
              f"({len(pids)} workers answered)")
