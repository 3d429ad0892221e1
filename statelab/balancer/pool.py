"""Backends the balancer knows: their state, health, counters and idle keep-alive connections.

The pool keeps `eligible`, a tuple of backends that may take new requests (state `ready` and
healthy), rebuilt only when membership, state or health changes, so the proxy reads one
attribute per request. Health comes from active `GET /healthz` checks (rise/fall; another path,
such as a readiness check `/readyz`, is a setting) and from passive marking when a connection attempt fails.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

log = logging.getLogger(__name__)

STATES = ("ready", "drain", "maint")
HEALTH_PATH = "/healthz"
RISE = 2
FALL = 2
MIN_HEALTH_INTERVAL_S = 0.2
# Its own setting, not the interval: a short interval keeps deploys quick, but a busy instance that
# answers /healthz in 300 ms is slow, not dead, and must not flap out of rotation.
HEALTH_TIMEOUT_S = 1.0


def split_address(address: str) -> tuple[str, int]:
    """Split 'host:port' (IPv6 in brackets) into (host, port); ValueError when malformed."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"backend address must be HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


class Backend:
    """One backend: identity, address, admin state, health and live counters."""

    __slots__ = ("id", "address", "host", "port", "state", "healthy", "active", "requests", "errors",
                 "idle", "_ok_streak", "_fail_streak", "check_task")

    def __init__(self, backend_id: str, address: str) -> None:
        self.id = backend_id
        self.address = address
        self.host, self.port = split_address(address)
        self.state = "ready"
        self.healthy = True
        self.active = 0  # requests in flight
        self.requests = 0
        self.errors = 0  # connect failures, broken or timed-out responses
        self.idle: list[Any] = []  # idle keep-alive backend connections (upstream.Upstream)
        self._ok_streak = 0
        self._fail_streak = 0
        self.check_task: asyncio.Task[None] | None = None

    def close_idle(self) -> None:
        idle, self.idle = self.idle, []
        for up in idle:
            up.transport.close()


class Pool:
    """The set of backends, the eligible tuple, and the active health checker."""

    def __init__(self, backends: tuple[tuple[str, str], ...], health_interval_s: float = 1.0,
                 health_path: str = HEALTH_PATH) -> None:
        self.backends: dict[str, Backend] = {}
        self.health_interval_s = max(MIN_HEALTH_INTERVAL_S, health_interval_s)
        self.health_path = health_path
        self.eligible: tuple[Backend, ...] = ()
        self.on_change: Callable[[], None] = lambda: None
        self._checking = False
        for bid, addr in backends:
            self.add(bid, addr)

    def refresh(self) -> None:
        """Rebuild the eligible tuple after any membership, state or health change."""
        self.eligible = tuple(b for b in self.backends.values() if b.state == "ready" and b.healthy)
        self.on_change()

    def add(self, backend_id: str, address: str) -> Backend:
        if not backend_id or backend_id in self.backends:
            raise ValueError(f"backend id {backend_id!r} is empty or already exists")
        b = Backend(backend_id, address)
        self.backends[backend_id] = b
        if self._checking:
            b.check_task = asyncio.get_running_loop().create_task(self._check_loop(b))
        self.refresh()
        log.info("backend %s (%s) added", backend_id, address)
        return b

    def remove(self, backend_id: str) -> None:
        """Forget a backend: no new requests; in-flight ones finish on their own connections."""
        b = self.backends.pop(backend_id)
        if b.check_task is not None:
            b.check_task.cancel()
        b.state = "maint"
        b.close_idle()
        self.refresh()
        log.info("backend %s removed", backend_id)

    def set_state(self, backend_id: str, state: str) -> None:
        if state not in STATES:
            raise ValueError(f"state must be one of {', '.join(STATES)}")
        b = self.backends[backend_id]
        b.state = state
        if state != "ready":
            b.close_idle()
        self.refresh()
        log.info("backend %s state %s", backend_id, state)

    def mark_failed(self, b: Backend) -> None:
        """Passive check: a connection attempt failed, take the backend out until checks pass again."""
        b.errors += 1
        b._ok_streak = 0
        b._fail_streak = FALL
        if b.healthy:
            b.healthy = False
            b.close_idle()
            log.warning("backend %s marked down (connect failed)", b.id)
            self.refresh()

    def start_checks(self) -> None:
        self._checking = True
        loop = asyncio.get_running_loop()
        for b in self.backends.values():
            b.check_task = loop.create_task(self._check_loop(b))

    def stop_checks(self) -> None:
        self._checking = False
        for b in self.backends.values():
            if b.check_task is not None:
                b.check_task.cancel()

    async def _check_loop(self, b: Backend) -> None:
        while True:
            ok = await check_once(b.host, b.port, timeout_s=HEALTH_TIMEOUT_S, path=self.health_path)
            self._record_check(b, ok)
            await asyncio.sleep(self.health_interval_s)

    def _record_check(self, b: Backend, ok: bool) -> None:
        if ok:
            b._ok_streak += 1
            b._fail_streak = 0
            if not b.healthy and b._ok_streak >= RISE:
                b.healthy = True
                log.info("backend %s is up", b.id)
                self.refresh()
        else:
            b._fail_streak += 1
            b._ok_streak = 0
            if b.healthy and b._fail_streak >= FALL:
                b.healthy = False
                b.close_idle()
                log.warning("backend %s is down (health check failed %d times)", b.id, FALL)
                self.refresh()


async def check_once(host: str, port: int, timeout_s: float, path: str = HEALTH_PATH) -> bool:
    """Return True if GET path (/healthz) answers 2xx or 3xx within timeout_s."""
    writer = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
                         f"User-Agent: statelab-health\r\n\r\n".encode())
            line = await reader.readline()
        parts = line.split(b" ", 2)
        return len(parts) >= 2 and parts[0].startswith(b"HTTP/1.") and parts[1][:1] in (b"2", b"3")
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
        return False
    finally:
        if writer is not None:
            writer.close()
