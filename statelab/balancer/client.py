"""The client side: one protocol per client connection that checks each request and starts its exchange.

Request heads go to the backend as received with `X-Forwarded-For` spliced in. llhttp validates
every byte, and the balancer also reads the framing itself (`framing`): a disagreement is a 400.
One request at a time: pipelined requests wait in `buf` until the exchange before them ends.
The common request (a bodiless HTTP/1.1 head in one segment, no Connection header, an idle
backend connection at hand) runs an inlined fast path of about a dozen calls.

When the connection must end after an answer (the client asked for it, our own error, an answer
that came before the whole body), the client is not cut off: the connection lingers, reading
and dropping what the client still sends within bounds, so that it reads the answer instead of
a reset. A small rest of an early-answered body is dropped the same way and the connection goes on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import httptools
from httptools import HttpParserError, HttpParserUpgrade

from statelab.balancer.exchange import Exchange, record_answer
from statelab.balancer.framing import (BadRequest, ChunkTracker, body_framing, check_head, check_host, error_response,
                                       is_idempotent, routing, says_keep_alive, sticky_cookie)
from statelab.balancer.pool import Backend
from statelab.balancer.upstream import Upstream

if TYPE_CHECKING:
    from statelab.balancer.server import Balancer

log = logging.getLogger(__name__)

_now = time.monotonic
# reasons the client side is paused for reading (a bit mask)
_PIPELINE, _CONNECTING, _UPLOAD = 1, 2, 4
# what happens to bytes a client sends when no exchange takes them (`Client.dropping`)
DRAIN, LINGER = 1, 2  # drop the rest of an early-answered body, then go on; drop all, then close
# A request with a body is never sent over a backend connection idle for longer than this: the
# backend may be closing it (gunicorn's keep-alive timeout is 2 s by default), and such a request
# cannot be retried. Bodiless requests take any idle connection and are retried on a fresh one.
UNSAFE_REUSE_MAX_IDLE_S = 1.0


class Client(asyncio.Protocol):
    """One client connection: parse, check and route each request, relay its response, end gracefully."""

    __slots__ = ("bal", "pool", "records", "transport", "heads", "parser", "ip", "xff", "buf", "ex", "keep", "eof",
                 "closed", "done", "body_left", "chunks", "rpause", "wpaused", "dropping", "dropped", "t_head",
                 "t_idle", "t_linger")

    def __init__(self, bal: Balancer) -> None:
        self.bal = bal
        self.pool = bal.pool
        self.records = bal.records
        self.transport: Any = None
        # Two llhttp parsers, each fed whole requests: `heads` checks the fast path's bodiless heads
        # without a Python callback; `parser` (made on first use) reports where bodies end.
        self.heads = httptools.HttpRequestParser(None)
        self.parser: Any = None
        self.ip = ""
        self.xff = b""
        self.buf = b""  # received bytes not yet taken: a partial head, or pipelined requests
        self.ex: Exchange | None = None  # the exchange in flight
        self.keep = True  # the current request lets the connection stay open
        self.eof = False  # the client has finished sending (half-close)
        self.closed = False
        self.done = 0  # requests `parser` saw complete since the last head
        self.body_left = 0  # Content-Length bytes of the current request still to come
        self.chunks: ChunkTracker | None = None  # the current chunked request body, until its end
        self.rpause = 0
        self.wpaused = False
        self.dropping = 0  # DRAIN or LINGER
        self.dropped = 0
        self.t_head = self.t_idle = self.t_linger = 0.0  # last head or body progress; last response end

    # --- connection lifecycle -------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.bal.conns.add(self)
        peer = transport.get_extra_info("peername")
        self.ip = peer[0] if peer else ""
        self.xff = b"X-Forwarded-For: " + self.ip.encode() + b"\r\n\r\n"  # also ends the head
        self.t_head = _now()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.bal.conns.discard(self)
        ex = self.ex
        if ex is not None:
            ex.abort(499)  # the client went away

    def eof_received(self) -> bool | None:
        self.eof = True
        if self.ex is None:
            return None  # nothing more to answer (a partial head never completes): close
        if self.body_left or self.chunks is not None:
            self.reject(400, "the client ended the connection before the request body was complete")
            return None
        return True  # half-closed: still send the response (and those of requests already received), then close

    def pause_writing(self) -> None:
        self.wpaused = True
        ex = self.ex
        if ex is not None and ex.up.transport is not None and not ex.up.rpaused:
            ex.up.rpaused = True
            ex.up.transport.pause_reading()

    def resume_writing(self) -> None:
        self.wpaused = False
        ex = self.ex
        if ex is not None and ex.up.rpaused:
            ex.up.rpaused = False
            ex.up.transport.resume_reading()

    def on_message_complete(self) -> None:  # called by `parser`
        self.done += 1
        # llhttp forgets `Connection: close` once the message is complete: ask it now
        self.keep = self.parser.should_keep_alive()

    # --- requests ---------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.ex is not None or self.dropping:
            return self._more(data)
        if self.buf:
            data = self.buf + data
            self.buf = b""
        end = data.find(b"\r\n\r\n")
        bal = self.bal
        if end >= 0 and not data[end + 4:] and not bal.slow:  # exactly one complete head
            # Searched as str: `in` on bytes first tries its operand as an integer, and raising and
            # clearing that TypeError makes it 3-4x slower than on str (or than a find() call).
            low = data.decode("latin-1").lower()
            i = data.find(b"\r\n")
            n = end + 4
            if ("\r\ncontent-length" not in low and "\r\ntransfer-encoding" not in low
                    and data[i - 1] == 49  # "HTTP/1.1": llhttp accepts no other version ending in 1
                    and ("\r\nconnection:" not in low or says_keep_alive(low))
                    and low.count("\r\nhost:") == 1 and n <= bal.max_header_bytes
                    and (n <= bal.min_bytes_over_max_lines or data.count(b"\r\n") <= bal.max_lines)):
                try:
                    self.heads.feed_data(data)
                except HttpParserError as exc:
                    return self.reject(400, f"malformed request: {exc}", data[:i])
                except HttpParserUpgrade:
                    return self.reject(501, "protocol upgrades are not supported", data[:i])
                el = self.pool.eligible
                if not el:
                    return self.reject(503, "no backend available", data[:i])
                self.keep = True
                be = bal.policy.pick(el, self.ip)
                out = data[:end + 2] + self.xff
                idle = be.idle
                if not idle or self.wpaused or data[0] != 71:  # no idle connection, backpressure, not a GET (G)
                    return self._start(be, data[:i], out, out, head_only=data[:5] == b"HEAD ")
                # the inlined start of a GET over an idle keep-alive connection: the common case
                up = idle.pop()
                Exchange(self, be, up, data[:i], out)
                up.transport.write(out)
                return None
        return self._request(data, end)

    def _request(self, data: bytes, end: int) -> None:
        """The general path: partial heads, bodies, HTTP/1.0, Connection headers, sticky routing, pipelining."""
        if end < 0:
            return self._partial(data)
        bal = self.bal
        hl = end + 4
        head, rest = data[:hl], data[hl:]
        line = head[:head.find(b"\r\n")]
        try:
            check_head(head, bal.max_header_bytes, bal.max_lines)
            low = head.lower()
            check_host(low, line)
            cl, chunked = body_framing(low, head)
            has_body = cl > 0 or chunked
            parser = self.parser
            if parser is None:
                parser = self.parser = httptools.HttpRequestParser(self)
            self.done = 0
            parser.feed_data(head)
            if self.done != (0 if has_body else 1):
                raise BadRequest(400, "request framing is ambiguous")
            if has_body:
                self.keep = parser.should_keep_alive()  # (without a body, on_message_complete has set it)
                self.body_left = cl if cl > 0 else 0
                self.chunks = ChunkTracker() if chunked else None
                part, rest = self.take_body(rest)
            key, sticky, head = routing(head, low, self.ip, bal.opts.trust_forwarded_for, bal.policy.sticky)
        except BadRequest as exc:
            return self.reject(exc.status, str(exc), line)
        except HttpParserError as exc:
            return self.reject(400, f"malformed request: {exc}", line)
        except HttpParserUpgrade:
            return self.reject(501, "protocol upgrades are not supported", line)
        if rest:
            self.buf = rest
            self.pause(_PIPELINE)
        el = self.pool.eligible
        if not el:
            return self.reject(503, "no backend available", line)
        policy = bal.policy
        cookie = b""
        if policy.sticky:
            be, must_set = policy.pick_sticky(el, key, sticky)  # type: ignore[attr-defined]
            if must_set:
                cookie = sticky_cookie(be.id)
        else:
            be = policy.pick(el, key)
        out = head[:-2] + self.xff
        if has_body:
            self.t_head = _now()  # body inactivity is timed from here
            return self._start(be, line, out + part, None, cookie=cookie, has_body=True)
        return self._start(be, line, out, out, head_only=line[:5] == b"HEAD ", cookie=cookie)

    def _partial(self, data: bytes) -> None:
        """An incomplete head: keep it until the rest arrives (the sweep times it out)."""
        if not data:
            return
        if self.eof:  # the rest will never come
            self.transport.close()
            return
        if len(data) > self.bal.max_header_bytes:
            return self.reject(431, "request head too large")
        if self.t_idle and self.t_head < self.t_idle:
            self.t_head = _now()  # the first piece of the next head on a keep-alive connection
        self.buf = data

    def take_body(self, data: bytes) -> tuple[bytes, bytes]:
        """Split data into (the current request's body bytes, what follows); llhttp must agree on the end."""
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
        """Bytes while an exchange runs (its body, or the next request), or while dropping."""
        if self.dropping == LINGER:
            self.dropped += len(data)
            self.t_head = _now()
            if self.dropped > self.bal.opts.linger_max_bytes:
                self.transport.close()
            return
        if self.body_left or self.chunks is not None:
            try:
                part, data = self.take_body(data)
            except BadRequest as exc:
                return self.reject(exc.status, str(exc))
            self.t_head = _now()
            ex = self.ex
            if ex is not None:
                ex.up.send(part)
            elif not self.body_left and self.chunks is None:  # the early-answered body is over: go on
                self.dropping = 0
                self.buf = data
                return self._next()
            if not data:
                return
        self.buf += data
        self.pause(_PIPELINE)

    # --- routing ----------------------------------------------------------------------------------
    def _start(self, be: Backend, line: bytes, first: bytes, req: bytes | None, head_only: bool = False,
               cookie: bytes = b"", has_body: bool = False) -> None:
        """Start the exchange of the current request on be: over an idle connection, or a new one."""
        up = self._upstream(be, safe=req is not None and is_idempotent(line))
        ex = Exchange(self, be, up, line, req)
        ex.has_body = has_body
        ex.head_only = head_only
        ex.cookie = cookie
        up.special = has_body or head_only or bool(cookie)
        self._send(ex, up, first)

    @staticmethod
    def _upstream(be: Backend, safe: bool) -> Upstream:
        """Return an idle connection to be, or a new one; a request that cannot be retried (safe is false)
        takes only a connection idle for less than UNSAFE_REUSE_MAX_IDLE_S."""
        idle = be.idle
        if idle and (safe or _now() - idle[-1].t_idle < UNSAFE_REUSE_MAX_IDLE_S):
            return idle.pop()
        return Upstream(be)

    def _send(self, ex: Exchange, up: Upstream, first: bytes) -> None:
        if up.transport is None:
            up.pending = [first]
            self.pause(_CONNECTING)
            asyncio.get_running_loop().create_task(self._connect(ex, up))
            return
        up.transport.write(first)
        if self.wpaused:
            up.rpaused = True
            up.transport.pause_reading()

    async def _connect(self, ex: Exchange, up: Upstream) -> None:
        be = up.backend
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.bal.opts.connect_timeout_s):
                await loop.create_connection(lambda: up, be.host, be.port)
        except (OSError, TimeoutError) as exc:
            if up.ex is not ex:
                return
            self.unpause(_CONNECTING)
            log.warning("backend %s: connect failed: %s", be.id, exc)
            self.pool.mark_failed(be)  # counts the error
            if not ex.retried and self.pool.eligible and not self.closed:
                ex.req = b"".join(up.pending)  # nothing of it reached a backend: send it all elsewhere
                return self.retry(ex)
            ex.fail(502, f"cannot connect to backend {be.id}", count_error=False)
            return
        if up.ex is not ex or self.closed:
            up.lost = True
            up.transport.close()
            return
        data = b"".join(up.pending)
        up.pending = []
        up.transport.write(data)
        if self.wpaused:
            up.rpaused = True
            up.transport.pause_reading()
        self.unpause(_CONNECTING)

    def retryable(self, ex: Exchange) -> bool:
        """May this exchange be sent again (nothing of it reached a backend that answered)?"""
        return not ex.retried and ex.req is not None and is_idempotent(ex.line) and not self.closed

    def retry(self, ex: Exchange, stale: Backend | None = None) -> None:
        """Send the kept request again: over a new connection to the same backend after a stale keep-alive
        connection, else to the backend the policy picks now (the one that failed is out of rotation)."""
        assert ex.req is not None
        if stale is not None:
            be = stale
        else:
            el = self.pool.eligible
            if not el:
                return ex.fail(503, "no backend available", count_error=False)
            policy = self.bal.policy
            if policy.sticky:
                be, _ = policy.pick_sticky(el, self.ip, None)  # type: ignore[attr-defined]
                ex.cookie = sticky_cookie(be.id)
            else:
                be = policy.pick(el, self.ip)
        up = Upstream(be) if stale is not None else self._upstream(be, not ex.has_body and is_idempotent(ex.line))
        ex.move(be, up)
        self._send(ex, up, ex.req)

    # --- after a response -------------------------------------------------------------------------
    def after_exchange(self, ex: Exchange) -> None:
        """Go on after a response when anything is unusual: an early answer, a close, pipelined requests."""
        if self.closed:
            return
        self.unpause(_UPLOAD | _CONNECTING)
        if self.body_left or self.chunks is not None:  # the backend answered before the whole body arrived
            if ex.closing or not self.keep or self.bal.closing:
                return self.linger()
            self.dropping = DRAIN  # read and drop the small rest, then take the next request
            self.t_head = _now()
            return
        if not self.keep or ex.closing or self.bal.closing:
            return self.linger()
        self._next()

    def _next(self) -> None:
        """Take up the request that arrived while the last one ran, or wait for the next one."""
        self.unpause(_PIPELINE)
        if self.eof and not self.buf:
            self.transport.close()
        elif self.buf and not self.closed:
            self.data_received(b"")

    def linger(self) -> None:
        """Close after the answer without resetting the connection: drop what the client still sends, within bounds."""
        if self.closed or self.dropping == LINGER:
            return
        self.dropping = LINGER
        self.buf = b""
        self.body_left = 0
        self.chunks = None
        self.t_linger = self.t_head = _now()
        if self.eof:  # the client has sent everything: nothing to drain
            self.transport.close()
            return
        if self.rpause:
            self.rpause = 0
            self.transport.resume_reading()
        try:
            self.transport.write_eof()  # the client reads our answer, then the end
        except (OSError, RuntimeError):
            self.transport.close()

    # --- our own answers, flow control ---------------------------------------------------------------
    def reject(self, status: int, why: str, line: bytes = b"") -> None:
        """Answer with our JSON error and end the connection: its framing can no longer be trusted."""
        log.info("client %s: %d %s", self.ip, status, why)
        ex = self.ex
        if ex is not None:
            ex.abort(status)
            if ex.nbytes:  # the client already has part of a response: just cut
                self.transport.close()
                return
        else:
            record_answer(self.records, self.ip, line, status)
        self.answer(status, why)

    def answer(self, status: int, why: str) -> None:
        """Write the balancer's own error answer, then linger and close."""
        if self.closed or self.dropping == LINGER:
            return
        self.transport.write(error_response(status, why))
        self.linger()

    def pause(self, bit: int) -> None:
        if not self.rpause and not self.closed:
            self.transport.pause_reading()
        self.rpause |= bit

    def unpause(self, bits: int) -> None:
        if self.rpause & bits:
            self.rpause &= ~bits
            if not self.rpause and not self.closed:
                self.transport.resume_reading()

    def pause_upload(self) -> None:
        """The backend is not taking the body as fast as it comes: stop reading the client."""
        self.pause(_UPLOAD)

    def resume_upload(self) -> None:
        self.unpause(_UPLOAD)
