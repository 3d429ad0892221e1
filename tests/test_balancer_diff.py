"""The builtin balancer against HAProxy: the same raw probes through both, in front of the same backends.

Each probe measures an outcome through each balancer and asserts that the builtin one is never
worse, with "worse" defined per probe (a corrupted next request, a 5xx where HAProxy relays the
backend's 4xx, fewer answers to pipelined requests, a refused shape forwarded). The builtin one
also has to meet the bar on its own where HAProxy does not (a Host-less HTTP/1.1 request is a
400 by RFC 9112, HAProxy 2.6 lets it through). The backends: the test backend of the proxy
tests, which answers early on purpose, and a real gunicorn + Flask instance of the stateful app
for the 401 and 413 that started issue 9.
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from contextlib import ExitStack, closing
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest
import requests

from statelab import services
from statelab.config import BackingUrls
from tests.support.balancers import (PIPELINES, SMUGGLING, TIMEOUT_S, answers, raw_exchange, start_backend,
                                     start_balancer, start_haproxy)

pytestmark = [pytest.mark.live, pytest.mark.haproxy,
              pytest.mark.skipif(shutil.which("haproxy") is None,
                                 reason="haproxy not installed (apt-get install haproxy): nothing to compare with")]

MAX_UPLOAD_BYTES = 1 << 20
UPLOADS = 20


@dataclass(frozen=True)
class Pair:
    """The two balancers in front of the same backends: their ports by engine name."""

    ports: dict[str, int]

    def each(self, probe: Callable[[int], object]) -> dict[str, object]:
        """Run probe(port) through both balancers, HAProxy first."""
        return {name: probe(self.ports[name]) for name in ("haproxy", "builtin")}


def start_pair(stack: ExitStack, run_dir: Path, backends: list[tuple[str, str]]) -> Pair:
    lab = start_balancer(stack, run_dir, backends, body_timeout_s=2.0)
    return Pair({"builtin": lab.port, "haproxy": start_haproxy(stack, run_dir, backends)})


@pytest.fixture(scope="module")
def test_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """Both balancers in front of one test backend (one, so a reused backend connection is certain)."""
    run_dir = tmp_path_factory.mktemp("diff-test-backend")
    with ExitStack() as stack:
        yield start_pair(stack, run_dir, [("t-1", start_backend(stack, run_dir, "t-1"))])


@pytest.fixture(scope="module")
def app_pair(backing: BackingUrls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """Both balancers in front of one gunicorn instance of the stateful app (uploads up to 1 MiB)."""
    run_dir = tmp_path_factory.mktemp("diff-app")
    with ExitStack() as stack:
        env = {**backing.app_env(), "LAB_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
               "LAB_UPLOAD_DIR": str(run_dir / "uploads")}
        app = services.start_app("stateful", "gw-1", run_dir, env)
        stack.callback(app.stop)
        app.wait_ready()
        yield start_pair(stack, run_dir, [("gw-1", app.url.removeprefix("http://"))])


def status_of(raw: bytes) -> int:
    got = answers(raw)
    return got[0].status if got else 0


# --- shapes two parsers could frame differently ---------------------------------------------------

@pytest.mark.parametrize("name", SMUGGLING)
def test_no_refused_shape_gets_through(test_pair: Pair, name: str) -> None:
    """Worse: the builtin forwards a shape (2xx) or answers more than once where it should refuse and close."""
    got = test_pair.each(lambda port: answers(raw_exchange(port, SMUGGLING[name])))
    builtin = got["builtin"]
    assert [a.status for a in builtin] in ([400], [431]), (name, got)  # type: ignore[attr-defined]
    assert builtin[0].headers["x-served-by"] == "balancer"  # type: ignore[index]
    after = test_pair.each(lambda port: status_of(raw_exchange(port, b"GET /after HTTP/1.1\r\nHost: a\r\n"
                                                                     b"Connection: close\r\n\r\n")))
    assert after["builtin"] == 200


# --- early answers ----------------------------------------------------------------------------------

def late_body_then_next(port: int, head: bytes, body: bytes, follow_up: bytes) -> tuple[int, int]:
    """Send a head, the body 0.1 s later, close; return (status of the first answer, of a fresh follow-up)."""
    with closing(socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)) as s:
        s.sendall(head)
        time.sleep(0.1)
        try:
            s.sendall(body)
            first = s.recv(65536)
        except OSError:
            first = b""
    return status_of(first), status_of(raw_exchange(port, follow_up))


def test_an_early_answer_with_a_late_body_leaves_the_next_request_intact(app_pair: Pair) -> None:
    """Worse: the next request on a fresh connection is not answered 200 by the instance (the issue's repro)."""
    head = (b"POST /cart/items HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 24\r\n\r\n")
    follow_up = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    got = {engine: [late_body_then_next(port, head, b'{"product_id":1,"qty":1}', follow_up) for _ in range(5)]
           for engine, port in app_pair.ports.items()}
    assert got["builtin"] == [(401, 200)] * 5, got


def test_an_early_answer_with_a_big_unsent_body_does_not_stall_another_login(app_pair: Pair, username: str) -> None:
    """Worse: another client's login fails, or waits, while one client's body is still due."""
    def probe(port: int) -> tuple[int, int, float]:
        with closing(socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)) as s:
            s.sendall(b"POST /cart/items HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 2000\r\n\r\n")
            time.sleep(0.1)
            s.sendall(b'{"product_id":1,"qty":1}')  # 1976 bytes never come
            early = status_of(s.recv(65536))
            t0 = time.monotonic()
            r = requests.post(f"http://127.0.0.1:{port}/login", json={"username": username, "password": "statelab"},
                              timeout=10)
            return early, r.status_code, time.monotonic() - t0

    got = app_pair.each(probe)
    early, login, took = got["builtin"]  # type: ignore[misc]
    assert (early, login) == (401, 200), got
    assert took < 4.5, got  # not held up: the old builtin waited for gunicorn's 5 s keep-alive timeout, then 502


def test_an_oversized_upload_gets_413_every_time(app_pair: Pair, username: str) -> None:
    """Worse: fewer 413s than HAProxy (the old builtin turned about half into 502s); the builtin must get all."""
    def probe(port: int) -> list[object]:
        with requests.Session() as s:
            r = s.post(f"http://127.0.0.1:{port}/login", json={"username": username, "password": "statelab"},
                       timeout=TIMEOUT_S)
            assert r.status_code == 200, r.text
            out: list[object] = []
            for _ in range(UPLOADS):
                try:
                    up = s.post(f"http://127.0.0.1:{port}/uploads", timeout=30,
                                files={"file": ("big.bin", b"\0" * (2 * MAX_UPLOAD_BYTES))})
                    out.append(up.status_code)
                except requests.ConnectionError:
                    out.append("reset")
            return out

    got = app_pair.each(probe)
    counts = {engine: outcomes.count(413) for engine, outcomes in got.items()}  # type: ignore[attr-defined]
    assert counts["builtin"] >= counts["haproxy"], got
    assert got["builtin"] == [413] * UPLOADS, got


def test_an_answer_followed_by_a_reset_reaches_the_client(test_pair: Pair) -> None:
    """Worse: fewer of the backend's 413s reach the client (it answers at the head and closes unread)."""
    def probe(port: int) -> list[object]:
        out: list[object] = []
        for _ in range(UPLOADS):
            try:
                out.append(requests.post(f"http://127.0.0.1:{port}/early-close", data=b"\0" * (4 << 20),
                                         timeout=30).status_code)
            except requests.ConnectionError:
                out.append("reset")
        return out

    got = test_pair.each(probe)
    counts = {engine: outcomes.count(413) for engine, outcomes in got.items()}  # type: ignore[attr-defined]
    assert counts["builtin"] >= counts["haproxy"], got
    assert got["builtin"] == [413] * UPLOADS, got


def test_a_small_rest_after_an_early_answer_keeps_the_connection(test_pair: Pair) -> None:
    """Worse: the request after an early-answered one, on the same connection, gets no answer."""
    payload = (b"POST /early-keep HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
               b"GET /after HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    got = test_pair.each(lambda port: [a.status for a in answers(raw_exchange(port, payload))])
    assert got["builtin"] == [401, 200], got


# --- pipelining and Host ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", PIPELINES)
def test_pipelined_requests_are_all_answered_in_order(test_pair: Pair, name: str) -> None:
    """Worse: fewer answers than HAProxy, or out of order; the builtin must answer every one."""
    payload = PIPELINES[name] + b"GET /last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    expected = [f"/p{i}" for i in range(payload.count(b" HTTP/1.") - 1)] + ["/last"]

    def probe(port: int) -> list[str]:
        return [json.loads(a.body)["path"] for a in answers(raw_exchange(port, payload))]

    for _ in range(3):
        got = test_pair.each(probe)
        assert len(got["builtin"]) >= len(got["haproxy"]), got  # type: ignore[arg-type]
        assert got["builtin"] == expected, got


def test_pipelined_requests_to_gunicorn_are_all_answered_in_order(app_pair: Pair, username: str) -> None:
    """Worse: fewer answers than HAProxy; the builtin must answer every one, in order, each time."""
    login = json.dumps({"username": username, "password": "statelab"}).encode()
    payload = (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
               b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
               b"GET /products/1 HTTP/1.1\r\nHost: x\r\n\r\n"
               b"POST /cart/items HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
               b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n") % (len(login), login)
    for _ in range(10):
        got = app_pair.each(lambda port: [a.status for a in answers(raw_exchange(port, payload))])
        assert len(got["builtin"]) >= len(got["haproxy"]), got  # type: ignore[arg-type]
        assert got["builtin"] == [200, 200, 200, 401, 200], got


def test_host_rules(test_pair: Pair) -> None:
    """Worse: a status that breaks RFC 9112 section 3.2 (HAProxy 2.6 lets a Host-less HTTP/1.1 request through)."""
    cases = {b"GET /x HTTP/1.1\r\n\r\n": 400, b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n": 400,
             b"GET /x HTTP/1.0\r\n\r\n": 200}
    for payload, expected in cases.items():
        got = test_pair.each(lambda port: status_of(raw_exchange(port, payload)))
        assert got["builtin"] == expected, (payload, got)


# --- both at once ------------------------------------------------------------------------------------

def test_early_answers_under_concurrency_never_cross_clients(test_pair: Pair) -> None:
    """Worse: any client's request answered with another's response or a 400/5xx, with early answers interleaved."""
    def probe(port: int) -> list[str]:
        problems: list[str] = []

        def worker(n: int) -> None:
            with requests.Session() as s:
                for i in range(30):
                    if i % 3 == 0:
                        r = s.post(f"http://127.0.0.1:{port}/early-keep", data=b"x" * 3000, timeout=TIMEOUT_S)
                        if r.status_code != 401:
                            problems.append(f"early {r.status_code}")
                    else:
                        path = f"/w{n}-{i}"
                        r = s.post(f"http://127.0.0.1:{port}{path}", data=b"y" * 100, timeout=TIMEOUT_S)
                        if r.status_code != 200 or r.json()["path"] != path:
                            problems.append(f"{path}: {r.status_code} {r.text[:80]}")

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        return problems

    got = test_pair.each(probe)
    assert got["builtin"] == [], got
