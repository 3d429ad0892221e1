"""Simulated users against a small in-process fake of the app contract (a threading HTTP server).

The fake keeps sessions and carts in memory per session (like the stateful app), can be wiped
mid-run to simulate a restart, and records each request's source address, so the tests can
measure exactly what the users should have measured.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import socket
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator

import pytest

from statelab.seed import SEED_PASSWORD
from statelab.users import (
    CrowdHandle, CrowdResult, LatencyHistogram, Population, VirtualUser, run_crowd_sync,
    user_address,
)
from statelab.users.measures import FINE_STEP_S, SHORT_RUN_S, _Recorder, timeline_step_s
from statelab.users.result import _timeline


class FakeApp(ThreadingHTTPServer):
    """The app contract in memory; `wipe()` forgets everything, like a restarted instance."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.generation = 1
        self.sessions: dict[str, str] = {}  # session id or access token -> username
        self.refresh_tokens: dict[str, str] = {}
        self.carts: dict[str, dict[int, int]] = {}  # per session, as in the stateful app
        self.uploads: dict[str, bytes] = {}
        self.jobs: dict[str, list[str]] = {}  # job id -> statuses still to report
        self.upload_count = 0
        self.items_added = 0
        self.items_at_wipe = 0
        self.refreshes = 0
        self.backend_cookie_seen = 0
        self.login_sources: dict[str, set[str]] = {}
        self.trace: dict[str, list[str]] = {}  # source address -> "METHOD path" in order
        self.drop_upload_every = 0  # lose every n-th upload after processing
        self.fail_job_every = 0
        self.product_delay_s = 0.0
        self.unknown_on_first_use: set[str] | None = None  # like round robin to a stranger

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def wipe(self) -> None:
        with self.lock:
            self.items_at_wipe += sum(sum(c.values()) for c in self.carts.values())
            self.sessions.clear()
            self.refresh_tokens.clear()
            self.carts.clear()
            self.uploads.clear()
            self.jobs.clear()
            self.generation += 1

    def expire_access_tokens(self) -> None:
        with self.lock:
            self.sessions.clear()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeApp
    timeout = 10
    disable_nagle_algorithm = True  # headers and body go out in two writes: avoid 40 ms stalls

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, status: int, doc: Any = None, raw: bytes | None = None,
               cookies: tuple[str, ...] = ()) -> None:
        body = raw if raw is not None else json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Served-By", f"fake-{self.server.generation}")
        if "LAB_BACKEND=" not in self.headers.get("Cookie", ""):
            self.send_header("Set-Cookie", "LAB_BACKEND=b1; Path=/")
        for cookie in cookies:
            self.send_header("Set-Cookie", cookie)
        self.end_headers()
        self.wfile.write(body)

    def _who(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else None
        if token is None:
            for part in self.headers.get("Cookie", "").split(";"):
                name, _, value = part.strip().partition("=")
                if name == "lab_session":
                    token = value
        return token if token in self.server.sessions else None

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        app = self.server
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length) if length else b""
        path = self.path
        if path.startswith("/products/") and app.product_delay_s:
            time.sleep(app.product_delay_s)
        with app.lock:
            app.trace.setdefault(self.client_address[0], []).append(f"{method} {path}")
            if "LAB_BACKEND=b1" in self.headers.get("Cookie", ""):
                app.backend_cookie_seen += 1
            self._route(app, method, path, body)

    def _route(self, app: FakeApp, method: str, path: str, body: bytes) -> None:
        sid = self._who()
        if method == "POST" and path == "/login":
            doc = json.loads(body)
            if doc.get("password") != SEED_PASSWORD:
                return self._reply(401, {"error": "bad credentials"})
            token, refresh = secrets.token_hex(8), secrets.token_hex(8)
            app.sessions[token] = doc["username"]
            app.refresh_tokens[refresh] = doc["username"]
            app.carts[token] = {}
            app.login_sources.setdefault(doc["username"], set()).add(self.client_address[0])
            return self._reply(200, {"user": {"id": 1, "username": doc["username"]},
                                     "access_token": token, "refresh_token": refresh},
                               cookies=(f"lab_session={token}; HttpOnly; Path=/",))
        if method == "POST" and path == "/token/refresh":
            refresh = json.loads(body).get("refresh_token")
            if refresh not in app.refresh_tokens:
                return self._reply(401, {"error": "bad refresh token"})
            app.refreshes += 1
            token = secrets.token_hex(8)
            app.sessions[token] = app.refresh_tokens[refresh]
            app.carts[token] = app.carts.get(token, {})
            return self._reply(200, {"access_token": token})
        if path.startswith("/products/"):
            return self._reply(200, {"id": int(path.rsplit("/", 1)[1]), "name": "thing"})
        if app.unknown_on_first_use is not None and sid is not None:
            if sid not in app.unknown_on_first_use:
                app.unknown_on_first_use.add(sid)
                sid = None
        if sid is None:
            return self._reply(401, {"error": "login required"})
        cart = app.carts.setdefault(sid, {})
        if path == "/me":
            return self._reply(200, {"user": {"id": 1, "username": app.sessions[sid]}})
        if path == "/cart":
            return self._reply(200, {"items": [{"product_id": p, "qty": q} for p, q in cart.items()]})
        if method == "POST" and path == "/cart/items":
            doc = json.loads(body)
            cart[doc["product_id"]] = cart.get(doc["product_id"], 0) + doc["qty"]
            app.items_added += doc["qty"]
            return self._reply(201, {"items": [{"product_id": p, "qty": q} for p, q in cart.items()]})
        if method == "POST" and path == "/uploads":
            boundary = self.headers["Content-Type"].split("boundary=")[1].encode()
            part = body.split(b"--" + boundary)[1]
            data = part.split(b"\r\n\r\n", 1)[1][:-2]
            app.upload_count += 1
            key = f"k{app.upload_count}"
            app.uploads[key] = data
            return self._reply(201, {"key": key, "size": len(data),
                                     "sha256": hashlib.sha256(data).hexdigest()})
        if path.startswith("/uploads/") and path.endswith("/process"):
            key = path.split("/")[2]
            number = int(key[1:])
            fails = bool(app.fail_job_every) and number % app.fail_job_every == 0
            app.jobs[key] = ["queued", "running", "failed" if fails else "done"]
            if app.drop_upload_every and number % app.drop_upload_every == 0:
                app.uploads.pop(key, None)
            return self._reply(202, {"job_id": key})
        if path.startswith("/uploads/"):
            data = app.uploads.get(path.split("/")[2])
            return self._reply(404, {}) if data is None else self._reply(200, raw=data)
        if path.startswith("/jobs/"):
            states = app.jobs.get(path.split("/")[2])
            if states is None:
                return self._reply(404, {})
            status = states.pop(0) if len(states) > 1 else states[0]
            return self._reply(200, {"status": status, "result": None})
        return self._reply(404, {"error": "no route"})


@contextmanager
def fake_app() -> Iterator[FakeApp]:
    app = FakeApp()
    thread = threading.Thread(target=app.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield app
    finally:
        app.shutdown()
        thread.join()
        app.server_close()


def wait_until(predicate: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the deadline")
        time.sleep(0.01)


def assert_timeline_sums(result: CrowdResult) -> None:
    assert sum(b.requests for b in result.timeline) == result.requests
    assert sum(b.errors for b in result.timeline) == result.error_total
    assert sum(b.logouts for b in result.timeline) == result.logout_events
    assert sum(b.items_lost for b in result.timeline) == result.items_lost
    step = result.timeline[0].width_s if result.timeline else 1.0
    assert step == timeline_step_s(result.wall_s)
    assert [b.t for b in result.timeline] == [round(i * step, 3) for i in range(len(result.timeline))]


# ---------------------------------------------------------------- pure


def test_addresses_are_distinct_and_in_distinct_slash24s() -> None:
    addresses = [user_address(i) for i in range(3000)]
    assert addresses[:3] == ["127.1.0.1", "127.1.1.1", "127.1.2.1"]
    assert len({a.rsplit(".", 1)[0] for a in addresses}) == 3000
    specs = Population(distinct_users=3, nat_users=4, nat_address="127.200.0.1").members()
    assert [s.address for s in specs] == addresses[:3] + ["127.200.0.1"] * 4
    assert [s.username for s in specs] == [f"user000{i}" for i in range(1, 8)]


def test_population_rejects_more_users_than_accounts() -> None:
    with pytest.raises(ValueError, match="accounts"):
        Population(distinct_users=4000, nat_users=1001)


def test_latency_histogram_percentiles_within_two_percent() -> None:
    hist = LatencyHistogram()
    for ms in range(1, 1001):
        hist.record(ms / 1000)
    summary = hist.summary()
    assert summary.count == 1000
    assert summary.p50_ms == pytest.approx(500, rel=0.02)
    assert summary.p95_ms == pytest.approx(950, rel=0.02)
    assert summary.p99_ms == pytest.approx(990, rel=0.02)
    assert summary.max_ms == 1000.0
    assert summary.mean_ms == pytest.approx(500.5)


def test_short_runs_are_charted_every_quarter_second_long_ones_per_second() -> None:
    """A 6 s quick run used to chart as 6 points; it gets 24 now, and a long run keeps 1 s buckets."""
    rec = _Recorder(t0=100.0)
    for i in range(24):  # one request every 0.25 s for 6 s, an error in the second quarter of second 2
        rec.response(100.0 + i * 0.25 + 0.01, 0.001, "app-1", "5xx" if i == 9 else None)
    short = _timeline(rec.timeline, timeline_step_s(6.0))
    assert len(short) == 24 and {b.width_s for b in short} == {FINE_STEP_S}
    assert [b.errors for b in short].index(1) == 9 and short[9].t == 2.25
    long = _timeline(rec.timeline, timeline_step_s(SHORT_RUN_S + 1))
    assert [(b.t, b.width_s, b.requests) for b in long] == [(float(s), 1.0, 4) for s in range(6)]
    assert sum(b.errors for b in long) == 1 and long[2].errors == 1


def test_balancer_rates_share_one_fine_grid_for_short_runs() -> None:
    from statelab import measure

    hits = [measure.Hit(10.0 + i * 0.1, "app-1" if i % 2 else "app-2", 200, 1.0) for i in range(40)]  # 4 s
    one = measure.per_second(hits, 10.0, "requests on app-1", pick=lambda h: h.backend == "app-1")
    two = measure.per_second(hits, 10.0, "requests on app-2", pick=lambda h: h.backend == "app-2")
    assert [t for t, _ in one.points] == [t for t, _ in two.points] == [i * 0.25 for i in range(16)]
    assert sum(v for _, v in one.points) * 0.25 == 20  # rates times the bucket width give the counts back
    assert measure.per_second(hits, 10.0, step_s=1.0).points[0] == (0.0, 10.0)


# ---------------------------------------------------------------- against the fake app


def test_users_bind_distinct_addresses_and_nat_users_share_one() -> None:
    population = Population(distinct_users=20, nat_users=10, think_s=0, steps=3)
    with fake_app() as app:
        result = run_crowd_sync(app.base_url, population, "shopper", ramp_s=0.2)
    sources = {name: next(iter(addrs)) for name, addrs in app.login_sources.items()}
    distinct = [sources[f"user{i:04d}"] for i in range(1, 21)]
    assert distinct == [user_address(i) for i in range(20)]
    assert len({a.rsplit(".", 1)[0] for a in distinct}) == 20
    assert {sources[f"user{i:04d}"] for i in range(21, 31)} == {"127.200.0.1"}
    assert result.users == 30 and result.logins_ok == 30 and result.error_total == 0
    assert result.items_added == app.items_added and result.items_lost == 0
    assert app.backend_cookie_seen == result.requests - 30  # every request after the first
    assert result.latency.count == result.requests
    assert 0 < result.latency.p50_ms <= result.latency.p95_ms <= result.latency.p99_ms
    assert result.latency.p99_ms <= result.latency.max_ms
    assert result.served_by == {"fake-1": result.requests}
    assert 0 < result.loop_cpu_share <= result.cpu_share + 0.05
    assert_timeline_sums(result)
    json.dumps(result.to_json(per_user=True))


def test_wipe_mid_run_is_measured_as_logouts_and_lost_items() -> None:
    users = 20
    population = Population(distinct_users=users, think_s=0.01)
    with fake_app() as app:
        with CrowdHandle(app.base_url, population, "shopper", ramp_s=0.2) as crowd:
            wait_until(lambda: crowd.live().logins_ok == users and crowd.live().items_added > 100)
            app.wipe()
            wait_until(lambda: crowd.live().logout_events == users)
            time.sleep(0.2)
            crowd.stop()
            result = crowd.result(timeout=20)
    assert result.users_logged_out == users
    assert result.logout_events == users and result.relogins == users
    assert result.logins_ok == 2 * users
    assert result.items_added == app.items_added
    assert app.items_at_wipe > 0
    assert result.items_lost == app.items_at_wipe
    assert result.served_by.keys() == {"fake-1", "fake-2"}
    assert result.error_total == 0
    assert_timeline_sums(result)
    assert sum(1 for b in result.timeline if b.logouts) >= 1


def test_jwt_users_refresh_expired_tokens_and_relogin_after_a_wipe() -> None:
    users = 5
    population = Population(distinct_users=users, auth="jwt", think_s=0.01)
    with fake_app() as app:
        with CrowdHandle(app.base_url, population, "shopper", ramp_s=0.1) as crowd:
            wait_until(lambda: crowd.live().logins_ok == users and crowd.live().requests > 50)
            app.expire_access_tokens()
            wait_until(lambda: app.refreshes >= users)
            app.wipe()
            wait_until(lambda: crowd.live().logout_events == users)
            crowd.stop()
            result = crowd.result(timeout=20)
    assert result.token_refreshes == app.refreshes >= users
    assert result.logout_events == users == result.users_logged_out
    assert result.items_lost == app.items_at_wipe > 0
    assert result.error_total == 0


def test_a_second_401_right_after_relogin_is_another_logout_not_a_loop() -> None:
    async def look_at_me(user: VirtualUser) -> None:
        assert await user.login()
        response = await user.call("GET", "/me")
        assert response is not None and response.status == 401
        user.steps_done += 1

    with fake_app() as app:
        app.unknown_on_first_use = set()
        result = run_crowd_sync(app.base_url, Population(distinct_users=1, steps=1), look_at_me)
    assert result.logout_events == 2 and result.users_logged_out == 1
    assert result.logins_ok == 2 and result.relogins == 1
    assert result.requests == 4 and result.error_total == 0
    assert_timeline_sums(result)


def test_uploader_counts_missing_uploads_and_failed_jobs() -> None:
    population = Population(distinct_users=4, think_s=0, steps=3)
    with fake_app() as app:
        app.drop_upload_every = 2
        app.fail_job_every = 3
        result = run_crowd_sync(app.base_url, population, "uploader", ramp_s=0)
    assert result.uploads == app.upload_count == 12
    assert result.uploads_missing == 6 and result.uploads_corrupt == 0
    assert result.jobs_failed == 4 and result.jobs_done == 8
    assert result.error_total == 0


def test_same_seed_gives_the_same_journeys() -> None:
    population = Population(distinct_users=6, think_s=0, steps=6)

    def trace(seed: int) -> dict[str, list[str]]:
        with fake_app() as app:
            run_crowd_sync(app.base_url, population, "shopper", seed=seed, ramp_s=0)
        return app.trace

    first, again, other = trace(7), trace(7), trace(8)
    assert first == again
    assert first != other
    assert len(first) == 6


def test_latency_percentiles_measure_the_server_delay() -> None:
    async def products(user: VirtualUser) -> None:
        while user.running:
            await user.call("GET", f"/products/{user.pick_product()}")
            user.steps_done += 1

    population = Population(distinct_users=4, think_s=0, steps=10)
    with fake_app() as app:
        app.product_delay_s = 0.02
        result = run_crowd_sync(app.base_url, population, products, ramp_s=0)
    assert result.latency.count == 40 == result.latency_by_instance["fake-1"].count
    assert 20 <= result.latency.p50_ms <= 45  # the 20 ms sleep, plus a loaded machine
    assert result.latency.p50_ms <= result.latency.p95_ms <= result.latency.p99_ms
    assert result.latency.p99_ms <= result.latency.max_ms


def test_transport_errors_are_counted_by_kind() -> None:
    async def one_product(user: VirtualUser) -> None:
        while user.running:
            await user.call("GET", "/products/1")
            user.steps_done += 1

    population = Population(distinct_users=3, think_s=0, steps=2)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    result = run_crowd_sync(f"http://127.0.0.1:{port}", population, one_product, ramp_s=0)
    assert result.errors["connect"] == 6 == result.requests
    with socket.socket() as silent:  # accepts (in the backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        result = run_crowd_sync(url, population, one_product, ramp_s=0, request_timeout_s=0.3)
    assert result.errors["timeout"] == 6
    assert time.monotonic() - started < 3
    assert_timeline_sums(result)


@contextmanager
def closing_server() -> Iterator[tuple[str, list[int]]]:
    """Answer the first request on each connection, then close on the second without a byte."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.05)
    answered: list[int] = []
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Served-By: raw\r\n\r\nok")
                answered.append(1)
                conn.recv(65536)  # the reused socket's request: drop it, like a restart would

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", answered
    finally:
        done.set()
        thread.join()
        listener.close()


def test_stale_keepalive_is_retried_once_for_idempotent_requests_only() -> None:
    async def two_requests(user: VirtualUser) -> None:
        await user.call(user.rng.choice(["GET"]), "/products/1")
        await user.call("GET", "/products/2")
        await user.call("POST", "/cart/items", {"product_id": 1, "qty": 1})
        user.steps_done += 1

    population = Population(distinct_users=1, think_s=0, steps=1)
    with closing_server() as (url, answered):
        result = run_crowd_sync(url, population, two_requests, ramp_s=0)
    assert result.stale_retries == 1
    assert result.errors["protocol"] == 1  # the POST on a stale socket is not retried
    assert result.requests == 3 and len(answered) == 2


def test_browsers_prefer_popular_products_and_some_log_in() -> None:
    population = Population(distinct_users=10, think_s=0, steps=40)
    with fake_app() as app:
        result = run_crowd_sync(app.base_url, population, "browser", ramp_s=0)
    paths = [p for trace in app.trace.values() for p in trace if p.startswith("GET /products/")]
    ids = [int(p.rsplit("/", 1)[1]) for p in paths]
    assert len(ids) == 400 and all(1 <= i <= 500 for i in ids)
    assert ids.count(1) > 10 * max(1, ids.count(100))
    assert result.logins_ok == len(app.login_sources)
    assert result.error_total == 0


def test_crowd_ends_after_its_duration_or_when_stopped_before_it_started() -> None:
    population = Population(distinct_users=3, think_s=0.01)
    with fake_app() as app:
        result = run_crowd_sync(app.base_url, population, "browser", duration_s=0.5, ramp_s=0)
        # Bounds loose enough for a shared, noisy 2-core machine: this checks ending, not speed.
        assert 0.5 <= result.wall_s < 10 and result.requests > 0
        assert result.loop_lag.count >= 1
        handle = CrowdHandle(app.base_url, population, "browser", ramp_s=0)
        assert handle.live().requests == 0
        handle.stop()
        result = handle.start().result(timeout=5)
    assert result.wall_s < 10 and result.error_total == 0


def test_crowd_raises_the_open_file_limit_it_needs() -> None:
    import resource

    from statelab import users

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (300, hard))
        users._ensure_open_files(400)
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= 400
        if hard != resource.RLIM_INFINITY:
            with pytest.raises(users.ConfigError, match="open files"):
                users._ensure_open_files(hard + 1)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
