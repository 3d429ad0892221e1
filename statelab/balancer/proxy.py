"""statelab's own HTTP/1.1 reverse proxy: asyncio Protocols, llhttp framing, raw pass-through.

Request heads go to the backend as received with `X-Forwarded-For` spliced in; responses come
back as received with at most one `Set-Cookie` spliced in; each received segment becomes one
`transport.write`. llhttp (httptools) validates every byte, and the proxy tracks
Content-Length and chunk boundaries itself as well: any disagreement is a 400 and a close.
Every request is routed on its own, so one keep-alive client connection spreads over backends,
and each backend keeps a list of idle keep-alive connections. The common case (a request head
without body in one segment) runs through an inlined fast path of a dozen calls.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from dataclasses import dataclass
from typing import Any

import httptools
from httptools import HttpParserError, HttpParserUpgrade

from statelab.balancer.policies import COOKIE_NAME, make_policy
from statelab.balancer.pool import Backend, Pool
from statelab.balancer.records import DEFAULT_RECORDS_MAX, RecordRing

log = logging.getLogger(__name__)

_now = time.monotonic
IDEMPOTENT = frozenset((b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"))
MAX_CHUNK_LINE_BYTES = 4096
MAX_TRAILERS = 32
SWEEP_INTERVAL_S = 0.25
# reasons the client side is paused for reading (a bit mask)
_PIPELINE, _CONNECTING, _UPLOAD = 1, 2, 4

REASONS = {400: "Bad Request", 408: "Request Timeout", 431: "Request Header Fields Too Large",
           501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


@dataclass(frozen=True)
class BalancerOptions:
    """Everything one balancer process needs; `statelab lb` builds it from argv."""

    port: int
    backends: tuple[tuple[str, str], ...]
    policy: str
    admin_port: int | None
    host: str = "127.0.0.1"
    health_interval_s: float = 1.0
    trust_forwarded_for: bool = False
    use_uvloop: bool = True
    hash_balance_factor: float = 1.25
    max_connections: int = 10_000
    max_header_bytes: int = 16 * 1024
    max_headers: int = 100
    header_timeout_s: float = 10.0
    idle_timeout_s: float = 60.0
    connect_timeout_s: float = 2.0
    backend_timeout_s: float = 60.0  # time to the first response byte
    body_timeout_s: float = 30.0  # longest pause between two pieces of a request body
    records_max: int = DEFAULT_RECORDS_MAX
    shutdown_timeout_s: float = 5.0


class BadRequest(Exception):
    """The client sent something we refuse to forward (status, reason)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def error_response(status: int, message: str) -> bytes:
    """Return a complete JSON error response that closes the connection."""
    body = json.dumps({"error": message}).encode()
    return (b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
            % (status, REASONS.get(status, "Error").encode(), len(body)) + body)


def header_spans(low: bytes, name: bytes) -> list[tuple[int, int]]:
    """Return (start, end) of every value of header `name` in a lower-cased head."""
    pat = b"\r\n" + name + b":"
    spans = []
    i = low.find(pat)
    while i >= 0:
        s = i + len(pat)
        e = low.find(b"\r\n", s)
        spans.append((s, e))
        i = low.find(pat, e)
    return spans


_HEX = frozenset(b"0123456789abcdefABCDEF")


class ChunkTracker:
    """Follow chunked framing on our own, independently of llhttp, to catch disagreements."""

    __slots__ = ("state", "left", "line", "trailers")

    def __init__(self) -> None:
        self.state = 0  # 0 size line, 1 data, 2 CRLF after data, 3 trailer lines
        self.left = 0
        self.line = b""
        self.trailers = 0

    def feed(self, data: bytes) -> int:
        """Return the index just past the end of the chunked body in data, or -1; ValueError if malformed."""
        i, n = 0, len(data)
        while i < n:
            st = self.state
            if st == 1:
                take = min(self.left, n - i)
                self.left -= take
                i += take
                if not self.left:
                    self.state = 2
            elif st == 2:
                need = 2 - len(self.line)
                self.line += data[i:i + need]
                i += need
                if len(self.line) == 2:
                    if self.line != b"\r\n":
                        raise ValueError("chunk data not followed by CRLF")
                    self.line = b""
                    self.state = 0
            else:
                j = data.find(b"\n", i)
                if j < 0:
                    self.line += data[i:]
                    if len(self.line) > MAX_CHUNK_LINE_BYTES:
                        raise ValueError("chunk line too long")
                    return -1
                line = self.line + data[i:j + 1]
                self.line = b""
                i = j + 1
                if len(line) > MAX_CHUNK_LINE_BYTES or not line.endswith(b"\r\n"):
                    raise ValueError("chunk line without CRLF")
                if st == 0:
                    size = line[:-2].split(b";", 1)[0]
                    if not size or len(size) > 15 or not _HEX.issuperset(size):
                        raise ValueError(f"malformed chunk size {size[:20]!r}")
                    self.left = int(size, 16)
                    self.state = 1 if self.left else 3
                elif line == b"\r\n":
                    return i
                else:
                    self.trailers += 1
                    if self.trailers > MAX_TRAILERS:
                        raise ValueError("too many trailers")
        return -1


def final_head(buf: bytes) -> tuple[int, int] | None:
    """Return (start, end) of the first non-1xx response head in buf, or None if incomplete."""
    pos = 0
    while True:
        e = buf.find(b"\r\n\r\n", pos)
        if e < 0:
            return None
        if buf[pos + 9:pos + 10] != b"1":
            return pos, e + 4
        pos = e + 4


class Upstream(asyncio.Protocol):
    """One connection to a backend, reused across requests of any client through the idle list."""

    __slots__ = ("bal", "rec", "backend", "transport", "parser", "client", "special", "hold", "nbytes", "done",
                 "status", "keep", "reused", "rpaused", "head_only", "cookie", "lost")

    def __init__(self, bal: Balancer, backend: Backend) -> None:
        self.bal = bal
        self.rec = bal.records
        self.backend = backend
        self.transport: Any = None
        self.parser = httptools.HttpResponseParser(self)
        self.client: Client | None = None
        self.special: Any = None  # truthy when the response needs the slow path (cookie splice, HEAD)
        self.hold = b""
        self.nbytes = 0
        self.done = False
        self.status = 0
        self.keep = False
        self.reused = False
        self.rpaused = False
        self.head_only = False
        self.cookie = b""
        self.lost = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def on_message_complete(self) -> None:
        s = self.parser.get_status_code()
        if s >= 200:  # a 1xx is an interim response: the real one follows
            self.status = s
            self.keep = self.parser.should_keep_alive()
            self.done = True

    def data_received(self, data: bytes) -> None:
        c = self.client
        if c is None:  # bytes nobody asked for: this connection is out of step
            self.transport.close()
            return
        if self.special:
            data = self._special(data, c)  # type: ignore[assignment]
            if data is None:
                return
        self.nbytes += len(data)
        try:
            self.parser.feed_data(data)
        except (HttpParserError, HttpParserUpgrade) as exc:
            return self._broken(c, f"invalid response from backend: {exc}")
        c.transport.write(data)
        if self.done:
            self._finish(c)

    def _finish(self, c: Client) -> None:
        self.client = None
        be = self.backend
        be.active -= 1
        t = _now()
        rec = self.rec
        rec.ring.append((c.t0, c.ip, be.id, c.line, self.status, t - c.t0, self.nbytes))  # type: ignore[arg-type]
        rec.total += 1
        if self.keep and c.keep and be.state == "ready" and not self.lost:  # both sides agreed to keep it open
            if self.rpaused:
                self.rpaused = False
                self.transport.resume_reading()
            self.reused = True
            be.idle.append(self)
        else:
            self.transport.close()
        c.up = None
        c.busy = False
        c.t_idle = t
        if not c.keep or c.body_left or c.chunks is not None or self.bal.closing:
            c.transport.close()
        elif c.rpause:
            c.resume_pipeline()

    def _special(self, data: bytes, c: Client) -> bytes | None:
        """Splice Set-Cookie into the final response head and/or end a HEAD response at its head."""
        buf = self.hold + data
        fh = final_head(buf)
        if fh is None:
            if len(buf) > 65536:
                self._broken(c, "response head too large")
            else:
                self.hold = buf
            return None
        self.hold = b""
        start, end = fh
        if self.cookie:
            at = buf.find(b"\r\n", start) + 2
            buf = buf[:at] + self.cookie + buf[at:]
            end += len(self.cookie)
        self.special = None
        if not self.head_only:
            return buf
        head = buf[start:end]
        self.nbytes += end
        self.status = int(head[9:12]) if head[9:12].isdigit() else 0
        # A backend that wrongly sends a body after a HEAD response may send it in a later segment,
        # where it would pass for the next client's response: never reuse a connection after HEAD.
        self.lost = True
        c.transport.write(buf[:end])
        self._finish(c)
        return None

    def _broken(self, c: Client, why: str) -> None:
        """The backend broke the exchange: 502 if the client has seen nothing yet, else close it."""
        self.lost = True
        self.client = None
        be = self.backend
        be.active -= 1
        be.errors += 1
        self.transport.close()
        log.warning("backend %s: %s", be.id, why)
        c.fail_request(self, 502, why)

    def pause_writing(self) -> None:
        c = self.client
        if c is not None:
            c.pause(_UPLOAD)

    def resume_writing(self) -> None:
        c = self.client
        if c is not None:
            c.unpause(_UPLOAD)

    def eof_received(self) -> bool | None:
        return None  # close our side too; connection_lost does the accounting

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        be = self.backend
        c = self.client
        if c is None:
            try:
                be.idle.remove(self)
            except ValueError:
                pass
            return
        self.client = None
        be.active -= 1
        if self.nbytes == 0 and self.reused and c.retryable():
            log.info("backend %s closed an idle keep-alive connection as we used it: retrying", be.id)
            c.up = None
            c.dispatch(retried=True, fresh=True)
            return
        be.errors += 1
        c.fail_request(self, 502, f"backend {be.id} closed the connection before the response was complete")


class Client(asyncio.Protocol):
    """One client connection: parse, validate and route each request, then relay its response."""

    __slots__ = ("bal", "pool", "transport", "parser", "ip", "xff", "buf", "up", "busy", "done", "keep", "t0",
                 "t_head", "t_idle", "line", "body_left", "chunks", "rpause", "wpaused", "pending", "req",
                 "retried", "key", "sticky", "closed")

    def __init__(self, bal: Balancer) -> None:
        self.bal = bal
        self.pool = bal.pool
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None
        self.ip = ""
        self.xff = b""
        self.buf = b""
        self.up: Upstream | None = None
        self.busy = False
        self.done = 0
        self.keep = True
        self.t0 = self.t_head = self.t_idle = _now()
        self.line: bytes | None = None
        self.body_left = 0
        self.chunks: ChunkTracker | None = None
        self.rpause = 0
        self.wpaused = False
        self.pending: list[bytes] = []
        self.req: bytes | None = None
        self.retried = False
        self.key = ""
        self.sticky: str | None = None
        self.closed = False

    # --- connection lifecycle -------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        bal = self.bal
        bal.conns.add(self)
        peer = transport.get_extra_info("peername")
        self.ip = peer[0] if peer else ""
        self.xff = b"X-Forwarded-For: " + self.ip.encode() + b"\r\n\r\n"  # also ends the head

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.bal.conns.discard(self)
        up = self.up
        self.up = None
        if up is not None and up.client is self:
            up.client = None
            up.backend.active -= 1
            up.lost = True
            self._record(up.backend.id, 499, up.nbytes)
            if up.transport is not None:
                up.transport.close()

    def eof_received(self) -> bool | None:
        if self.busy:
            self.keep = False
            return True  # half-closed: still send the response, then close
        return None

    def pause_writing(self) -> None:
        self.wpaused = True
        up = self.up
        if up is not None and up.transport is not None and not up.rpaused:
            up.rpaused = True
            up.transport.pause_reading()

    def resume_writing(self) -> None:
        self.wpaused = False
        up = self.up
        if up is not None and up.rpaused:
            up.rpaused = False
            up.transport.resume_reading()

    def on_message_complete(self) -> None:
        self.done += 1
        # llhttp forgets `Connection: close` once the message is complete: ask it now
        self.keep = self.parser.should_keep_alive()

    # --- requests ----------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.busy:
            return self._more(data)
        if self.buf:
            data = self.buf + data
            self.buf = b""
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return self._partial(data)
        bal = self.bal
        if end + 4 == len(data) and not bal.slow:
            low = data.lower()
            n = len(data)
            if (b"\r\ncontent-length" not in low and b"\r\ntransfer-encoding" not in low
                    and n <= bal.max_header_bytes and (n <= bal.min_bytes_over_max_lines
                                                       or data.count(b"\r\n") <= bal.max_lines)):
                self.done = 0
                try:
                    self.parser.feed_data(data)
                except HttpParserError as exc:
                    return self.reject(400, f"malformed request: {exc}")
                except HttpParserUpgrade:
                    return self.reject(501, "protocol upgrades are not supported")
                if self.done != 1:
                    return self.reject(400, "request framing is ambiguous")
                el = self.pool.eligible
                if not el:
                    return self.reject(503, "no backend available")
                self.line = data[:data.find(b"\r\n")]
                self.req = out = data[:end + 2] + self.xff
                self.retried = False
                be = bal.policy.pick(el, self.ip)
                idle = be.idle
                if not idle or self.wpaused or data[0] == 72:  # no idle connection, backpressure, HEAD/HTTP
                    return self.send(be, out, b"", data[:5] == b"HEAD ")
                # inlined send() over an idle keep-alive connection: the common case
                up = idle.pop()
                self.busy = True
                self.t0 = _now()
                be.active += 1
                be.requests += 1
                up.client = self
                up.nbytes = 0
                up.done = False
                up.special = None
                self.up = up
                up.transport.write(out)
                return None
        return self._request(data, end)

    def _partial(self, data: bytes) -> None:
        if not data:
            return
        if len(data) > self.bal.max_header_bytes:
            return self.reject(431, "request head too large")
        if self.line is not None and self.t_head < self.t_idle:
            self.t_head = _now()  # the first piece of the next head on a keep-alive connection
        self.buf = data

    def _request(self, data: bytes, end: int) -> None:
        """The general path: bodies, sticky cookies, trusted X-Forwarded-For, pipelining."""
        bal = self.bal
        hl = end + 4
        head, rest = data[:hl], data[hl:]
        try:
            if hl > bal.max_header_bytes:
                raise BadRequest(431, "request head too large")
            if head.count(b"\r\n") > bal.max_lines:
                raise BadRequest(431, "too many request headers")
            low = head.lower()
            cl, chunked = self._framing(low, head)
            self.done = 0
            self.parser.feed_data(head)
            if self.done != (0 if cl > 0 or chunked else 1):
                raise BadRequest(400, "request framing is ambiguous")
            self.line = head[:head.find(b"\r\n")]
            self.body_left = cl if cl > 0 else 0
            self.chunks = ChunkTracker() if chunked else None
            head = self._route_headers(head, low)
            part, rest = self.take_body(rest) if (cl > 0 or chunked) else (b"", rest)
        except BadRequest as exc:
            return self.reject(exc.status, str(exc))
        except HttpParserError as exc:
            return self.reject(400, f"malformed request: {exc}")
        except HttpParserUpgrade:
            return self.reject(501, "protocol upgrades are not supported")
        if rest:
            self.buf = rest
            self.pause(_PIPELINE)
        self.retried = False
        if cl > 0 or chunked:
            self.req = None
            self.t_head = _now()  # body inactivity is timed from here
            self.dispatch(first=head[:-2] + self.xff + part)
        else:
            self.req = head[:-2] + self.xff
            self.dispatch(first=self.req)

    def _framing(self, low: bytes, head: bytes) -> tuple[int, bool]:
        """Return (content length or -1, chunked) by our own reading of the head; BadRequest if ambiguous."""
        te = header_spans(low, b"transfer-encoding")
        cls = header_spans(low, b"content-length")
        if b"\r\ntransfer-encoding" in low and not te or b"\r\ncontent-length" in low and not cls:
            raise BadRequest(400, "malformed framing header")
        if te and cls:
            raise BadRequest(400, "both Content-Length and Transfer-Encoding")
        if te:
            if len(te) != 1 or low[te[0][0]:te[0][1]].strip(b" \t") != b"chunked":
                raise BadRequest(400, "unsupported or obfuscated Transfer-Encoding")
            return -1, True
        if cls:
            values = {low[s:e].strip(b" \t") for s, e in cls}
            if len(values) != 1:
                raise BadRequest(400, "conflicting Content-Length headers")
            v = values.pop()
            if not v.isdigit() or len(v) > 18:
                raise BadRequest(400, "malformed Content-Length")
            return int(v), False
        return -1, False

    def _route_headers(self, head: bytes, low: bytes) -> bytes:
        """Read the routing key and sticky cookie; return the head to forward (our cookie removed)."""
        bal = self.bal
        self.key = self.ip
        self.sticky = None
        if bal.opts.trust_forwarded_for:
            spans = header_spans(low, b"x-forwarded-for")
            if spans:
                s, e = spans[0]
                first = head[s:e].split(b",", 1)[0].strip()
                if first:
                    self.key = first.decode("latin-1")
        if bal.policy.sticky:
            spans = header_spans(low, b"cookie")
            for s, e in reversed(spans):
                pairs = [p.strip() for p in head[s:e].split(b";")]
                ours = [p for p in pairs if p.partition(b"=")[0] == COOKIE_NAME.encode()]
                if not ours:
                    continue
                self.sticky = ours[-1].partition(b"=")[2].decode("latin-1")
                kept = b"; ".join(p for p in pairs if p and p.partition(b"=")[0] != COOKIE_NAME.encode())
                line_start = s - len(b"cookie:") - 2
                replacement = b"\r\nCookie: " + kept if kept else b""
                head = head[:line_start] + replacement + head[e:]
        return head

    def take_body(self, data: bytes) -> tuple[bytes, bytes]:
        """Split data into (this request's body bytes, what follows); llhttp must agree on the end."""
        if self.body_left:
            n = self.body_left
            part, rest = (data, b"") if len(data) <= n else (data[:n], data[n:])
            self.body_left = left = n - len(part)
            end = not left
        elif self.chunks is not None:
            try:
                e = self.chunks.feed(data)
            except ValueError as exc:
                raise BadRequest(400, str(exc)) from None
            if e < 0:
                part, rest, end = data, b"", False
            else:
                part, rest, end = data[:e], data[e:], True
                self.chunks = None
        else:
            return b"", data
        try:
            self.parser.feed_data(part)
        except HttpParserError as exc:
            raise BadRequest(400, f"malformed request body: {exc}") from None
        if self.done != end:
            raise BadRequest(400, "request body framing is ambiguous")
        return part, rest

    def _more(self, data: bytes) -> None:
        """Bytes while a request is in flight: more of its body, or the next (pipelined) request."""
        if self.body_left or self.chunks is not None:
            try:
                part, rest = self.take_body(data)
            except BadRequest as exc:
                return self.reject(exc.status, str(exc))
            self.t_head = _now()
            up = self.up
            if up is None or up.transport is None:
                self.pending.append(part)
            else:
                up.transport.write(part)
            if not rest:
                return
            data = rest
        self.buf += data
        self.pause(_PIPELINE)

    def resume_pipeline(self) -> None:
        """After a response: take up the request that arrived while the previous one ran."""
        self.unpause(_PIPELINE)
        if self.buf and not self.closed:
            self.data_received(b"")

    # --- routing -----------------------------------------------------------------------------
    def dispatch(self, first: bytes | None = None, retried: bool = False, fresh: bool = False) -> None:
        """Pick a backend for the current request and send it; on a retry, resend the kept bytes."""
        bal = self.bal
        if retried:
            first = self.req
            self.retried = True
        assert first is not None
        el = self.pool.eligible
        if not el:
            return self.reject(503, "no backend available")
        policy = bal.policy
        cookie = b""
        if policy.sticky:
            be, must_set = policy.pick_sticky(el, self.key, None if retried else self.sticky)  # type: ignore[attr-defined]
            if must_set:
                cookie = b"Set-Cookie: " + COOKIE_NAME.encode() + b"=" + be.id.encode() + b"; path=/\r\n"
        else:
            be = policy.pick(el, self.key if bal.slow else self.ip)
        self.send(be, first, cookie, self.line is not None and self.line[:5] == b"HEAD ", fresh)

    def send(self, be: Backend, first: bytes, cookie: bytes, head_only: bool, fresh: bool = False) -> None:
        """Send the request's first bytes to be over an idle connection, or connect a new one."""
        self.busy = True
        if not self.retried:
            self.t0 = _now()
        be.active += 1
        be.requests += 1
        idle = be.idle
        if idle and not fresh:
            up = idle.pop()
        else:
            up = Upstream(self.bal, be)
        up.client = self
        up.nbytes = 0
        up.done = False
        up.status = 0
        up.cookie = cookie
        up.head_only = head_only
        up.special = cookie or head_only
        self.up = up
        if up.transport is None:
            self.pending = [first]
            self.pause(_CONNECTING)
            asyncio.get_running_loop().create_task(self._connect(up))
            return
        up.transport.write(first)
        if self.wpaused:
            up.rpaused = True
            up.transport.pause_reading()

    async def _connect(self, up: Upstream) -> None:
        be = up.backend
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.bal.opts.connect_timeout_s):
                await loop.create_connection(lambda: up, be.host, be.port)
        except (OSError, TimeoutError) as exc:
            if up.client is not self:
                return
            up.client = None
            be.active -= 1
            self.up = None
            log.warning("backend %s: connect failed: %s", be.id, exc)
            self.pool.mark_failed(be)
            if not self.retried and self.pool.eligible:
                self.retried = True
                self.req = b"".join(self.pending)
                self.unpause(_CONNECTING)
                return self.dispatch(retried=True)
            self.unpause(_CONNECTING)
            self._record(be.id, 502, 0)
            self.reject(502, f"cannot connect to backend {be.id}", record=False)
            return
        if up.client is not self or self.closed:
            up.transport.close()
            return
        data = b"".join(self.pending)
        self.pending = []
        up.transport.write(data)
        if self.wpaused:
            up.rpaused = True
            up.transport.pause_reading()
        self.unpause(_CONNECTING)

    def retryable(self) -> bool:
        """May this request be sent again (nothing of it reached a backend that answered)?"""
        return (not self.retried and self.req is not None and self.line is not None
                and self.line.split(b" ", 1)[0] in IDEMPOTENT and not self.closed)

    # --- failures and bookkeeping -------------------------------------------------------------
    def pause(self, bit: int) -> None:
        if not self.rpause and not self.closed:
            self.transport.pause_reading()
        self.rpause |= bit

    def unpause(self, bit: int) -> None:
        if self.rpause & bit:
            self.rpause &= ~bit
            if not self.rpause and not self.closed:
                self.transport.resume_reading()

    def _record(self, backend_id: str, status: int, nbytes: int) -> None:
        rec = self.bal.records
        rec.ring.append((self.t0, self.ip, backend_id, self.line or b"", status, _now() - self.t0, nbytes))
        rec.total += 1

    def fail_request(self, up: Upstream, status: int, why: str) -> None:
        """The backend failed this request: answer with status if nothing was relayed yet, else close."""
        self.up = None
        self.busy = False
        if up.nbytes == 0:
            self._record(up.backend.id, status, 0)
            self.reject(status, why, record=False)
        else:
            self._record(up.backend.id, up.status or 0, up.nbytes)
            self.transport.close()

    def reject(self, status: int, why: str, record: bool = True) -> None:
        """Answer with a JSON error and close: the connection's framing can no longer be trusted."""
        log.info("client %s: %d %s", self.ip, status, why)
        up = self.up
        if up is not None:
            self.up = None
            if up.client is self:
                up.client = None
                up.backend.active -= 1
                up.lost = True
                if up.transport is not None:
                    up.transport.close()
                if up.nbytes:  # the client already has part of a response: just close
                    self.transport.close()
                    return
        if record:
            self.t0 = self.t0 if self.busy else _now()
            self._record("", status, 0)
        self.busy = True  # no further requests on this connection
        if not self.closed:
            self.transport.write(error_response(status, why))
            self.transport.close()


class Refused(asyncio.Protocol):
    """A connection over the limit: answer 503, then close without resetting what the client sent."""

    LINGER_S = 1.0

    def connection_made(self, transport: Any) -> None:
        transport.write(error_response(503, "too many connections"))
        transport.write_eof()
        asyncio.get_running_loop().call_later(self.LINGER_S, transport.close)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        pass  # read and drop: closing with unread data would reset the connection and lose the 503

    def eof_received(self) -> bool | None:
        return None


class Balancer:
    """The proxy's state: options, pool, policy, records, open client connections."""

    def __init__(self, opts: BalancerOptions) -> None:
        self.opts = opts
        self.pool = Pool(opts.backends, opts.health_interval_s)
        self.policy = make_policy(opts.policy, opts.hash_balance_factor)
        self.records = RecordRing(opts.records_max)
        self.conns: set[Client] = set()
        self.closing = False
        self.max_header_bytes = opts.max_header_bytes
        self.max_lines = opts.max_headers + 2  # request line + headers + the empty line
        self.min_bytes_over_max_lines = 4 * self.max_lines  # a shorter head cannot have too many lines
        self.slow = self.policy.sticky or opts.trust_forwarded_for
        self.server: asyncio.AbstractServer | None = None
        self.admin: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task[None] | None = None

    def set_policy(self, name: str) -> None:
        """Switch the policy live; requests in flight keep their backend."""
        self.policy = make_policy(name, self.opts.hash_balance_factor)
        self.slow = self.policy.sticky or self.opts.trust_forwarded_for
        log.info("policy is now %s", name)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self._protocol, self.opts.host, self.opts.port,
                                               backlog=2048, reuse_address=True)
        if self.opts.admin_port is not None:
            from statelab.balancer.admin import start_admin

            self.admin = await start_admin(self, "127.0.0.1", self.opts.admin_port)
        self.pool.start_checks()
        self._sweeper = loop.create_task(self._sweep())
        log.info("balancer listening on %s:%d (%s, policy %s, %d backends)", self.opts.host, self.opts.port,
                 type(loop).__module__, self.policy.name, len(self.pool.backends))

    def _protocol(self) -> asyncio.Protocol:
        if len(self.conns) >= self.opts.max_connections or self.closing:
            return Refused()
        return Client(self)

    async def _sweep(self) -> None:
        """Enforce the header, idle and backend timeouts without a timer per request."""
        o = self.opts
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            now = _now()
            for c in list(self.conns):
                if c.busy:
                    up = c.up
                    if (c.body_left or c.chunks is not None) and not c.rpause and now - c.t_head > o.body_timeout_s:
                        c.reject(408, "request body stalled")
                    elif (up is not None and up.nbytes == 0 and not c.body_left and c.chunks is None
                          and now - max(c.t0, c.t_head) > o.backend_timeout_s):  # from the last request byte
                        up.backend.errors += 1
                        c.reject(504, f"backend {up.backend.id} did not answer in {o.backend_timeout_s:g} s")
                elif c.buf or c.line is None:
                    if now - c.t_head > o.header_timeout_s:
                        c.reject(408, "request head not received in time")
                elif now - c.t_idle > o.idle_timeout_s:
                    c.transport.close()

    async def shutdown(self) -> None:
        """Stop accepting, let requests in flight finish (bounded), then close everything."""
        self.closing = True
        if self.server is not None:
            self.server.close()
        if self.admin is not None:
            self.admin.close()
        self.pool.stop_checks()
        for c in list(self.conns):
            if not c.busy:
                c.transport.close()
        deadline = _now() + self.opts.shutdown_timeout_s
        while any(c.busy for c in self.conns) and _now() < deadline:
            await asyncio.sleep(0.02)
        for c in list(self.conns):
            c.transport.close()
        for b in self.pool.backends.values():
            b.close_idle()
        if self._sweeper is not None:
            self._sweeper.cancel()
        await asyncio.sleep(0)
        log.info("balancer stopped")


async def run(opts: BalancerOptions) -> None:
    """Run a balancer until SIGTERM or SIGINT, then shut it down gracefully."""
    loop = asyncio.get_running_loop()
    bal = Balancer(opts)
    await bal.start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await bal.shutdown()


def serve_forever(opts: BalancerOptions) -> None:
    """Run the balancer in this process (on uvloop unless opts.use_uvloop is false) until signalled."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    make_policy(opts.policy)  # fail before binding anything on a bad name
    loop_factory = None
    if opts.use_uvloop:
        try:
            import uvloop

            loop_factory = uvloop.new_event_loop
        except ImportError:
            log.warning("uvloop is not installed: using plain asyncio")
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(run(opts))

