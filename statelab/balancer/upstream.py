"""The backend side: one protocol per backend connection, relaying responses as received.

A connection serves one exchange at a time and waits between them in its backend's idle list.
Responses pass through raw, one `transport.write` per received segment, after llhttp has checked
them; a response head goes the slow way (`_head`) only when it must be edited (a Set-Cookie to
insert, `Connection: close` after an early answer) or a HEAD response must end at its head.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, Any

import httptools
from httptools import HttpParserError, HttpParserUpgrade

from statelab.balancer.framing import edit_response_head, response_status, split_interim
from statelab.balancer.pool import Backend

if TYPE_CHECKING:
    from statelab.balancer.exchange import Exchange

log = logging.getLogger(__name__)

MAX_RESPONSE_HEAD_BYTES = 64 * 1024
SALVAGE_MAX_BYTES = 4 << 20
# After an early answer, the rest of a request body up to this size is read and dropped so the
# client connection stays open; beyond it (or for a chunked body) the answer says Connection: close.
EARLY_KEEP_ALIVE_MAX_BYTES = 64 * 1024


class Upstream(asyncio.Protocol):
    """One connection to a backend, reused across requests of any client through the idle list."""

    __slots__ = ("backend", "transport", "parser", "ex", "pending", "special", "hold", "done", "status", "keep",
                 "reused", "rpaused", "lost", "t_idle")

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.transport: Any = None
        self.parser = httptools.HttpResponseParser(self)
        self.ex: Exchange | None = None
        self.pending: list[bytes] = []  # request bytes to send once connected
        self.special = False  # the response head needs the slow path (_head)
        self.hold = b""  # an incomplete response head (slow path only)
        self.done = False  # the final response is complete
        self.status = 0
        self.keep = False  # the backend keeps the connection open after this response
        self.reused = False
        self.rpaused = False
        self.lost = False  # never put back in the idle list
        self.t_idle = 0.0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def send(self, data: bytes) -> None:
        """Send request bytes now, or once the connection is made."""
        if self.transport is None:
            self.pending.append(data)
        else:
            self.transport.write(data)

    def on_message_complete(self) -> None:
        s = self.parser.get_status_code()
        if s >= 200:  # a 1xx is an interim response: the real one follows
            if self.done:  # a second response to one request: this connection is out of step
                self.lost = True
            self.status = s
            self.keep = self.parser.should_keep_alive()
            self.done = True

    def data_received(self, data: bytes) -> None:
        ex = self.ex
        if ex is None:  # bytes nobody asked for: this connection is out of step
            self.lost = True
            self.transport.close()
            return
        if self.special:
            data = self._head(data, ex)  # type: ignore[assignment]
            if data is None:
                return
        try:
            self.parser.feed_data(data)
        except (HttpParserError, HttpParserUpgrade) as exc:
            return ex.fail(502, f"invalid response from backend: {exc}")
        ex.nbytes += len(data)
        ex.client.transport.write(data)
        if self.done:
            ex.finish()

    def _head(self, data: bytes, ex: Exchange) -> bytes | None:
        """Edit the final response head (Set-Cookie, Connection: close) and/or end a HEAD response at its head.

        Return the bytes to relay: interim responses (100 Continue) pass at once, the final head
        once it is complete; None when there is nothing to relay yet, or the exchange ended here.
        """
        interim, buf = split_interim(self.hold + data)
        end = buf.find(b"\r\n\r\n") + 4
        if end < 4 or buf[9:10] == b"1":  # the final head is not complete yet
            if len(buf) > MAX_RESPONSE_HEAD_BYTES:
                ex.fail(502, "response head too large")
                return None
            self.hold = buf
            return interim or None
        self.hold = b""
        self.special = False
        c = ex.client
        if c.chunks is not None or c.body_left > EARLY_KEEP_ALIVE_MAX_BYTES:
            ex.closing = True  # an early answer with much (or an unknown amount) of the body still to come
        if ex.has_body and response_status(buf[:end]) >= 400:
            # The backend may have answered without reading the body, even if all of it went out before
            # the answer came back, and then close this connection although it said keep-alive
            # (gunicorn does when more than 64 KiB are left to drain): a request sent on it would be lost.
            self.lost = True
        if ex.cookie or ex.closing:
            head = edit_response_head(buf[:end], ex.cookie, ex.closing)
            buf = head + buf[end:]
            end = len(head)
        if not ex.head_only:
            return interim + buf
        # A backend that wrongly sends a body after a HEAD response may send it in a later segment,
        # where it would pass for the next client's response: never reuse a connection after HEAD.
        self.status = response_status(buf[:end])
        self.lost = True
        ex.nbytes += len(interim) + end
        c.transport.write(interim + buf[:end])
        ex.finish()
        return None

    def pause_writing(self) -> None:
        if self.ex is not None:
            self.ex.client.pause_upload()

    def resume_writing(self) -> None:
        if self.ex is not None:
            self.ex.client.resume_upload()

    def eof_received(self) -> bool | None:
        return None  # close our side too; connection_lost does the accounting

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        ex = self.ex
        if ex is None:
            try:
                self.backend.idle.remove(self)
            except ValueError:
                pass
            return
        if exc is not None:
            self._salvage()
            if self.ex is not ex:
                return
        c = ex.client
        if ex.nbytes == 0 and self.reused and c.retryable(ex):
            log.info("backend %s closed an idle keep-alive connection as we used it: retrying", self.backend.id)
            c.retry(ex, stale=self.backend)
            return
        how = "reset" if exc is not None else "closed"
        ex.fail(502, f"backend {self.backend.id} {how} the connection before the response was complete")

    def _salvage(self) -> None:
        """Relay what the backend sent before a write error ended the connection: often its early answer.

        A backend that answers before the whole body arrived (413 to an oversized upload) and
        closes makes our next write of the body fail (EPIPE, ECONNRESET). asyncio and uvloop then
        close the transport without reading the answer that already waits in the kernel's receive
        queue, and the client got a 502 instead of the 413. The socket is still open while
        connection_lost runs: read the queue now.
        """
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        fd = sock.fileno() if sock is not None else -1
        got = 0
        while fd >= 0 and got < SALVAGE_MAX_BYTES and self.ex is not None and not self.done:
            try:
                data = os.read(fd, 65536)
            except OSError:  # nothing more (EAGAIN), or the reset itself
                return
            if not data:
                return
            got += len(data)
            self.data_received(data)
