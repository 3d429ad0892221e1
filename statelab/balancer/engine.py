"""One interface over both balancer engines, so the lab runtime drives statelab's own or HAProxy alike.

`BuiltinEngine` runs `python -m statelab lb ...` as a managed child and talks to its JSON admin
API; `HAProxyEngine` (in `haproxy.py`) runs haproxy and talks to its runtime API socket.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import requests

from statelab.errors import ConfigError, ControlError
from statelab.procs import ManagedProcess, http_probe

ENGINE_NAMES = ("builtin", "haproxy")
ADMIN_TIMEOUT_S = 5.0
START_TIMEOUT_S = 15.0
STOP_GRACE_S = 8.0  # longer than the balancer's own drain on SIGTERM (BalancerOptions.shutdown_timeout_s)


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
    """One request the balancer relayed."""

    seq: int
    t: float
    client: str
    backend: str
    method: str
    path: str
    status: int
    latency_ms: float
    bytes: int


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


class BuiltinEngine:
    """statelab's own balancer as a child process, driven through its admin API."""

    name = "builtin"

    def __init__(self, health_interval_s: float = 1.0, trust_forwarded_for: bool = False,
                 use_uvloop: bool = True) -> None:
        self.health_interval_s = health_interval_s
        self.trust_forwarded_for = trust_forwarded_for
        self.use_uvloop = use_uvloop
        self.proc: ManagedProcess | None = None
        self.port = 0
        self.admin_url = ""

    def start(self, run_dir: Path, port: int, admin_port: int, policy: str,
              backends: Sequence[tuple[str, str]]) -> None:
        """Start the balancer and wait until its admin API answers."""
        argv = [sys.executable, "-m", "statelab", "lb", "--port", str(port), "--policy", policy,
                "--admin-port", str(admin_port), "--health-interval", str(self.health_interval_s)]
        for bid, addr in backends:
            argv += ["--backend", f"{bid}={addr}"]
        if self.trust_forwarded_for:
            argv.append("--trust-forwarded-for")
        if not self.use_uvloop:
            argv.append("--no-uvloop")
        self.port = port
        self.admin_url = f"http://127.0.0.1:{admin_port}"
        self.proc = ManagedProcess("balancer", argv, Path(run_dir) / "balancer.log",
                                   probe=http_probe(self.admin_url + "/healthz", lambda s: s == 200))
        self.proc.start().wait_ready(START_TIMEOUT_S)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            r = requests.request(method, self.admin_url + path, json=body, timeout=ADMIN_TIMEOUT_S)
        except requests.RequestException as exc:
            raise ControlError(f"balancer admin API unreachable at {self.admin_url}: {exc}") from None
        try:
            doc = r.json()
        except ValueError:
            raise ControlError(f"balancer admin API: {method} {path} answered {r.status_code} without JSON") from None
        if r.status_code >= 300:
            raise ControlError(f"balancer refused {method} {path}: {doc.get('error', r.status_code)}")
        return doc

    def add_backend(self, backend_id: str, address: str) -> None:
        self._call("POST", "/backends", {"id": backend_id, "address": address})

    def remove_backend(self, backend_id: str) -> None:
        self._call("DELETE", f"/backends/{backend_id}")

    def set_state(self, backend_id: str, state: str) -> None:
        self._call("PUT", f"/backends/{backend_id}/state", {"state": state})

    def set_policy(self, name: str) -> None:
        self._call("PUT", "/policy", {"policy": name})

    def backends(self) -> list[BackendStatus]:
        return [BackendStatus(**b) for b in self._call("GET", "/backends")["backends"]]

    def records(self, since: int) -> tuple[int, list[Record]]:
        """Return (next seq, records with seq >= since), at most 10,000 per call."""
        doc = self._call("GET", f"/records?since={int(since)}&limit=10000")
        return int(doc["next"]), [Record(**r) for r in doc["records"]]

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(STOP_GRACE_S)
            self.proc = None


def make_engine(name: str, *, health_interval_s: float = 1.0, trust_forwarded_for: bool = False,
                use_uvloop: bool = True) -> BalancerEngine:
    """Return an unstarted engine by name: `builtin` or `haproxy`."""
    if name == "builtin":
        return BuiltinEngine(health_interval_s, trust_forwarded_for, use_uvloop)
    if name == "haproxy":
        from statelab.balancer.haproxy import HAProxyEngine

        return HAProxyEngine(health_interval_s)
    raise ConfigError(f"unknown balancer engine {name!r}: choose one of {', '.join(ENGINE_NAMES)}")
