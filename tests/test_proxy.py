"""The builtin balancer end to end: real backends and the balancer as real child processes."""

from __future__ import annotations

import http.client
import json
import socket
import sys
import threading
import time
from contextlib import ExitStack, closing
from pathlib import Path
from typing import Any, Iterator

import psutil
import pytest
import requests

from statelab.balancer.proxy import BalancerOptions
from statelab.procs import ManagedProcess, free_port, http_probe, tcp_probe

pytestmark = pytest.mark.live

# A tiny HTTP backend: answers with its id and the request headers it saw, plus routes that
# misbehave on purpose. Run as `python -c BACKEND_SRC PORT ID`.
BACKEND_SRC = r'''
import asyncio, json, os, sys, httptools
PORT, ID = int(sys.argv[1]), sys.argv[2]
class P(asyncio.Protocol):
    def connection_made(self, t):
        self.t = t; self.p = httptools.HttpRequestParser(self)
    def on_message_begin(self):
        self.url = b""; self.headers = []; self.body = 0; self.pieces = 0; self.biggest = 0
    def on_url(self, u): self.url += u
    def on_header(self, k, v): self.headers.append((k.decode(), v.decode()))
    def on_body(self, b):
        self.body += len(b); self.pieces += 1; self.biggest = max(self.biggest, len(b))
    def on_headers_complete(self):
        if self.url.startswith(b"/die-before"): os._exit(1)
    def on_message_complete(self):
        url = self.url.decode()
        if url.startswith("/big"):
            size = int(url.split("mb=")[1]) << 20
            self.t.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"z" * size)
            return
        if url.startswith("/chunked"):
            self.t.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for part in (b"one,", b"two,", b"three"):
                self.t.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.t.write(b"0\r\n\r\n")
            return
        if url.startswith("/die-mid"):
            self.t.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial"); os._exit(1)
        doc = {"id": ID, "path": url, "headers": self.headers, "body": self.body, "pieces": self.pieces,
               "biggest": self.biggest}
        delay = float(url.split("sleep=")[1]) if "sleep=" in url else 0.0
        asyncio.get_running_loop().call_later(delay, self.reply, json.dumps(doc).encode())
    def reply(self, body):
        if not self.t.is_closing():
            self.t.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                         % len(body) + body)
    def data_received(self, d):
        try: self.p.feed_data(d)
        except Exception: self.t.close()
async def main():
    srv = await asyncio.get_running_loop().create_server(P, "127.0.0.1", PORT)
    await srv.serve_forever()
asyncio.run(main())
'''

TIMEOUT_S = 5.0


def start_backend(stack: ExitStack, run_dir: Path, backend_id: str) -> str:
    """Start one test backend; return its HOST:PORT."""
    port = free_port()
    proc = ManagedProcess(backend_id, [sys.executable, "-c", BACKEND_SRC, str(port), backend_id],
                          run_dir / f"{backend_id}.log", probe=tcp_probe("127.0.0.1", port))
    stack.callback(proc.stop)
    proc.start().wait_ready(10)
    return f"127.0.0.1:{port}"


class Lab:
    """A running balancer: its URL, admin URL and process."""

    def __init__(self, proc: ManagedProcess, port: int, admin_port: int) -> None:
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.admin = f"http://127.0.0.1:{admin_port}"

    def backends(self) -> dict[str, dict[str, Any]]:
        doc = requests.get(self.admin + "/backends", timeout=TIMEOUT_S).json()
        return {b["id"]: b for b in doc["backends"]}

    def set_state(self, backend_id: str, state: str) -> None:
        r = requests.put(f"{self.admin}/backends/{backend_id}/state", json={"state": state}, timeout=TIMEOUT_S)
        assert r.status_code == 200, r.text

    def rss(self) -> int:
        assert self.proc.pid is not None
        return int(psutil.Process(self.proc.pid).memory_info().rss)


def start_balancer(stack: ExitStack, run_dir: Path, backends: list[tuple[str, str]], policy: str = "round-robin",
                   **options: Any) -> Lab:
    """Start the balancer as a child process calling serve_forever(BalancerOptions(...))."""
    port, admin_port = free_port(), free_port()
    opts = {"port": port, "backends": tuple(backends), "policy": policy, "admin_port": admin_port,
            "health_interval_s": 0.2, **options}
    BalancerOptions(**opts)  # type-check the options here, not in the child
    code = ("import sys; from statelab.balancer.proxy import BalancerOptions, serve_forever; "
            f"serve_forever(BalancerOptions(**{opts!r}))")
    proc = ManagedProcess(f"lb-{port}", [sys.executable, "-c", code], run_dir / f"lb-{port}.log",
                          probe=http_probe(f"http://127.0.0.1:{admin_port}/healthz", lambda s: s == 200))
    stack.callback(proc.stop)
    proc.start().wait_ready(15)
    return Lab(proc, port, admin_port)


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


def raw_exchange(port: int, payload: bytes, timeout_s: float = TIMEOUT_S) -> bytes:
    """Send raw bytes, return everything received until the balancer closes the connection."""
    with closing(socket.create_connection(("127.0.0.1", port), timeout=timeout_s)) as s:
        s.sendall(payload)
        chunks = []
        while True:
            b = s.recv(65536)
            if not b:
                return b"".join(chunks)
            chunks.append(b)


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
        assert r.status_code == 502 and "error" in r.json()
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
        assert r.status_code == 504 and "error" in r.json()
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


SMUGGLING = {
    "cl-and-te": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "differing-cl": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    "cl-list": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 4\r\n\r\nabcd",
    "cl-plus": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc",
    "xchunked": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "chunked-identity": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "identity-chunked": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n",
    "te-space-before-colon": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "te-obs-fold": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
    "te-vertical-tab": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n",
    "te-twice": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "chunk-size-garbage": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "chunk-size-0x": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n",
    "chunk-size-overflow": (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                            b"fffffffffffffffff1\r\nabc\r\n0\r\n\r\n"),
    "chunk-data-too-long": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
    "bare-lf": b"GET / HTTP/1.1\nHost: a\n\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "lf-in-header": b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n",
    "nul-in-header": b"GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n",
    "huge-head": b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 20000 + b"\r\n\r\n",
    "too-many-headers": b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(150)) + b"\r\n",
}


@pytest.mark.parametrize("name", SMUGGLING)
def test_smuggling_shapes_get_400_and_close(lab: Lab, name: str) -> None:
    reply = raw_exchange(lab.port, SMUGGLING[name])
    status = reply.split(b"\r\n", 1)[0]
    assert status.startswith((b"HTTP/1.1 400", b"HTTP/1.1 431")), reply[:200]
    assert reply.count(b"HTTP/1.1") == 1  # nothing else came back: the connection was closed
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
        assert reply.startswith(b"HTTP/1.1 408"), reply
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
        assert raw_exchange(lab.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").startswith(b"HTTP/1.1 503")
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
