"""The fault server: its proxies and their loopback JSON API (Toxiproxy's routes), on one event loop.

    GET    /version                              {"version"}
    GET    /proxies                              {name: proxy}
    POST   /proxies                              {"name","upstream","listen"?,"enabled"?}  -> 201 proxy
    GET    /proxies/<name>                       proxy, with its toxics and counters
    POST   /proxies/<name>                       {"enabled"?}  ("down" is enabled=false)
    DELETE /proxies/<name>                       204
    GET    /proxies/<name>/toxics                [toxic]
    POST   /proxies/<name>/toxics                {"type","stream"?,"toxicity"?,"attributes"?,"name"?} -> toxic
    GET    /proxies/<name>/toxics/<toxic>        toxic
    POST   /proxies/<name>/toxics/<toxic>        {"toxicity"?,"attributes"?} -> toxic
    DELETE /proxies/<name>/toxics/<toxic>        204
    POST   /reset                                every proxy enabled, every toxic removed -> 204

Errors are {"error": "..."}: 400 malformed, 404 unknown, 409 exists. Every request closes its connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Sequence

from statelab.faults.proxy import Proxy
from statelab.faults.toxics import NAME_PATTERN, Toxic, ToxicError, parse_address

log = logging.getLogger(__name__)

VERSION = "statelab-faults 1"
MAX_BODY_BYTES = 64 * 1024
REQUEST_TIMEOUT_S = 10.0
REASONS = {200: "OK", 201: "Created", 204: "No Content", 400: "Bad Request", 404: "Not Found",
           405: "Method Not Allowed", 409: "Conflict", 413: "Payload Too Large", 500: "Internal Server Error"}
Reply = tuple[int, Any]


class NotFound(Exception):
    """An unknown proxy, toxic or route (404)."""


class Conflict(Exception):
    """A proxy or toxic of that name exists already (409)."""


@dataclass(frozen=True)
class ProxySpec:
    """A proxy given on the command line: NAME=LISTEN=UPSTREAM."""

    name: str
    listen: str
    upstream: str

    @classmethod
    def parse(cls, text: str) -> "ProxySpec":
        parts = text.split("=")
        if len(parts) != 3:
            raise ToxicError(f"a proxy is NAME=LISTEN=UPSTREAM (e.g. s3=127.0.0.1:0=127.0.0.1:8333), not {text!r}")
        return cls(*parts)


class FaultServer:
    """Every proxy of one fault server, and the operations the API offers on them."""

    def __init__(self) -> None:
        self.proxies: dict[str, Proxy] = {}

    async def create(self, body: Any) -> Proxy:
        if not isinstance(body, dict):
            raise ToxicError("expected a JSON object")
        name = body.get("name")
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            raise ToxicError("name must be 1-64 letters, digits, '_', '.' or '-'")
        if name in self.proxies:
            raise Conflict(f"proxy {name} exists already")
        enabled = body.get("enabled", True)
        if not isinstance(enabled, bool):
            raise ToxicError("enabled must be true or false")
        proxy = Proxy(name, parse_address(body.get("listen", "127.0.0.1:0"), "listen"),
                      parse_address(body.get("upstream"), "upstream"))
        await proxy.enable()  # binds, even when it then starts down, so its port is known
        if not enabled:
            await proxy.disable()
        self.proxies[name] = proxy
        return proxy

    def proxy(self, name: str) -> Proxy:
        try:
            return self.proxies[name]
        except KeyError:
            raise NotFound(f"no proxy {name}") from None

    async def update(self, name: str, body: Any) -> Proxy:
        proxy = self.proxy(name)
        if not isinstance(body, dict) or set(body) - {"enabled", "name", "listen", "upstream"}:
            raise ToxicError("a proxy update is {\"enabled\": true|false}")
        for fixed in ("name", "listen", "upstream"):
            if fixed in body and body[fixed] != proxy.to_json()[fixed]:
                raise ToxicError(f"a proxy's {fixed} cannot change: delete it and create another")
        enabled = body.get("enabled", proxy.enabled)
        if not isinstance(enabled, bool):
            raise ToxicError("enabled must be true or false")
        if enabled:
            await proxy.enable()
        else:
            await proxy.disable()
        return proxy

    async def delete(self, name: str) -> None:
        await self.proxy(name).disable()
        del self.proxies[name]

    def add_toxic(self, name: str, body: Any) -> Toxic:
        proxy = self.proxy(name)
        if not isinstance(body, dict):
            raise ToxicError("expected a JSON object")
        toxic = Toxic.from_json(body)
        if toxic.name in proxy.toxics:
            raise Conflict(f"proxy {name} has a toxic {toxic.name} already: update or delete it")
        proxy.set_toxic(toxic)
        return toxic

    def toxic(self, name: str, toxic_name: str) -> Toxic:
        try:
            return self.proxy(name).toxics[toxic_name]
        except KeyError:
            raise NotFound(f"proxy {name} has no toxic {toxic_name}") from None

    def update_toxic(self, name: str, toxic_name: str, body: Any) -> Toxic:
        if not isinstance(body, dict):
            raise ToxicError("expected a JSON object")
        toxic = self.toxic(name, toxic_name).updated(body)
        self.proxy(name).set_toxic(toxic)
        return toxic

    def remove_toxic(self, name: str, toxic_name: str) -> Toxic:
        toxic = self.toxic(name, toxic_name)
        self.proxy(name).remove_toxic(toxic_name)
        return toxic

    async def reset(self) -> None:
        for proxy in self.proxies.values():
            for toxic_name in list(proxy.toxics):
                proxy.remove_toxic(toxic_name)
            await proxy.enable()

    async def close(self) -> None:
        for proxy in self.proxies.values():
            await proxy.disable()

    async def handle(self, method: str, path: str, body: Any) -> Reply:
        """Route one API request; return (status, JSON body or None)."""
        parts = [p for p in path.split("?", 1)[0].split("/") if p]
        route = (method, len(parts), parts[0] if parts else "", parts[2] if len(parts) > 2 else "")
        handlers: dict[tuple[str, int, str, str], Callable[[], Awaitable[Reply]]] = {
            ("GET", 1, "version", ""): lambda: _now(200, {"version": VERSION}),
            ("POST", 1, "reset", ""): lambda: _then(self.reset(), 204),
            ("GET", 1, "proxies", ""): lambda: _now(200, {n: p.to_json() for n, p in self.proxies.items()}),
            ("POST", 1, "proxies", ""): lambda: _json_of(self.create(body), 201),
        }
        if len(parts) >= 2 and parts[0] == "proxies":
            name = parts[1]
            handlers.update({
                ("GET", 2, "proxies", ""): lambda: _now(200, self.proxy(name).to_json()),
                ("POST", 2, "proxies", ""): lambda: _json_of(self.update(name, body), 200),
                ("DELETE", 2, "proxies", ""): lambda: _then(self.delete(name), 204),
                ("GET", 3, "proxies", "toxics"): lambda: _now(200, [t.to_json() for t in self.proxy(name).toxics.values()]),
                ("POST", 3, "proxies", "toxics"): lambda: _now(200, self.add_toxic(name, body).to_json()),
            })
            if len(parts) == 4 and parts[2] == "toxics":
                toxic = parts[3]
                handlers.update({
                    ("GET", 4, "proxies", "toxics"): lambda: _now(200, self.toxic(name, toxic).to_json()),
                    ("POST", 4, "proxies", "toxics"): lambda: _now(200, self.update_toxic(name, toxic, body).to_json()),
                    ("DELETE", 4, "proxies", "toxics"): lambda: _removed(self.remove_toxic(name, toxic)),
                })
        handler = handlers.get(route)
        if handler is None:
            return 404, {"error": f"no route {method} {path}"}
        try:
            return await handler()
        except ToxicError as exc:
            return 400, {"error": str(exc)}
        except NotFound as exc:
            return 404, {"error": str(exc)}
        except Conflict as exc:
            return 409, {"error": str(exc)}

    async def serve_api(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one HTTP/1.1 request on a connection, then close it."""
        try:
            status, payload = await asyncio.wait_for(self._one_request(reader), REQUEST_TIMEOUT_S)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ConnectionError):
            writer.close()
            return
        except Exception:  # a bug answers 500, it never takes the server down
            log.exception("fault API request failed")
            status, payload = 500, {"error": "internal error"}
        data = b"" if status == 204 else json.dumps(payload).encode()
        head = (f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n")
        try:
            writer.write(head.encode() + data)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _one_request(self, reader: asyncio.StreamReader) -> Reply:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        request_line, *header_lines = head.split("\r\n")
        match = re.fullmatch(r"([A-Z]+) (\S+) HTTP/1\.[01]", request_line)
        if match is None:
            return 400, {"error": "malformed request line"}
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines if h)}
        length = headers.get("content-length", "0")
        if not length.isdigit():
            return 400, {"error": "bad Content-Length"}
        if int(length) > MAX_BODY_BYTES:
            return 413, {"error": f"body over {MAX_BODY_BYTES} bytes"}
        raw = await reader.readexactly(int(length)) if int(length) else b""
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError:
            return 400, {"error": "body is not JSON"}
        return await self.handle(match.group(1), match.group(2), body)


async def _now(status: int, payload: Any) -> Reply:
    return status, payload


async def _removed(_: Toxic) -> Reply:
    return 204, None


async def _then(done: Awaitable[Any], status: int) -> Reply:
    await done
    return status, None


async def _json_of(made: Awaitable[Proxy], status: int) -> Reply:
    return status, (await made).to_json()


async def serve(api_host: str, api_port: int, proxies: Sequence[ProxySpec],
                ready: Callable[[str, FaultServer], None] | None = None) -> None:
    """Create the proxies, serve the API until cancelled, then drop every link."""
    faults = FaultServer()
    try:
        for spec in proxies:
            await faults.create({"name": spec.name, "listen": spec.listen, "upstream": spec.upstream})
        api = await asyncio.start_server(faults.serve_api, api_host, api_port, reuse_address=True)
        url = f"http://{api_host}:{api.sockets[0].getsockname()[1]}"
        if ready is not None:
            ready(url, faults)
        async with api:
            await api.serve_forever()
    finally:
        await faults.close()


def serve_forever(api_host: str, api_port: int, proxies: Sequence[ProxySpec], use_uvloop: bool = True,
                  ready: Callable[[str, FaultServer], None] | None = None) -> None:
    """Run a fault server in this process until SIGINT/SIGTERM (the CLI's `statelab faults`)."""
    if use_uvloop:
        try:
            import uvloop

            uvloop.run(serve(api_host, api_port, proxies, ready))
            return
        except ImportError:
            pass
    asyncio.run(serve(api_host, api_port, proxies, ready))
