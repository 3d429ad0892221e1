"""HAProxy as the lab's other balancer engine: a rendered config, a managed process, its runtime API.

The same kebab-case policy names map onto HAProxy `balance` algorithms. Drain, maintenance and
adding or removing servers go through the stats socket without a restart; switching the policy
cannot be done live in HAProxy, so `set_policy` rewrites the config and restarts the process
(connections open at that moment are cut).
"""

from __future__ import annotations

import csv
import io
import logging
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Sequence

from statelab.balancer.policies import COOKIE_NAME, POLICY_NAMES
from statelab.balancer.pool import split_address
from statelab.engines import HEALTH_PATH, BackendStatus, Record
from statelab.errors import ControlError, DependencyMissing
from statelab.procs import ManagedProcess, tcp_probe

log = logging.getLogger(__name__)

BACKEND_NAME = "app"
SOCKET_TIMEOUT_S = 5.0
START_TIMEOUT_S = 10.0
STOP_GRACE_S = 3.0
HASH_BALANCE_FACTOR_PCT = 125
MAX_UNIX_PATH = 100  # sun_path holds 108 bytes

BALANCE = {
    "round-robin": ["balance roundrobin"],
    "least-connections": ["balance leastconn"],
    "ip-hash": ["balance source"],
    "cookie": ["balance roundrobin", f"cookie {COOKIE_NAME} insert indirect nocache"],
    "consistent-hash": ["balance source", "hash-type consistent", f"hash-balance-factor {HASH_BALANCE_FACTOR_PCT}"],
    "p2c": ["balance random(2)"],
}
# `add server` needs a dynamic algorithm: map-based `source` hashing is static.
DYNAMIC_POLICIES = frozenset(POLICY_NAMES) - {"ip-hash"}


# HAProxy's defaults for the lab: the native engine's config and compose/haproxy.cfg both take them from here.
DEFAULTS = (
    "mode http",
    "option http-keep-alive",
    "option forwardfor",
    "timeout connect 2s",
    "timeout client 60s",
    "timeout server 60s",
    "timeout http-request 10s",
    "timeout http-keep-alive 60s",
)


def server_line(policy: str, backend_id: str, address: str) -> str:
    """Return the `server` line for one backend (checks on; a cookie value for the cookie policy)."""
    split_address(address)  # ValueError on a malformed address
    cookie = f" cookie {backend_id}" if policy == "cookie" else ""
    return f"server {backend_id} {address} check{cookie}"


def render_config(*, bind: str, backends: Sequence[tuple[str, str]], policy: str, stats_socket: str | None = None,
                  health_interval_s: float = 1.0, threads: int | None = 1, maxconn: int = 5000,
                  health_path: str = HEALTH_PATH) -> str:
    """Render a complete haproxy.cfg for a static list of backends (used at runtime and for compose).

    bind is HAProxy's bind address, e.g. `127.0.0.1:8000` or `:8000`; backends are (id, host:port).
    """
    if policy not in BALANCE:
        raise ValueError(f"unknown policy {policy!r}: choose one of {', '.join(POLICY_NAMES)}")
    inter_ms = max(200, int(health_interval_s * 1000))
    glob = ["global", f"    maxconn {maxconn}"]
    if threads:
        glob.append(f"    nbthread {threads}")
    if stats_socket:
        glob.append(f"    stats socket {stats_socket} mode 600 level admin expose-fd listeners")
    lines = glob + [
        "",
        "defaults",
        *(f"    {line}" for line in DEFAULTS),
        "",
        "frontend lab",
        f"    bind {bind}",
        f"    default_backend {BACKEND_NAME}",
        "",
        f"backend {BACKEND_NAME}",
        *(f"    {line}" for line in BALANCE[policy]),
        f"    option httpchk GET {health_path}",
        f"    default-server inter {inter_ms} rise 2 fall 2",
        *(f"    {server_line(policy, bid, addr)}" for bid, addr in backends),
        "",
    ]
    return "\n".join(lines)


def runtime_command(sock_path: Path, command: str) -> str:
    """Send one command to HAProxy's runtime API socket and return its answer."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(SOCKET_TIMEOUT_S)
            s.connect(str(sock_path))
            s.sendall(command.encode() + b"\n")
            chunks = []
            while True:
                b = s.recv(65536)
                if not b:
                    break
                chunks.append(b)
    except OSError as exc:
        raise ControlError(f"haproxy runtime API at {sock_path}: {exc}") from None
    return b"".join(chunks).decode(errors="replace")


def parse_stat(csv_text: str, backend: str = BACKEND_NAME) -> list[BackendStatus]:
    """Turn `show stat` CSV into BackendStatus rows for the servers of one backend."""
    text = csv_text.lstrip("# ")
    out = []
    for row in csv.DictReader(io.StringIO(text)):
        if row.get("pxname") != backend or row.get("svname") in ("FRONTEND", "BACKEND"):
            continue
        status = row.get("status", "")
        state = "maint" if "MAINT" in status else "drain" if "DRAIN" in status else "ready"
        healthy = not status.startswith("DOWN") and row.get("check_status", "") not in ("L4CON", "L4TOUT", "L7STS",
                                                                                        "L7TOUT", "L4CON")
        reqs = row.get("req_tot") or row.get("stot") or "0"
        out.append(BackendStatus(
            id=row["svname"], address=row.get("addr", ""), state=state, healthy=healthy,
            active=int(row.get("scur") or 0), requests=int(reqs),
            errors=int(row.get("econ") or 0) + int(row.get("eresp") or 0), p50_ms=None, p99_ms=None))
    return out


class HAProxyEngine:
    """HAProxy 2.6+ in the foreground (`-db`), one thread, driven through its stats socket.

    `records()` returns no records: HAProxy keeps no per-request ring (its per-request data goes
    to logs), and `backends()` reports `show stat` counters with p50/p99 as None.
    """

    name = "haproxy"

    def __init__(self, health_interval_s: float = 1.0, health_path: str = HEALTH_PATH) -> None:
        self.health_interval_s = health_interval_s
        self.health_path = health_path
        self.proc: ManagedProcess | None = None
        self.port = 0
        self.policy = "round-robin"
        self.run_dir = Path(".")
        self._backends: list[tuple[str, str]] = []
        self._states: dict[str, str] = {}
        self._sock_path: Path | None = None

    @property
    def sock_path(self) -> Path:
        """The runtime API socket: in the run directory unless that path is too long for a unix socket."""
        if self._sock_path is None:
            path = self.run_dir.resolve() / "haproxy.sock"
            if len(str(path)) > MAX_UNIX_PATH:
                path = Path(tempfile.mkdtemp(prefix="statelab-haproxy-")) / "haproxy.sock"
            self._sock_path = path
        return self._sock_path

    @property
    def cfg_path(self) -> Path:
        return self.run_dir / "haproxy.cfg"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, run_dir: Path, port: int, admin_port: int, policy: str,
              backends: Sequence[tuple[str, str]]) -> None:
        """Write the config and start haproxy (admin_port is unused: the runtime API is a unix socket)."""
        binary = shutil.which("haproxy")
        if binary is None:
            raise DependencyMissing("haproxy not found: apt-get install haproxy (or use --lb builtin)")
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.policy = policy
        self._backends = list(backends)
        self._launch(binary)

    def _launch(self, binary: str) -> None:
        self.cfg_path.write_text(render_config(bind=f"127.0.0.1:{self.port}", backends=self._backends,
                                               policy=self.policy, stats_socket=str(self.sock_path),
                                               health_interval_s=self.health_interval_s,
                                               health_path=self.health_path))
        self.sock_path.unlink(missing_ok=True)
        probe_port = tcp_probe("127.0.0.1", self.port)
        self.proc = ManagedProcess("haproxy", [binary, "-db", "-f", str(self.cfg_path)], self.run_dir / "haproxy.log",
                                   probe=lambda: self.sock_path.exists() and probe_port())
        self.proc.start().wait_ready(START_TIMEOUT_S)
        for bid, state in self._states.items():
            if state != "ready":
                self._cmd(f"set server {BACKEND_NAME}/{bid} state {state}")

    def _cmd(self, command: str) -> str:
        answer = runtime_command(self.sock_path, command).strip()
        lowered = answer.lower()
        if any(w in lowered for w in ("unknown", "error", "not ", "cannot", "can't", "invalid", "require")):
            raise ControlError(f"haproxy refused {command!r}: {answer}")
        return answer

    def _restart(self) -> None:
        binary = shutil.which("haproxy")
        if binary is None:
            raise DependencyMissing("haproxy not found: apt-get install haproxy (or use --lb builtin)")
        if self.proc is not None:
            self.proc.stop(STOP_GRACE_S)
        log.info("restarting haproxy (policy %s, %d servers)", self.policy, len(self._backends))
        self._launch(binary)

    def add_backend(self, backend_id: str, address: str) -> None:
        """Add a server live (`add server`, then enable it and its checks); restart for static algorithms."""
        self._backends.append((backend_id, address))
        if self.policy not in DYNAMIC_POLICIES:
            return self._restart()
        self._cmd(f"add server {BACKEND_NAME}/{server_line(self.policy, backend_id, address)[len('server '):]}")
        self._cmd(f"enable health {BACKEND_NAME}/{backend_id}")
        self._cmd(f"enable server {BACKEND_NAME}/{backend_id}")

    def remove_backend(self, backend_id: str) -> None:
        """Remove a server live: maintenance first (HAProxy refuses to delete a server in use)."""
        self._backends = [(b, a) for b, a in self._backends if b != backend_id]
        self._states.pop(backend_id, None)
        if self.policy not in DYNAMIC_POLICIES:
            return self._restart()
        self._cmd(f"set server {BACKEND_NAME}/{backend_id} state maint")
        self._cmd(f"shutdown sessions server {BACKEND_NAME}/{backend_id}")
        self._cmd(f"del server {BACKEND_NAME}/{backend_id}")

    def set_state(self, backend_id: str, state: str) -> None:
        if state not in ("ready", "drain", "maint"):
            raise ControlError(f"state must be ready, drain or maint, not {state!r}")
        self._cmd(f"set server {BACKEND_NAME}/{backend_id} state {state}")
        self._states[backend_id] = state

    def set_policy(self, name: str) -> None:
        """Switch the policy by rewriting the config and restarting haproxy (it cannot switch live)."""
        if name not in BALANCE:
            raise ControlError(f"unknown policy {name!r}: choose one of {', '.join(POLICY_NAMES)}")
        self.policy = name
        self._restart()

    def backends(self) -> list[BackendStatus]:
        return parse_stat(runtime_command(self.sock_path, "show stat"))

    def records(self, since: int) -> tuple[int, list[Record]]:
        """HAProxy keeps no per-request records: always (since, [])."""
        return since, []

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(STOP_GRACE_S)
            self.proc = None
