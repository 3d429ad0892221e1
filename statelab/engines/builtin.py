"""statelab's own balancer as a lab's engine: a managed child process and the client of its admin API.

`AdminClient` is the one client of the JSON admin API that `statelab/balancer/admin.py` serves:
the engine drives the balancer through it, and a scenario run with `--target` reads a running
balancer's records and backends through it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Sequence

import requests

from statelab.balancer.admin import MAX_RECORDS_PER_READ
from statelab.engines import HEALTH_PATH, BackendStatus, Record
from statelab.errors import ControlError
from statelab.procs import ManagedProcess, http_probe

ADMIN_TIMEOUT_S = 5.0
START_TIMEOUT_S = 15.0
STOP_GRACE_S = 8.0  # longer than the balancer's own drain on SIGTERM (BalancerOptions.shutdown_timeout_s)


class AdminClient:
    """Call a builtin balancer's admin API at admin_url; every failure is a ControlError naming the call."""

    def __init__(self, admin_url: str, timeout_s: float = ADMIN_TIMEOUT_S) -> None:
        self.admin_url = admin_url.rstrip("/")
        self.timeout_s = timeout_s

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Send one request and return its JSON document."""
        try:
            r = requests.request(method, self.admin_url + path, json=body, timeout=self.timeout_s)
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
        self.call("POST", "/backends", {"id": backend_id, "address": address})

    def remove_backend(self, backend_id: str) -> None:
        self.call("DELETE", f"/backends/{backend_id}")

    def set_state(self, backend_id: str, state: str) -> None:
        self.call("PUT", f"/backends/{backend_id}/state", {"state": state})

    def set_policy(self, name: str) -> None:
        self.call("PUT", "/policy", {"policy": name})

    def backends(self) -> list[BackendStatus]:
        return [BackendStatus(**b) for b in self.call("GET", "/backends")["backends"]]

    def records(self, since: int) -> tuple[int, list[Record]]:
        """Return (next seq, records with seq >= since), at most MAX_RECORDS_PER_READ per call."""
        doc = self.call("GET", f"/records?since={int(since)}&limit={MAX_RECORDS_PER_READ}")
        return int(doc["next"]), [Record(**r) for r in doc["records"]]


class BuiltinEngine:
    """statelab's own balancer as a child process, driven through its admin API."""

    name = "builtin"

    def __init__(self, health_interval_s: float = 1.0, trust_forwarded_for: bool = False,
                 use_uvloop: bool = True, health_path: str = HEALTH_PATH) -> None:
        self.health_interval_s = health_interval_s
        self.health_path = health_path
        self.trust_forwarded_for = trust_forwarded_for
        self.use_uvloop = use_uvloop
        self.proc: ManagedProcess | None = None
        self.port = 0
        self.admin = AdminClient("")

    @property
    def admin_url(self) -> str:
        return self.admin.admin_url

    def start(self, run_dir: Path, port: int, admin_port: int, policy: str,
              backends: Sequence[tuple[str, str]]) -> None:
        """Start the balancer and wait until its admin API answers."""
        options = {"port": port, "admin_port": admin_port, "policy": policy, "backends": [list(b) for b in backends],
                   "health_interval_s": self.health_interval_s, "health_path": self.health_path,
                   "trust_forwarded_for": self.trust_forwarded_for, "use_uvloop": self.use_uvloop}
        argv = [sys.executable, "-m", "statelab.engines", json.dumps(options)]
        self.port = port
        self.admin = AdminClient(f"http://127.0.0.1:{admin_port}")
        self.proc = ManagedProcess("balancer", argv, Path(run_dir) / "balancer.log",
                                   probe=http_probe(self.admin_url + "/healthz", lambda s: s == 200))
        self.proc.start().wait_ready(START_TIMEOUT_S)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add_backend(self, backend_id: str, address: str) -> None:
        self.admin.add_backend(backend_id, address)

    def remove_backend(self, backend_id: str) -> None:
        self.admin.remove_backend(backend_id)

    def set_state(self, backend_id: str, state: str) -> None:
        self.admin.set_state(backend_id, state)

    def set_policy(self, name: str) -> None:
        self.admin.set_policy(name)

    def backends(self) -> list[BackendStatus]:
        return self.admin.backends()

    def records(self, since: int) -> tuple[int, list[Record]]:
        return self.admin.records(since)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(STOP_GRACE_S)
            self.proc = None


__all__ = ["AdminClient", "BuiltinEngine"]
