"""The balancer's JSON admin API on its own loopback port (a tiny asyncio HTTP handler, not the hot path).

    GET    /healthz                     {"ok": true}
    GET    /backends                    {"policy", "backends": [{"id", "address", "state", "healthy", "active",
                                         "requests", "errors", "p50_ms", "p99_ms"}]}
    POST   /backends                    {"id", "address"}
    DELETE /backends/<id>
    PUT    /backends/<id>/state         {"state": "ready" | "drain" | "maint"}
    PUT    /policy                      {"policy": name}
    GET    /records?since=<seq>&limit=<n>  {"next", "dropped", "records": [...]}
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from statelab.balancer.policies import Policy
from statelab.balancer.pool import Pool
from statelab.balancer.records import RecordRing, percentile
from statelab.loopback import is_loopback

log = logging.getLogger(__name__)

MAX_ADMIN_BODY_BYTES = 64 * 1024
ADMIN_TIMEOUT_S = 10.0
MAX_RECORDS_PER_READ = 10_000


class Balancer(Protocol):
    """What the admin API reads and changes: the pool, the policy and the request records."""

    pool: Pool
    records: RecordRing
    policy: Policy

    def set_policy(self, name: str) -> None: ...


class AdminError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def backends_view(bal: Balancer) -> dict[str, Any]:
    """Return the GET /backends document."""
    lat = bal.records.latencies()
    out = []
    for b in bal.pool.backends.values():
        samples = lat.get(b.id, [])
        out.append({"id": b.id, "address": b.address, "state": b.state, "healthy": b.healthy, "active": b.active,
                    "requests": b.requests, "errors": b.errors, "p50_ms": percentile(samples, 0.5),
                    "p99_ms": percentile(samples, 0.99)})
    return {"policy": bal.policy.name, "backends": out}


def handle(bal: Balancer, method: str, target: str, body: bytes) -> tuple[int, Any]:
    """Route one admin request; return (status, JSON-able document)."""
    url = urlsplit(target)
    parts = [unquote(p) for p in url.path.strip("/").split("/") if p]
    try:
        doc = json.loads(body) if body else {}
    except ValueError:
        raise AdminError(400, "body is not JSON") from None
    if not isinstance(doc, dict):
        raise AdminError(400, "body must be a JSON object")
    pool = bal.pool
    if parts == ["healthz"] and method == "GET":
        return 200, {"ok": True}
    if parts == ["backends"]:
        if method == "GET":
            return 200, backends_view(bal)
        if method == "POST":
            bid, addr = doc.get("id"), doc.get("address")
            if not isinstance(bid, str) or not isinstance(addr, str):
                raise AdminError(400, 'body must be {"id": ..., "address": "host:port"}')
            try:
                pool.add(bid, addr)
            except ValueError as exc:
                raise AdminError(409 if bid in pool.backends else 400, str(exc)) from None
            return 201, backends_view(bal)
    if len(parts) >= 2 and parts[0] == "backends":
        bid = parts[1]
        if bid not in pool.backends:
            raise AdminError(404, f"no backend {bid!r}")
        if len(parts) == 2 and method == "DELETE":
            pool.remove(bid)
            return 200, backends_view(bal)
        if parts[2:] == ["state"] and method == "PUT":
            try:
                pool.set_state(bid, str(doc.get("state")))
            except ValueError as exc:
                raise AdminError(400, str(exc)) from None
            return 200, backends_view(bal)
    if parts == ["policy"] and method == "PUT":
        try:
            bal.set_policy(str(doc.get("policy")))
        except ValueError as exc:
            raise AdminError(400, str(exc)) from None
        return 200, {"policy": bal.policy.name}
    if parts == ["records"] and method == "GET":
        q = parse_qs(url.query)
        try:
            since = int(q.get("since", ["0"])[0])
            limit = min(MAX_RECORDS_PER_READ, int(q.get("limit", ["1000"])[0]))
        except ValueError:
            raise AdminError(400, "since and limit must be integers") from None
        return 200, bal.records.read(since, limit)
    raise AdminError(404 if method in ("GET", "POST", "PUT", "DELETE") else 405, f"no route {method} {url.path}")


async def _serve(bal: Balancer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    peer = writer.get_extra_info("peername")
    try:
        if not peer or not is_loopback(peer[0]):
            await _reply(writer, 403, {"error": "the admin API accepts loopback clients only"}, close=True)
            return
        while True:
            async with asyncio.timeout(ADMIN_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, version = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
                length = int(headers.get("content-length", "0"))
                if length > MAX_ADMIN_BODY_BYTES or "transfer-encoding" in headers:
                    await _reply(writer, 400, {"error": "body too large or chunked"}, close=True)
                    return
                body = await reader.readexactly(length) if length else b""
            close = headers.get("connection", "").lower() == "close" or version == "HTTP/1.0"
            try:
                status, doc = handle(bal, method, target, body)
            except AdminError as exc:
                status, doc = exc.status, {"error": str(exc)}
            await _reply(writer, status, doc, close)
            if close:
                return
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError, ValueError):
        pass
    except Exception:  # an admin bug must never take the balancer down
        log.exception("admin request failed")
    finally:
        writer.close()


async def _reply(writer: asyncio.StreamWriter, status: int, doc: Any, close: bool) -> None:
    body = json.dumps(doc).encode()
    writer.write(b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n"
                 % (status, b"OK" if status < 300 else b"Error", len(body),
                    b"Connection: close\r\n" if close else b"") + body)
    await writer.drain()


async def start_admin(bal: Balancer, host: str, port: int) -> asyncio.AbstractServer:
    """Serve the admin API on host:port (loopback)."""
    return await asyncio.start_server(lambda r, w: _serve(bal, r, w), host, port, reuse_address=True)
