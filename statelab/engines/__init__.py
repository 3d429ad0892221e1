"""The parent-side drivers of a lab's balancer: one interface over statelab's own balancer and HAProxy.

The lab runtime drives either engine through `BalancerEngine`: `builtin` (in `builtin.py`) runs
statelab's own balancer (`python -m statelab.engines`, the server `statelab lb` runs) as a managed
child and talks to its JSON admin API; `haproxy` (in `haproxy.py`) runs haproxy and talks to its
runtime API socket. The balancer itself (the in-process proxy) lives in `statelab/balancer/`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

from statelab.errors import ConfigError

ENGINE_NAMES = ("builtin", "haproxy")
HEALTH_PATH = "/healthz"  # what the balancer's health checks GET unless told otherwise (`/readyz`: readiness)


@dataclass(frozen=True)
class BackendStatus:
    """One backend as the balancer sees it (p50/p99 over recent requests; None if unknown)."""

    id: str
    address: str
    state: str
    healthy: bool
    active: int
    requests: int
    errors: int
    p50_ms: float | None
    p99_ms: float | None


@dataclass(frozen=True)
class Record:
    """One request the balancer relayed (t: wall-clock seconds)."""

    seq: int
    t: float
    client: str
    backend: str
    method: str
    path: str
    status: int
    latency_ms: float
    bytes: int


class RecordSource(Protocol):
    """Anything that hands out the balancer's request records from a sequence number on."""

    def records(self, since: int) -> tuple[int, list[Record]]: ...


class BalancerEngine(Protocol):
    """What the lab runtime needs from a balancer, whichever engine runs it."""

    name: str

    def start(self, run_dir: Path, port: int, admin_port: int, policy: str,
              backends: Sequence[tuple[str, str]]) -> None: ...

    @property
    def url(self) -> str: ...

    def add_backend(self, backend_id: str, address: str) -> None: ...

    def remove_backend(self, backend_id: str) -> None: ...

    def set_state(self, backend_id: str, state: str) -> None: ...

    def set_policy(self, name: str) -> None: ...

    def backends(self) -> list[BackendStatus]: ...

    def records(self, since: int) -> tuple[int, list[Record]]: ...

    def stop(self) -> None: ...


def make_engine(name: str, *, health_interval_s: float = 1.0, trust_forwarded_for: bool = False,
                use_uvloop: bool = True, health_path: str = HEALTH_PATH) -> BalancerEngine:
    """Return an unstarted engine by name: `builtin` or `haproxy` (health checks GET health_path)."""
    if name == "builtin":
        from statelab.engines.builtin import BuiltinEngine

        return BuiltinEngine(health_interval_s, trust_forwarded_for, use_uvloop, health_path)
    if name == "haproxy":
        from statelab.engines.haproxy import HAProxyEngine

        return HAProxyEngine(health_interval_s, health_path)
    raise ConfigError(f"unknown balancer engine {name!r}: choose one of {', '.join(ENGINE_NAMES)}")


__all__ = ["ENGINE_NAMES", "HEALTH_PATH", "BackendStatus", "BalancerEngine", "Record", "RecordSource", "make_engine"]
