"""The builtin balancer end to end: real backends and the balancer as real child processes."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from contextlib import ExitStack, closing
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from statelab.procs import free_port
from tests.support.balancers import (PIPELINES, SMUGGLING, TIMEOUT_S, Lab, answers, raw_exchange, start_backend,
                                     start_balancer)

pytestmark = pytest.mark.live


@pytest.fixture(scope="module")
def backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[tuple[str, str]]]:
    run_dir = tmp_path_factory.mktemp("backends")
    with ExitStack() as stack:
        yield [(bid, start_backend(stack, run_dir, bid)) for bid in ("app-1", "app-2")]


@pytest.fixture
def lab(backends: list[tuple[str, str]], tmp_path: Path) -> Iterator[Lab]:
    with ExitStack() as stack:
        yield start_balancer(stack, tmp_path, backends, header_timeout_s=1.0, body_timeout_s=1.0)


def get_json(conn: http.client.HTTPConnection, path: str, headers: dict[str, str] | None = None
             ) -> tuple[http.client.HTTPResponse, dict[str, Any]]:
    conn.request("GET", path, headers=headers or {})
    resp = conn.getresponse()
    return resp, json.loads(resp.read())


def test_each_request_is_routed_on_its_own_over_one_keepalive_connection(lab: Lab) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", lab.port, timeout=TIMEOUT_S)
    try:
        ids, socks = [], set()
        for i in range(6):
            resp, doc = get_json(conn, f"/r{i}", {"X-Forwarded-For": "203.0.113.9"})
            assert resp.status == 200
            ids.append(doc["id"])
            socks.add(id(conn.sock))
            xff = [v for k, v in doc["headers"] if k.lower() == "x-forwarded-for"]
            assert xff == ["203.0.113.9", "127.0.0.1"]  # the client's own entry kept, ours appended
        assert ids == ["app-2", "app-1"] * 3 or ids == ["app-1", "app-2"] * 3
        assert len(socks) == 1
    finally:
        conn.close()
    records = requests.get(lab.admin + "/records?since=0", timeout=TIMEOUT_S).json()
    paths = [r["path"] for r in records["records"] if r["path"].startswith("/r")]
    assert paths == [f"/r{i}" for i in range(6)]
    assert all(r["status"] == 200 and r["bytes"] > 0 for r in records["records"])


def test_cookie_policy_inserts_sticks_and_reroutes_on_drain(backends: list[tuple[str, str]], tmp_path: Path) -> None:
    with ExitStack() as stack:
        lab = start_balancer(stack, tmp_path, backends, policy="cookie")
        with requests.Session() as s:
            first = s.get(lab.url + "/", timeout=TIMEOUT_S)
            owner = first.json()["id"]
            assert first.headers["Set-Cookie"] == f"LAB_BACKEND={owner}; path=/"
            s.cookies.set("other", "1")
            for _ in range(5):
                r = s.get(lab.url + "/", timeout=TIMEOUT_S)
                assert r.json()["id"] == owner and "Set-Cookie" not in r.headers
                cookies = [v for k, v in r.json()["headers"] if k.lower() == "cookie"]
                assert cookies and "LAB_BACKEND" not in cookies[0] and "other=1" in cookies[0]  # indirect
            lab.set_state(owner, "drain")
            moved = s.get(lab.url + "/", timeout=TIMEOUT_S)
            assert moved.json()["id"] != owner
            assert moved.headers["Set-Cookie"] == f"LAB_BACKEND={moved.json()['id']}; path=/"


def ids_from(lab: Lab, source: str, n: int, headers: dict[str, str] | None = None) -> set[str]:
    """Send n requests from a given loopback source address; return the backends that answered."""
    conn = http.client.HTTPConnection("127.0.0.1", lab.port, timeout=TIMEOUT_S, source_address=(source, 0))
    try:
        return {get_json(conn, "/", headers)[1]["id"] for _ in range(n)}
    finally:
        conn.close()


def test_ip_hash_sticks_per_full_address(backends: list[tuple[str, str]], tmp_path: Path) -> None:
    with ExitStack() as stack:
        lab = start_balancer(stack, tmp_path, backends, policy="ip-hash")
        seen = [ids_from(lab, f"127.0.0.{i}", 3) for i in range(1, 17)]  # one /24: nginx would pin them all
        assert all(len(ids) == 1 for ids in seen)
        assert set().union(*seen) == {"app-1", "app-2"}


def test_ip_hash_on_forwarded_for_when_trusted(backends: list[tuple[str, str]], tmp_path: Path) -> None:
    with ExitStack() as stack:
        lab = start_balancer(stack, tmp_path, backends, policy="ip-hash", trust_forwarded_for=True)
        seen = [ids_from(lab, "127.0.0.1", 3, {"X-Forwarded-For": f"198.51.100.{i}, 10.0.0.1"}) for i in range(16)]
        assert all(len(ids) == 1 for ids in seen)
        assert set().union(*seen) == {"app-1", "app-2"}


@pytest.mark.parametrize("policy", ["least-connections", "consistent-hash", "p2c", "cookie", "round-robin"])
def test_policy_switches_live(lab: Lab, policy: str) -> None:
    r = requests.put(lab.admin + "/policy", json={"policy": policy}, timeout=TIMEOUT_S)
    assert r.json() == {"policy": policy}
    with requests.Session() as s:
        assert all(s.get(lab.url + "/", timeout=TIMEOUT_S).status_code == 200 for _ in range(6))
    doc = requests.get(lab.admin + "/backends", timeout=TIMEOUT_S).json()
    assert doc["policy"] == policy and sum(b["requests"] for b in doc["backends"]) == 6


def test_drain_lets_in_flight_finish_and_sends_new_requests_elsewhere(lab: Lab) -> None:
    results: dict[str, Any] = {}

    def slow() -> None:
        with requests.Session() as s:  # the first request of the first connection goes to one backend
            r = s.get(lab.url + "/slow?sleep=1.0", timeout=TIMEOUT_S)
            results["slow"] = (r.status_code, r.json()["id"])

    t = threading.Thread(target=slow)
    t.start()
    deadline = time.monotonic() + TIMEOUT_S
    while not any(b["active"] for b in lab.backends().values()):
        assert time.monotonic() < deadline, "the slow request never became active"
        time.sleep(0.02)
    busy = next(bid for bid, b in lab.backends().items() if b["active"])
    lab.set_state(busy, "drain")
    with requests.Session() as s:
        others = {s.get(lab.url + "/", timeout=TIMEOUT_S).json()["id"] for _ in range(4)}
    assert busy not in others
    assert lab.backends()[busy]["state"] == "drain"
    t.join(TIMEOUT_S)
    assert results["slow"] == (200, busy)
    assert lab.backends()[busy]["active"] == 0


def test_connect_failure_is_retried_on_another_backend(backends: list[tuple[str, str]], tmp_path: Path) -> None:
    dead = ("app-dead", f"127.0.0.1:{free_port()}")
    with ExitStack() as stack:
        lab = start_balancer(stack, tmp_path, [backends[0], dead], health_interval_s=30.0)
        with requests.Session() as s:
            ids = [s.get(lab.url + f"/{i}", timeout=TIMEOUT_S).json()["id"] for i in range(6)]
        assert ids == ["app-1"] * 6
        state = lab.backends()["app-dead"]
        assert state["healthy"] is False and state["errors"] >= 1


def test_backend_dying_gives_502_json_or_a_closed_connection(tmp_path: Path) -> None:
    with ExitStack() as stack:
        victims = [(f"victim-{i}", start_backend(stack, tmp_path, f"victim-{i}")) for i in (1, 2)]
        lab = start_balancer(stack, tmp_path, victims, health_interval_s=0.2)
        t0 = time.monotonic()
        r = requests.post(lab.url + "/die-before", data=b"x", timeout=TIMEOUT_S)
        assert r.status_code == 502 and "error" in r.json() and r.headers["X-Served-By"] == "balancer"
        with pytest.raises(requests.RequestException):  # headers were relayed: the client sees a cut
            requests.get(lab.url + "/die-mid", timeout=TIMEOUT_S).content
        assert time.monotonic() - t0 < TIMEOUT_S
        errors = sum(b["errors"] for b in lab.backends().values())
        assert errors >= 2
        statuses = [rec["status"] for rec in requests.get(lab.admin + "/records", timeout=TIMEOUT_S).json()["records"]]
        assert 502 in statuses
        # both backends are dead now: the balancer answers 503/502 quickly and still runs
        r = requests.get(lab.url + "/after", timeout=TIMEOUT_S)
        assert r.status_code in (502, 503) and "error" in r.json()
        assert lab.proc.alive()


def test_silent_backend_gives_504(backends: list[tuple[str, str]], tmp_path: Path) -> None:
    with ExitStack() as stack:
        lab = start_balancer(stack, tmp_path, backends, backend_timeout_s=0.5)
        t0 = time.monotonic()
        r = requests.get(lab.url + "/slow?sleep=3", timeout=TIMEOUT_S)
        assert r.status_code == 504 and "error" in r.json() and r.headers["X-Served-By"] == "balancer"
        assert time.monotonic() - t0 < 2.0
        assert requests.get(lab.url + "/fast", timeout=TIMEOUT_S).status_code == 200


def test_10mib_upload_is_streamed_not_buffered(lab: Lab) -> None:
    size = 10 * 1024 * 1024
    rss_before = lab.rss()
    for body in (b"\x00" * size, iter([b"\x01" * 65536] * (size // 65536))):  # Content-Length, then chunked
        r = requests.post(lab.url + "/upload", data=body, timeout=30)
        doc = r.json()
        assert r.status_code == 200 and doc["body"] == size
        assert doc["pieces"] > 10 and doc["biggest"] < size // 4  # arrived in pieces
    assert lab.rss() - rss_before < 6 * 1024 * 1024


def test_chunked_response_passes_through_and_the_connection_is_reused(lab: Lab) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", lab.port, timeout=TIMEOUT_S)
    try:
        for _ in range(3):
            conn.request("GET", "/chunked")
            resp = conn.getresponse()
            assert resp.getheader("Transfer-Encoding") == "chunked" and resp.read() == b"one,two,three"
        sock = conn.sock
        assert get_json(conn, "/after")[1]["path"] == "/after" and conn.sock is sock
    finally:
        conn.close()


def test_backend_connection_of_an_http10_request_is_not_reused(lab: Lab) -> None:
    for _ in range(2):  # one per backend: each backend connection served a request that was not keep-alive
        assert raw_exchange(lab.port, b"GET /old HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.1 200")
    for i in range(4):  # a strict backend would reject more bytes on those connections: they must be fresh
        assert requests.post(lab.url + f"/after-{i}", data=b"x", timeout=TIMEOUT_S).status_code == 200


def test_big_download_to_a_slow_client_is_not_buffered(lab: Lab) -> None:
    size = 24 << 20
    rss_before = lab.rss()
    with closing(socket.create_connection(("127.0.0.1", lab.port), timeout=TIMEOUT_S)) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.sendall(b"GET /big?mb=24 HTTP/1.1\r\nHost: a\r\n\r\n")
        got = len(s.recv(65536))
        time.sleep(1.0)  # the client stalls: the balancer must stop reading from the backend
        stalled_growth = lab.rss() - rss_before
        while got < size:
            b = s.recv(1 << 20)
            assert b, "connection closed early"
            got += len(b)
    assert got >= size
    assert stalled_growth < 8 << 20


@pytest.mark.parametrize("name", SMUGGLING)
def test_smuggling_shapes_get_400_and_close(lab: Lab, name: str) -> None:
    reply = raw_exchange(lab.port, SMUGGLING[name])
    status = reply.split(b"\r\n", 1)[0]
    assert status.startswith((b"HTTP/1.1 400", b"HTTP/1.1 431")), reply[:200]
    assert reply.count(b"HTTP/1.1") == 1  # nothing else came back: the connection was closed
    (answer,) = answers(reply)
    assert answer.headers["x-served-by"] == "balancer" and "error" in json.loads(answer.body)
    assert requests.get(lab.url + "/still-alive", timeout=TIMEOUT_S).status_code == 200


def test_slowloris_head_times_out(lab: Lab) -> None:
    with closing(socket.create_connection(("127.0.0.1", lab.port), timeout=TIMEOUT_S)) as s:
        t0 = time.monotonic()
        s.settimeout(None)  # blocking mode, so MSG_DONTWAIT really does not wait (the loop is bounded)
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n")
        while time.monotonic() - t0 < 4.0:  # keep trickling until the balancer answers
            try:
                s.sendall(b"X-a: b\r\n")
                time.sleep(0.1)
                if s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT):
                    break
            except BlockingIOError:
                continue
            except OSError:
                break
        s.settimeout(TIMEOUT_S)
        reply = s.recv(4096)
        assert reply.startswith(b"HTTP/1.1 408"), reply
        assert time.monotonic() - t0 < 3.0
    with closing(socket.create_connection(("127.0.0.1", lab.port), timeout=TIMEOUT_S)) as idle:
        assert idle.recv(4096).startswith(b"HTTP/1.1 408")  # saying nothing at all times out too
    with closing(socket.create_connection(("127.0.0.1", lab.port), timeout=TIMEOUT_S)) as s:
        s.sendall(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n")  # one good request, then a trickled head
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        t0 = time.monotonic()
        reply = b""
        s.settimeout(None)  # blocking mode, so MSG_DONTWAIT really does not wait (the loop is bounded)
        while time.monotonic() - t0 < 4.0 and not reply:
            try:
                s.sendall(b"X")
                time.sleep(0.2)
                reply = s.recv(4096, socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
        assert reply.startswith(b"HTTP/1.1 408"), reply
        assert time.monotonic() - t0 < 3.0


def test_stalled_upload_times_out(lab: Lab) -> None:
    with closing(socket.create_connection(("127.0.0.1", lab.port), timeout=TIMEOUT_S)) as s:
        t0 = time.monotonic()
        s.sendall(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nonly-a-little")
        reply = s.recv(4096)
        assert reply.startswith(b"HTTP/1.1 408") and b"\r\nX-Served-By: balancer\r\n" in reply, reply
        assert time.monotonic() - t0 < 3.0
    assert all(b["active"] == 0 for b in lab.backends().values())


def test_head_response_ends_at_its_head(lab: Lab) -> None:
    with requests.Session() as s:
        head = s.head(lab.url + "/h", timeout=TIMEOUT_S)
        assert head.status_code == 200 and head.content == b"" and int(head.headers["Content-Length"]) > 0
        assert s.get(lab.url + "/after-head", timeout=TIMEOUT_S).json()["path"] == "/after-head"


def test_connection_limit_and_idle_keepalive_timeout(backends: list[tuple[str, str]], tmp_path: Path) -> None:
    with ExitStack() as stack:
        lab = start_balancer(stack, tmp_path, backends, max_connections=2, idle_timeout_s=1.0)
        held = [stack.enter_context(closing(socket.create_connection(("127.0.0.1", lab.port), timeout=TIMEOUT_S)))
                for _ in range(2)]
        for s in held:  # two kept-alive clients, each after one request
            s.sendall(b"GET /k HTTP/1.1\r\nHost: a\r\n\r\n")
            assert s.recv(65536).startswith(b"HTTP/1.1 200")
        (refused,) = answers(raw_exchange(lab.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"))
        assert (refused.status, refused.headers["x-served-by"]) == (503, "balancer")
        t0 = time.monotonic()
        assert held[0].recv(1) == b""  # the idle keep-alive connection is closed by the balancer
        assert 0.5 < time.monotonic() - t0 < 3.0
        deadline = time.monotonic() + TIMEOUT_S
        while True:  # both idle connections are gone, so a new client gets in
            reply = raw_exchange(lab.port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            if reply.startswith(b"HTTP/1.1 200") or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert reply.startswith(b"HTTP/1.1 200")


def test_pipelined_requests_are_answered_in_order(lab: Lab) -> None:
    payload = b"".join(b"GET /p%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(3))
    payload += b"GET /p3 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    reply = raw_exchange(lab.port, payload)
    paths = [json.loads(part.split(b"\r\n\r\n", 1)[1][:part.find(b"}") + 1] or b"{}").get("path")
             for part in reply.split(b"HTTP/1.1 200 OK")[1:]]
    assert reply.count(b"HTTP/1.1 200 OK") == 4
    assert [p for p in paths if p] == ["/p0", "/p1", "/p2", "/p3"]


def test_sigterm_lets_the_request_in_flight_finish(backends: list[tuple[str, str]], tmp_path: Path) -> None:
    with ExitStack() as stack:
        lab = start_balancer(stack, tmp_path, backends)
        out: dict[str, int] = {}
        t = threading.Thread(target=lambda: out.update(
            status=requests.get(lab.url + "/slow?sleep=0.5", timeout=TIMEOUT_S).status_code))
        t.start()
        deadline = time.monotonic() + TIMEOUT_S
        while not any(b["active"] for b in lab.backends().values()):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        lab.proc.signal(15)
        t.join(TIMEOUT_S)
        assert out == {"status": 200}
        assert lab.proc.proc is not None and lab.proc.proc.wait(TIMEOUT_S) == 0


# --- framing that cannot desynchronise (issue 9) -----------------------------------------------------

EARLY_HEAD = b"POST /early-keep HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"


def test_an_early_answer_with_a_late_body_does_not_corrupt_the_next_request(backends: list[tuple[str, str]],
                                                                            tmp_path: Path) -> None:
    with ExitStack() as stack:  # one backend, so the next request would ride the same backend connection
        lab = start_balancer(stack, tmp_path, backends[:1])
        for _ in range(3):
            with closing(socket.create_connection(("127.0.0.1", lab.port), timeout=TIMEOUT_S)) as s:
                s.sendall(EARLY_HEAD % 24)
                assert s.recv(65536).startswith(b"HTTP/1.1 401")  # the backend answered before the body came
                s.sendall(b'{"product_id":1,"qty":1}')
            (after,) = answers(raw_exchange(lab.port, b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"))
            assert after.status == 200 and json.loads(after.body)["path"] == "/healthz"
        assert all(b["active"] == 0 for b in lab.backends().values())


def test_an_early_answer_with_a_big_unsent_body_does_not_hold_up_other_clients(backends: list[tuple[str, str]],
                                                                               tmp_path: Path) -> None:
    with ExitStack() as stack:
        lab = start_balancer(stack, tmp_path, backends[:1])
        with closing(socket.create_connection(("127.0.0.1", lab.port), timeout=TIMEOUT_S)) as s:
            s.sendall(EARLY_HEAD % 2000 + b'{"product_id":1,"qty":1}')  # 1976 bytes never come
            assert s.recv(65536).startswith(b"HTTP/1.1 401")
            t0 = time.monotonic()
            r = requests.post(lab.url + "/login", json={"username": "someone"}, timeout=TIMEOUT_S)
            assert r.status_code == 200 and r.json()["path"] == "/login"
            assert time.monotonic() - t0 < TIMEOUT_S / 2  # at once, not after a backend timeout


def test_after_an_early_answer_a_small_rest_is_dropped_and_the_connection_goes_on(lab: Lab) -> None:
    with closing(socket.create_connection(("127.0.0.1", lab.port), timeout=TIMEOUT_S)) as s:
        s.sendall(EARLY_HEAD % 2000)
        first = s.recv(65536)
        assert first.startswith(b"HTTP/1.1 401") and b"connection: close" not in first.lower()
        s.sendall(b"x" * 2000 + b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")  # the rest of the body, then a request
        reply = b""
        while b"/next" not in reply:
            chunk = s.recv(65536)
            assert chunk, "the connection was closed"
            reply += chunk
        (nxt,) = answers(reply)
        assert nxt.status == 200 and json.loads(nxt.body)["path"] == "/next"


def test_after_an_early_answer_a_big_upload_reads_the_answer_and_a_close(lab: Lab) -> None:
    size = 11 << 20
    with closing(socket.create_connection(("127.0.0.1", lab.port), timeout=TIMEOUT_S)) as s:
        s.sendall(EARLY_HEAD % size)
        first = s.recv(65536)  # the backend answered at the head: the whole body is still to come
        assert first.startswith(b"HTTP/1.1 401") and b"\r\nConnection: close\r\n" in first
        s.sendall(b"\0" * size)  # the balancer lingers: it reads and drops the body instead of resetting
        assert s.recv(65536) == b""  # then the end, cleanly
    with requests.Session() as session:  # requests reads the answer only after sending all 11 MiB
        for _ in range(3):
            r = session.post(lab.url + "/early-keep", data=b"\0" * size, timeout=30)
            assert r.status_code == 401 and r.json() == {"error": "answered before the body"}
            assert session.get(lab.url + "/after", timeout=TIMEOUT_S).json()["path"] == "/after"


def test_an_answer_before_a_reset_reaches_the_client_20_of_20(lab: Lab) -> None:
    # The backend answers 413 at the head and closes with the body unread (as gunicorn does): the
    # balancer's next write of the body fails, and the answer must still be relayed, not a 502.
    statuses = [requests.post(lab.url + "/early-close", data=b"\0" * (11 << 20), timeout=30).status_code
                for _ in range(20)]
    assert statuses == [413] * 20
    assert all(b["active"] == 0 for b in lab.backends().values())


def test_100_continue_reaches_the_client_before_the_body_is_sent(lab: Lab) -> None:
    with closing(socket.create_connection(("127.0.0.1", lab.port), timeout=TIMEOUT_S)) as s:
        s.sendall(b"POST /upload HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        assert s.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"  # relayed at once, not held with the final head
        s.sendall(b"hello")
        reply = b""
        while b"}" not in reply:
            reply += s.recv(65536)
    (answer,) = answers(reply)
    assert answer.status == 200 and json.loads(answer.body)["body"] == 5


def test_after_an_error_answer_to_a_body_the_backend_connection_is_not_reused(backends: list[tuple[str, str]],
                                                                              tmp_path: Path) -> None:
    # The backend answers 413 keep-alive before reading the body, which all went out before the answer
    # came back, then closes while draining it: the next request must not ride that connection.
    with ExitStack() as stack:
        lab = start_balancer(stack, tmp_path, backends[:1])
        with requests.Session() as s:
            for i in range(10):
                assert s.post(lab.url + "/answer-unread", data=b"\0" * (200 << 10), timeout=TIMEOUT_S).status_code == 413
                r = s.post(lab.url + f"/after-{i}", data=b"x", timeout=TIMEOUT_S)
                assert r.status_code == 200 and r.json()["path"] == f"/after-{i}"


def test_our_own_answer_to_a_request_still_sending_its_body_is_read_not_reset(lab: Lab) -> None:
    body = b"\0" * (4 << 20)
    head = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n" % len(body)
    with closing(socket.create_connection(("127.0.0.1", lab.port), timeout=TIMEOUT_S)) as s:
        s.sendall(head + body)  # refused at the head; the balancer keeps reading (and dropping) the body
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    (answer,) = answers(reply)
    assert answer.status == 400 and answer.headers["x-served-by"] == "balancer"
    assert json.loads(answer.body) == {"error": "both Content-Length and Transfer-Encoding"}


@pytest.mark.parametrize("name", PIPELINES)
@pytest.mark.parametrize("ending", ["connection-close", "half-close"])
def test_pipelined_requests_in_one_write_are_all_answered_in_order(lab: Lab, name: str, ending: str) -> None:
    payload = PIPELINES[name]
    n = payload.count(b" HTTP/1.")
    if ending == "connection-close":
        payload += b"GET /p%d HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" % n
        n += 1
    for _ in range(5):
        got = answers(raw_exchange(lab.port, payload, half_close=ending == "half-close"))
        assert [json.loads(a.body)["path"] for a in got] == [f"/p{i}" for i in range(n)]


def test_a_request_without_host_gets_400_except_in_http10(lab: Lab) -> None:
    for payload, why in ((b"GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 request without a Host header"),
                         (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "more than one Host header"),
                         (b"GET / HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n", "more than one Host header"),
                         (b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi", "HTTP/1.1 request without a Host header")):
        (answer,) = answers(raw_exchange(lab.port, payload))
        assert (answer.status, json.loads(answer.body), answer.headers["x-served-by"]) == (400, {"error": why},
                                                                                           "balancer")
    (answer,) = answers(raw_exchange(lab.port, b"GET /old HTTP/1.0\r\n\r\n"))
    assert answer.status == 200 and json.loads(answer.body)["path"] == "/old"
