"""The balancer process: its shared state, the listener with the admin API beside it, timeouts, shutdown.

`Balancer` holds what every connection shares (options, pool, policy, records, the open client
connections) and owns their lifecycle: `start` listens and starts the health checks and the
sweep that enforces the timeouts without a timer per request; `shutdown` stops accepting, lets
requests in flight finish (bounded) and closes the rest. `serve_forever` runs it until a signal.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Any

from statelab.balancer.admin import start_admin
from statelab.balancer.client import DRAIN, LINGER, Client
from statelab.balancer.framing import error_response
from statelab.balancer.options import BalancerOptions
from statelab.balancer.policies import make_policy
from statelab.balancer.pool import Pool
from statelab.balancer.records import RecordRing

log = logging.getLogger(__name__)

_now = time.monotonic
SWEEP_INTERVAL_S = 0.25
SHUTDOWN_POLL_S = 0.02


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
    """The proxy's shared state: options, pool, policy, records, open client connections."""

    def __init__(self, opts: BalancerOptions) -> None:
        self.opts = opts
        self.pool = Pool(opts.backends, opts.health_interval_s, opts.health_path)
        self.policy = make_policy(opts.policy, opts.hash_balance_factor)
        self.records = RecordRing(opts.records_max)
        self.conns: set[Client] = set()
        self.closing = False
        self.max_header_bytes = opts.max_header_bytes
        self.max_lines = opts.max_headers + 2  # request line + headers + the empty line
        self.min_bytes_over_max_lines = 4 * self.max_lines  # a shorter head cannot have too many lines
        self.slow = self.policy.sticky or opts.trust_forwarded_for  # every request takes the general path
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
        """Enforce the header, body, backend, linger and idle timeouts without a timer per request."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            now = _now()
            for c in list(self.conns):
                self.sweep_one(c, now)

    def sweep_one(self, c: Client, now: float) -> None:
        """Apply the timeouts to one client connection."""
        o = self.opts
        ex = c.ex
        if ex is not None:
            if c.body_left or c.chunks is not None:
                if not c.rpause and now - c.t_head > o.body_timeout_s:
                    c.reject(408, "request body stalled")
            elif ex.nbytes == 0 and now - max(ex.t0, c.t_head) > o.backend_timeout_s:  # from the last request byte
                ex.fail(504, f"backend {ex.backend.id} did not answer in {o.backend_timeout_s:g} s")
        elif c.dropping == LINGER:
            if now - c.t_linger > o.linger_time_s or now - c.t_head > o.linger_timeout_s:
                c.transport.close()
        elif c.dropping == DRAIN:
            if now - c.t_head > o.body_timeout_s:
                c.transport.close()
        elif c.buf or not c.t_idle:
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
            if c.ex is None and not c.dropping:
                c.transport.close()
        deadline = _now() + self.opts.shutdown_timeout_s
        while any(c.ex is not None or c.dropping == DRAIN for c in self.conns) and _now() < deadline:
            await asyncio.sleep(SHUTDOWN_POLL_S)
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
