"""One request/response exchange, from routing to its end, and the single owner of in-flight accounting.

Like uvicorn's per-request cycle beside its per-connection protocol: the client connection
(`client.Client`) and the backend connection (`upstream.Upstream`) live long, an `Exchange` lives
for one request. Its constructor counts the request in (`Backend.active`, `requests`) and every
way it ends goes through one of its methods: `finish` (the response is complete), `fail` (the
backend failed it: 502/504, `errors`), `abort` (the client side ended it) or `move` (a retry), so
the inlined fast path and the general path of the client cannot drift apart on these counters
or on the request records.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from statelab.balancer.pool import Backend
from statelab.balancer.records import RecordRing

if TYPE_CHECKING:
    from statelab.balancer.client import Client
    from statelab.balancer.upstream import Upstream

log = logging.getLogger(__name__)

_now = time.monotonic


def record_answer(records: RecordRing, ip: str, line: bytes, status: int) -> None:
    """Record a request the balancer answered itself, before any backend saw it."""
    records.ring.append((_now(), ip, "", line, status, 0.0, 0))
    records.total += 1


class Exchange:
    """One request routed to one backend connection, until its response is complete or it fails."""

    __slots__ = ("client", "backend", "up", "line", "req", "t0", "nbytes", "retried", "has_body", "head_only",
                 "cookie", "closing")

    def __init__(self, client: Client, backend: Backend, up: Upstream, line: bytes, req: bytes | None) -> None:
        self.client = client
        self.backend = backend
        self.up = up
        self.line = line
        self.req = req  # the forwarded head, kept for a retry; None once body bytes have gone out
        self.t0 = _now()
        self.nbytes = 0  # response bytes relayed to the client
        self.retried = False
        self.has_body = False
        self.head_only = False  # a HEAD request: its response ends at its head
        self.cookie = b""  # a Set-Cookie line to splice into the response head (cookie policy)
        self.closing = False  # the response head told the client `Connection: close`
        backend.active += 1
        backend.requests += 1
        client.ex = self
        up.ex = self
        up.done = False  # (an idle connection has `special` false: the general path sets it when needed)

    def finish(self) -> None:
        """The response is complete: count it, reuse or close the backend connection, go on with the client."""
        up = self.up
        be = self.backend
        c = self.client
        t = _now()
        be.active -= 1
        rec = c.records
        rec.ring.append((self.t0, c.ip, be.id, self.line, up.status, t - self.t0, self.nbytes))
        rec.total += 1
        up.ex = None
        c.ex = None
        c.t_idle = t
        # Reuse the backend connection only if both sides said keep-alive (the request went as the client
        # sent it) and both directions are complete: a backend that answered before the whole body
        # arrived would read the rest of it as the start of the next request.
        if up.keep and c.keep and not up.lost and c.body_left == 0 and c.chunks is None and be.state == "ready":
            if up.rpaused:
                up.rpaused = False
                up.transport.resume_reading()
            up.reused = True
            up.t_idle = t
            be.idle.append(up)
        else:
            up.lost = True
            up.transport.close()
        if (not c.keep or c.rpause or c.eof or self.closing or c.body_left or c.chunks is not None
                or c.bal.closing):
            c.after_exchange(self)

    def fail(self, status: int, why: str, count_error: bool = True) -> None:
        """The backend failed this exchange: answer status if the client has seen nothing of it, else cut."""
        be = self.backend
        be.active -= 1
        if count_error:
            be.errors += 1
        log.warning("backend %s: %s", be.id, why)
        self._drop_upstream()
        c = self.client
        c.ex = None
        if self.nbytes:
            self._record(0, self.nbytes)  # cut in the middle of the response
            c.transport.close()
        else:
            self._record(status, 0)
            c.answer(status, why)

    def abort(self, status: int) -> None:
        """The client side ended this exchange (gone: 499; bad or stalled body: 400/408)."""
        self.backend.active -= 1
        self._drop_upstream()
        self.client.ex = None
        self._record(status, self.nbytes)

    def move(self, backend: Backend, up: Upstream) -> None:
        """Send this exchange again, to backend over up (a retry): the in-flight count moves with it."""
        self.backend.active -= 1
        backend.active += 1
        backend.requests += 1
        self.backend = backend
        self.up = up
        self.retried = True
        up.ex = self
        up.done = False
        up.special = self.has_body or self.head_only or bool(self.cookie)

    def _drop_upstream(self) -> None:
        up = self.up
        if up.ex is self:
            up.ex = None
            up.lost = True
            if up.transport is not None:
                up.transport.close()

    def _record(self, status: int, nbytes: int) -> None:
        c = self.client
        c.records.ring.append((self.t0, c.ip, self.backend.id, self.line, status, _now() - self.t0, nbytes))
        c.records.total += 1
