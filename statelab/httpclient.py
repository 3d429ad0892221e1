"""A small keep-alive HTTP/1.1 client on asyncio Protocols and httptools, one socket per user.

Why not aiohttp: measured with bench/bench_users.py (uvloop, 200 users each on its own socket and
source address, no think time, a uvloop+httptools fake app in another process, three runs):
    statelab.httpclient  32-67k req/s   14.5-19 us CPU per request
    aiohttp 3.14         5.6-13k req/s  77-112 us CPU per request (TCPConnector(local_addr=...),
                                        one ClientSession per user for its own cookie jar)
i.e. 5-6x less generator CPU per request. A simulated person makes one request at a time, so one
connection per user, no pool and no pipelining is all we need; what matters is few Python calls
per request (one ``transport.write`` per request, headers parsed by llhttp) and a source address
per socket.

Errors (all subclasses of ``HttpError``) carry a ``kind`` that users.py counts by:
``connect`` (could not open), ``timeout`` (no full response in time), ``protocol``
(reset or garbage after the request was sent).
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

import httptools

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
_READ_LIMIT_BYTES = 64 * 1024 * 1024


class HttpError(Exception):
    """A request got no usable response; ``kind`` names the error class for counting."""

    kind = "protocol"


class ConnectFailed(HttpError):
    kind = "connect"


class RequestTimeout(HttpError):
    kind = "timeout"


class ProtocolFailed(HttpError):
    kind = "protocol"


class _StaleConnection(ProtocolFailed):
    """The peer closed a reused keep-alive socket before sending any byte of the response."""


@dataclass(frozen=True)
class Response:
    status: int
    headers: tuple[tuple[str, str], ...]  # lower-cased names, in arrival order
    body: bytes

    def header(self, name: str, default: str = "") -> str:
        """Return the first header called ``name`` (lower case), or default."""
        for key, value in self.headers:
            if key == name:
                return value
        return default

    def header_all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]


class _Protocol(asyncio.Protocol):
    """One connection: feeds bytes to llhttp and completes one response future at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.waiter: asyncio.Future[Response] | None = None
        self.got_bytes = False
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self._status = 0
        self._size = 0

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        self._size += len(data)
        try:
            if self._size > _READ_LIMIT_BYTES:
                raise ProtocolFailed("response larger than the read limit")
            self.parser.feed_data(data)
        except (httptools.HttpParserError, ProtocolFailed) as exc:
            self._fail(ProtocolFailed(f"bad response: {exc}"))
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if self._status and self.parser.get_status_code() and not self._content_delimited():
            self.on_message_complete()  # a close-delimited body ends here
        elif not self.got_bytes:
            self._fail(_StaleConnection("connection closed before any response byte"))
        else:
            self._fail(ProtocolFailed("connection closed in the middle of a response"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self._status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(Response(self._status, tuple(self._headers), b"".join(self._body)))
        if not self.parser.should_keep_alive():
            self.abort()

    # ours
    def _content_delimited(self) -> bool:
        return any(k in ("content-length", "transfer-encoding") for k, _ in self._headers)

    def _fail(self, exc: HttpError) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def send(self, payload: bytes, waiter: asyncio.Future[Response]) -> None:
        self.waiter = waiter
        self.got_bytes = False
        self._headers = []
        self._body = []
        self._status = 0
        self._size = 0
        assert self.transport is not None
        self.transport.write(payload)

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class HttpClient:
    """A user's browser tab: one kept-alive connection to one host, bound to a source address.

    Requests are sequential (a person clicks, waits, reads). Every request has a deadline that
    covers connecting too. A reset before any response byte on a *reused* socket is retried once
    on a new socket for idempotent methods, as browsers do for stale keep-alive connections.
    """

    def __init__(self, host: str, port: int, local_addr: str | None = None,
                 timeout_s: float = 10.0) -> None:
        self.host = host
        self.port = port
        self.local_addr = local_addr
        self.timeout_s = timeout_s
        self._host_header = f"Host: {host}:{port}\r\n".encode("latin-1")
        self._proto: _Protocol | None = None
        self._used = False  # has the current connection already carried a response?
        self.connects = 0
        self.stale_retries = 0

    async def request(self, method: str, path: str, headers: list[tuple[str, str]] | None = None,
                      body: bytes = b"", timeout_s: float | None = None) -> Response:
        """Send one request and return the full response, or raise an ``HttpError``."""
        head = [f"{method} {path} HTTP/1.1\r\n".encode("latin-1"), self._host_header]
        for name, value in headers or ():
            head.append(f"{name}: {value}\r\n".encode("latin-1"))
        if body or method in ("POST", "PUT", "PATCH"):
            head.append(b"Content-Length: %d\r\n" % len(body))
        head.append(b"\r\n")
        payload = b"".join(head) + body
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.timeout_s if timeout_s is None else timeout_s)
        try:
            return await self._exchange(loop, payload, deadline)
        except _StaleConnection:
            if method not in IDEMPOTENT_METHODS:
                raise
            self.stale_retries += 1
            return await self._exchange(loop, payload, deadline, allow_stale=False)

    async def _exchange(self, loop: asyncio.AbstractEventLoop, payload: bytes, deadline: float,
                        allow_stale: bool = True) -> Response:
        proto = self._proto
        if proto is None or proto.closed:
            proto = await self._connect(loop, deadline)
        reused = self._used
        waiter: asyncio.Future[Response] = loop.create_future()
        timer = loop.call_at(deadline, _expire, waiter)
        try:
            proto.send(payload, waiter)
            response = await waiter
        except _StaleConnection:
            self._drop()
            if reused and allow_stale:
                raise
            raise ProtocolFailed("connection closed before any response byte") from None
        except HttpError:
            self._drop()
            raise
        except BaseException:  # cancelled: the socket is mid-request, unusable
            self._drop()
            raise
        finally:
            timer.cancel()
            proto.waiter = None
        self._used = not proto.closed
        return response

    async def _connect(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Protocol:
        self._drop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.local_addr is not None:
                # Choose the port at connect time: thousands of sockets on few addresses would
                # otherwise exhaust ephemeral ports at bind().
                sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((self.local_addr, 0))
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise RequestTimeout("no time left to connect")
            async with asyncio.timeout(remaining):
                await loop.sock_connect(sock, (self.host, self.port))
                _, proto = await loop.create_connection(_Protocol, sock=sock)
        except TimeoutError:
            sock.close()
            raise RequestTimeout(f"connect to {self.host}:{self.port} timed out") from None
        except OSError as exc:
            sock.close()
            raise ConnectFailed(f"connect to {self.host}:{self.port} failed: {exc}") from None
        except BaseException:
            sock.close()
            raise
        self._proto = proto
        self._used = False
        self.connects += 1
        return proto

    def _drop(self) -> None:
        if self._proto is not None:
            self._proto.abort()
            self._proto = None
        self._used = False

    def close(self) -> None:
        """Close the connection (safe to call twice)."""
        self._drop()


_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


def _expire(waiter: asyncio.Future[Response]) -> None:
    if not waiter.done():
        waiter.set_exception(RequestTimeout("no complete response before the deadline"))


def resolve_host(host: str) -> str:
    """Resolve once, up front, so thousands of users do not each ask the resolver."""
    return socket.gethostbyname(host)
