"""What the balancer tests share: a misbehaving test backend, both balancers as real processes, raw probes.

`test_proxy.py` (the builtin balancer end to end) and `test_balancer_diff.py` (the builtin one
against HAProxy, probe by probe) import from here.
"""

from __future__ import annotations

import shutil
import socket
import sys
import time
from contextlib import ExitStack, closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httptools
import psutil
import requests

from statelab.balancer.options import BalancerOptions
from statelab.engines.haproxy import render_config
from statelab.procs import ManagedProcess, free_port, http_probe, tcp_probe
from tests.support import backends

TIMEOUT_S = 5.0

# A tiny HTTP backend: answers with its id and the request headers it saw, plus routes that
# misbehave on purpose. Run as `python -c BACKEND_SRC PORT ID`.
BACKEND_SRC = r'''
import asyncio, json, os, sys, httptools
PORT, ID = int(sys.argv[1]), sys.argv[2]
EARLY = b'{"error": "answered before the body"}'
class P(asyncio.Protocol):
    def connection_made(self, t):
        self.t = t; self.p = httptools.HttpRequestParser(self)
    def on_message_begin(self):
        self.url = b""; self.headers = []; self.body = 0; self.pieces = 0; self.biggest = 0; self.answered = False
        self.draining = False
    def on_url(self, u): self.url += u
    def on_header(self, k, v): self.headers.append((k.decode(), v.decode()))
    def on_body(self, b):
        self.body += len(b); self.pieces += 1; self.biggest = max(self.biggest, len(b))
        if self.draining and self.body > 64 * 1024:
            self.t.close()
    def on_headers_complete(self):
        if self.url.startswith(b"/die-before"): os._exit(1)
        if ("Expect", "100-continue") in self.headers:
            self.t.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if self.url.startswith(b"/early-keep"):  # like gunicorn's 401: answer at once, keep reading the body
            self.answered = True
            self.t.write(b"HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                         % len(EARLY) + EARLY)
        elif self.url.startswith(b"/early-close"):  # like gunicorn's 413: answer at once, close unread (a reset)
            self.t.write(b"HTTP/1.1 413 Content Too Large\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                         b"Connection: close\r\n\r\n" % len(EARLY) + EARLY)
            self.t.close()
        elif self.url.startswith(b"/answer-unread"):  # like gunicorn 27 after an error: say keep-alive, yet
            self.answered = True                         # close when more than 64 KiB of the body are left
            self.t.pause_reading()
            asyncio.get_running_loop().call_later(0.05, self.answer_unread)
    def answer_unread(self):
        self.t.write(b"HTTP/1.1 413 Content Too Large\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                     % len(EARLY) + EARLY)
        self.draining = True
        self.t.resume_reading()
    def on_message_complete(self):
        if self.answered:
            return
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
        except Exception:  # as gunicorn does: an HTML 400, then close
            self.t.write(b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/html\r\nContent-Length: 11\r\n"
                         b"Connection: close\r\n\r\nBad Request")
            self.t.close()
async def main():
    srv = await asyncio.get_running_loop().create_server(P, "127.0.0.1", PORT)
    await srv.serve_forever()
asyncio.run(main())
'''

# Request shapes that two parsers could frame differently: each must get a 400 (or 431) and a close.
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

# Requests sent in one write: every one must be answered, in order (paths /p0, /p1, ...).
PIPELINES = {
    "gets": b"".join(b"GET /p%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(4)),
    "bodies-between": (b"GET /p0 HTTP/1.1\r\nHost: a\r\n\r\n"
                       b"POST /p1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
                       b"POST /p2 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
                       b"GET /p3 HTTP/1.1\r\nHost: a\r\n\r\n"),
    "http10-and-keep-alive": (b"GET /p0 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
                              b"GET /p1 HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n"
                              b"GET /p2 HTTP/1.1\r\nHost: a\r\n\r\n"),
}


def start_backend(stack: ExitStack, run_dir: Path, backend_id: str) -> str:
    """Start one misbehaving test backend (BACKEND_SRC); return its HOST:PORT."""
    return backends.start_backend(stack, run_dir, backend_id, src=BACKEND_SRC)


class Lab:
    """A running builtin balancer: its URL, admin URL and process."""

    def __init__(self, proc: ManagedProcess, port: int, admin_port: int) -> None:
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.admin = f"http://127.0.0.1:{admin_port}"

    def backends(self) -> dict[str, dict[str, Any]]:
        doc = requests.get(self.admin + "/backends", timeout=TIMEOUT_S).json()
        return {b["id"]: b for b in doc["backends"]}

    def records(self) -> list[dict[str, Any]]:
        return list(requests.get(self.admin + "/records?since=0&limit=10000", timeout=TIMEOUT_S).json()["records"])

    def set_state(self, backend_id: str, state: str) -> None:
        r = requests.put(f"{self.admin}/backends/{backend_id}/state", json={"state": state}, timeout=TIMEOUT_S)
        assert r.status_code == 200, r.text

    def rss(self) -> int:
        assert self.proc.pid is not None
        return int(psutil.Process(self.proc.pid).memory_info().rss)


def start_balancer(stack: ExitStack, run_dir: Path, backends: list[tuple[str, str]], policy: str = "round-robin",
                   **options: Any) -> Lab:
    """Start the builtin balancer as a child process calling serve_forever(BalancerOptions(...))."""
    port, admin_port = free_port(), free_port()
    opts = {"port": port, "backends": tuple(backends), "policy": policy, "admin_port": admin_port,
            "health_interval_s": 0.2, **options}
    BalancerOptions(**opts)  # type-check the options here, not in the child
    code = ("from statelab.balancer.options import BalancerOptions\n"
            "from statelab.balancer.server import serve_forever\n"
            f"serve_forever(BalancerOptions(**{opts!r}))")
    proc = ManagedProcess(f"lb-{port}", [sys.executable, "-c", code], run_dir / f"lb-{port}.log",
                          probe=http_probe(f"http://127.0.0.1:{admin_port}/healthz", lambda s: s == 200))
    stack.callback(proc.stop)
    proc.start().wait_ready(15)
    return Lab(proc, port, admin_port)


def start_haproxy(stack: ExitStack, run_dir: Path, backends: list[tuple[str, str]]) -> int:
    """Start HAProxy with the lab's own rendered config in front of backends; return its port."""
    binary = shutil.which("haproxy")
    assert binary is not None
    port = free_port()
    cfg = run_dir / f"haproxy-{port}.cfg"
    cfg.write_text(render_config(bind=f"127.0.0.1:{port}", backends=backends, policy="round-robin",
                                 health_interval_s=0.2))
    proc = ManagedProcess(f"haproxy-{port}", [binary, "-db", "-f", str(cfg)], run_dir / f"haproxy-{port}.log",
                          probe=tcp_probe("127.0.0.1", port))
    stack.callback(proc.stop)
    proc.start().wait_ready(10)
    return port


def raw_exchange(port: int, payload: bytes, timeout_s: float = TIMEOUT_S, half_close: bool = False) -> bytes:
    """Send raw bytes (then shut our sending side if half_close); return all received until the peer closes."""
    with closing(socket.create_connection(("127.0.0.1", port), timeout=timeout_s)) as s:
        s.sendall(payload)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            try:
                b = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                chunks.append(b"<cut>")
                return b"".join(chunks)
            if not b:
                return b"".join(chunks)
            chunks.append(b)


@dataclass(frozen=True)
class Answer:
    """One response read off a raw byte stream."""

    status: int
    headers: dict[str, str]  # lower-cased names, last value wins
    body: bytes


class _Collector:
    def __init__(self) -> None:
        self.answers: list[Answer] = []
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.answers.append(Answer(self.parser.get_status_code(), self.headers, b"".join(self.body)))
        self.headers, self.body = {}, []


def answers(raw: bytes) -> list[Answer]:
    """Parse the complete responses in a raw byte stream (whatever follows a broken one is ignored)."""
    c = _Collector()
    try:
        c.parser.feed_data(raw.replace(b"<cut>", b""))
    except httptools.HttpParserError:
        pass
    return c.answers


def elapsed(since: float) -> float:
    return time.monotonic() - since
