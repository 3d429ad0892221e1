"""How much load can the simulated users make, and at what CPU cost? (about 30 s in all)

Starts a fast fake of the app contract (asyncio Protocol + httptools + uvloop) in its own process,
then measures:
  1. client options at full speed (no think time): statelab.httpclient vs aiohttp with a per-user
     TCPConnector(local_addr=...), each user on its own socket and source address;
  2. crowds of N users running the `browser` and `shopper` journeys with a 1 s mean think time,
     the way scenarios use them: requests/s, generator CPU share, latency, errors.

Usage: python bench/bench_users.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

READY_TIMEOUT_S = 10.0


# ---------------------------------------------------------------- the fake server (child process)

class _ServerProtocol(asyncio.Protocol):
    def __init__(self, sessions: dict[str, dict[int, int]]) -> None:
        import httptools

        self.sessions = sessions
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None
        self.url = b""
        self.cookie = ""
        self.body: list[bytes] = []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except Exception:
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"cookie":
            self.cookie = value.decode()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        path, body = self.url.decode(), b"".join(self.body)
        self.url, self.body = b"", []
        cookie, self.cookie = self.cookie, ""
        sid = next((c.split("=", 1)[1] for c in cookie.split("; ") if c.startswith("lab_session=")), None)
        cart = self.sessions.get(sid) if sid else None
        extra = b""
        status, doc = 200, b'{"ok":true}'
        if path == "/login":
            sid = secrets.token_hex(8)
            self.sessions[sid] = {}
            extra = b"Set-Cookie: lab_session=%s; HttpOnly\r\n" % sid.encode()
            doc = b'{"user":{"id":1,"username":"u"}}'
        elif path.startswith("/products/"):
            doc = b'{"id":%s,"name":"thing","price":"9.99"}' % path[10:].encode()
        elif cart is None:
            status, doc = 401, b'{"error":"login required"}'
        elif method == b"POST" and path == "/cart/items":
            item = json.loads(body)
            cart[item["product_id"]] = cart.get(item["product_id"], 0) + item["qty"]
            status, doc = 201, _cart(cart)
        elif path == "/cart":
            doc = _cart(cart)
        if "LAB_BACKEND" not in cookie:
            extra += b"Set-Cookie: LAB_BACKEND=b1\r\n"
        reason = {200: b"OK", 201: b"Created", 401: b"Unauthorized"}[status]
        self.transport.write(b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nX-Served-By: fake\r\n"
                             b"%sContent-Length: %d\r\n\r\n%s" % (status, reason, extra, len(doc), doc))


def _cart(cart: dict[int, int]) -> bytes:
    return json.dumps({"items": [{"product_id": p, "qty": q} for p, q in cart.items()]}).encode()


def serve(port_file: Path) -> None:
    """Run the fake server until SIGTERM; write the bound port to port_file when listening."""
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        sessions: dict[str, dict[int, int]] = {}
        server = await loop.create_server(lambda: _ServerProtocol(sessions), "127.0.0.1", 0,
                                          backlog=4096)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        port_file.write_text(str(server.sockets[0].getsockname()[1]))
        await stop.wait()
        server.close()

    uvloop.run(main())


@contextmanager
def fake_server(workdir: Path) -> Iterator[str]:
    """Start the fake server as a child in its own session; yield its base URL; always stop it."""
    port_file = workdir / "port"
    with open(workdir / "server.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port_file)],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not port_file.exists() or not port_file.read_text():
            if proc.poll() is not None:
                raise RuntimeError((workdir / "server.log").read_text()[-2000:])
            if time.monotonic() > deadline:
                raise RuntimeError("fake server did not start in time")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port_file.read_text()}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(3)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# ---------------------------------------------------------------- client options at full speed

async def _loop_ours(url: str, users: int, seconds: float) -> int:
    from urllib.parse import urlsplit

    from statelab.httpclient import HttpClient
    from statelab.users import user_address

    parts = urlsplit(url)
    clients = [HttpClient(parts.hostname or "", parts.port or 80, user_address(i), 5.0)
               for i in range(users)]
    end = time.perf_counter() + seconds
    count = 0

    async def one(client: HttpClient) -> None:
        nonlocal count
        while time.perf_counter() < end:
            response = await client.request("GET", "/products/7", [("Cookie", "LAB_BACKEND=b1")])
            assert response.status == 200
            count += 1

    try:
        await asyncio.gather(*(one(c) for c in clients))
    finally:
        for client in clients:
            client.close()
    return count


async def _loop_aiohttp(url: str, users: int, seconds: float) -> int:
    import aiohttp

    from statelab.users import user_address

    timeout = aiohttp.ClientTimeout(total=5.0)
    sessions = [aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(local_addr=(user_address(i), 0), limit=1),
        timeout=timeout) for i in range(users)]
    end = time.perf_counter() + seconds
    count = 0

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal count
        while time.perf_counter() < end:
            async with session.get(url + "/products/7") as response:
                await response.read()
                assert response.status == 200
            count += 1

    try:
        await asyncio.gather(*(one(s) for s in sessions))
    finally:
        for session in sessions:
            await session.close()
    return count


def measure_client(name: str, url: str, users: int, seconds: float) -> dict[str, Any]:
    import uvloop

    fn = {"statelab.httpclient": _loop_ours, "aiohttp": _loop_aiohttp}[name]
    wall0, cpu0 = time.perf_counter(), time.process_time()
    count = uvloop.run(fn(url, users, seconds))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return {"client": name, "users": users, "requests_per_s": round(count / wall),
            "cpu_share": round(cpu / wall, 2), "cpu_us_per_request": round(cpu / count * 1e6, 1)}


# ---------------------------------------------------------------- crowds as scenarios use them

def measure_crowd(url: str, users: int, journey: str, seconds: float) -> dict[str, Any]:
    from statelab.users import Population, run_crowd_sync

    result = run_crowd_sync(url, Population(distinct_users=users, think_s=1.0), journey,
                            duration_s=seconds, ramp_s=1.0, request_timeout_s=5.0)
    return {"journey": journey, "users": users, "requests_per_s": result.requests_per_s,
            "cpu_share": result.cpu_share, "p50_ms": result.latency.p50_ms,
            "p99_ms": result.latency.p99_ms, "errors": result.error_total,
            "lag_p99_ms": result.loop_lag.p99_ms,
            "logins_ok": result.logins_ok, "items_lost": result.items_lost}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="shorter runs (about 12 s)")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    burst, crowd_s = (1.5, 3.0) if args.quick else (3.0, 5.0)
    with tempfile.TemporaryDirectory() as tmp, fake_server(Path(tmp)) as url:
        print(f"fake server (own process) at {url}; {os.cpu_count()} CPUs\n")
        print("1. client options, 200 users on their own sockets/addresses, no think time")
        options = ["statelab.httpclient"]
        try:
            import aiohttp  # noqa: F401

            options.append("aiohttp")
        except ImportError:
            print("   (aiohttp not installed: skipped)")
        for name in options:
            row = measure_client(name, url, 200, burst)
            print(f"   {row['client']:<20} {row['requests_per_s']:>7} req/s  "
                  f"cpu share {row['cpu_share']:.2f}  {row['cpu_us_per_request']} us CPU/request")
        print("\n2. crowds, think time 1 s (exponential), ramp 1 s")
        for users, journey in ((200, "browser"), (1000, "browser"), (2000, "browser"),
                               (2000, "shopper")):
            row = measure_crowd(url, users, journey, crowd_s)
            print(f"   {row['users']:>5} {row['journey']:<8} {row['requests_per_s']:>7} req/s  "
                  f"cpu share {row['cpu_share']:.2f}  p50 {row['p50_ms']} ms  "
                  f"p99 {row['p99_ms']} ms  loop lag p99 {row['lag_p99_ms']} ms  "
                  f"errors {row['errors']}")


if __name__ == "__main__":
    main()
