"""`statelab load`: Locust, as its own process, against a running lab; and what it measured, read back.

Locust is never imported here: importing it gevent-patches the whole interpreter. The child runs
loadtests/locustfile.py with its output in a log file in the run directory and its statistics in
CSV files next to it; `finish` waits for it and returns what it measured as frozen records. This
module returns data: `statelab.cli` turns the command line into `LoadOptions`, `statelab.report`
prints the results.
"""

from __future__ import annotations

import csv
import json
import os
import re
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from statelab.errors import ConfigError, ControlError, ServiceFailed
from statelab.procs import ManagedProcess, http_probe, log_tail

LOCUSTFILE = Path(__file__).resolve().parent.parent / "loadtests" / "locustfile.py"
WEB_HOST = "127.0.0.1"
WEB_PORT = 8089
READY_TIMEOUT_S = 30.0
FINISH_GRACE_S = 30.0  # after --run-time: Locust stops its users and writes its CSV files
WAIT_POLL_S = 0.2
CSV_PREFIX = "locust"
# Locust's own exit codes (with --exit-code-on-error 1): 0 no failure, 1 its users saw failures.
LOCUST_OK, LOCUST_FAILURES = 0, 1
_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?$")


@dataclass(frozen=True)
class LoadOptions:
    """One Locust run: where it goes, how many users, for how long (None = until stopped)."""

    host: str
    run_dir: Path
    users: int = 50
    spawn_rate: float = 10.0
    run_time: str | None = "30s"
    web: bool = False
    web_port: int = WEB_PORT
    users_per_address: int = 1
    accounts: int | None = None  # seeded accounts to spread users over (locustfile default: 5000)
    shape: str | None = None  # a load shape from loadtests/shapes.py (warm-up, steady, spike, phases)

    @property
    def csv_prefix(self) -> Path:
        return self.run_dir / CSV_PREFIX

    @property
    def log_path(self) -> Path:
        return self.run_dir / "locust.log"


@dataclass(frozen=True)
class RequestStats:
    """One row of Locust's statistics: a request name (or 'Aggregated') and its figures."""

    method: str
    name: str
    requests: int
    failures: int
    median_ms: float
    p95_ms: float
    rps: float


@dataclass(frozen=True)
class FailureStats:
    """One kind of failure Locust saw: e.g. GET /cart, 'cart lost', 12 times."""

    method: str
    name: str
    error: str
    occurrences: int


@dataclass(frozen=True)
class LoadSummary:
    """What one Locust run measured, per request name and in total, with its failures."""

    requests: tuple[RequestStats, ...]
    total: RequestStats
    failures: tuple[FailureStats, ...]

    def failures_matching(self, text: str) -> int:
        """Return how many failures had `text` in their error message."""
        return sum(f.occurrences for f in self.failures if text in f.error)


@dataclass(frozen=True)
class LoadRun:
    """How one Locust run ended: Locust's exit code (0 or 1) and its statistics, if it wrote any."""

    code: int
    summary: LoadSummary | None


def parse_duration_s(text: str) -> float:
    """Return Locust's duration syntax ('30s', '2m', '1h30m', '45') in seconds."""
    match = _DURATION.match(text.strip())
    if not text.strip() or not match:
        raise ConfigError(f"--run-time {text!r}: write a duration like 30s, 2m or 1h30m")
    hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return hours * 3600.0 + minutes * 60.0 + seconds


def locust_argv(opts: LoadOptions) -> list[str]:
    """Return the command line of the Locust child for opts."""
    argv = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--host", opts.host,
            "--users", str(opts.users), "--spawn-rate", str(opts.spawn_rate),
            "--csv", str(opts.csv_prefix), "--exit-code-on-error", "1"]
    if opts.web:
        argv += ["--web-host", WEB_HOST, "--web-port", str(opts.web_port)]
    else:
        argv += ["--headless", "--only-summary"]
    if opts.run_time:
        argv += ["--run-time", opts.run_time]
    return argv


def locust_env(opts: LoadOptions) -> dict[str, str]:
    """Return the child's environment: ours, plus the locustfile's LAB_LOCUST_* settings."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "LAB_LOCUST_USERS_PER_ADDRESS": str(opts.users_per_address)}
    if opts.accounts:
        env["LAB_LOCUST_ACCOUNTS"] = str(opts.accounts)
    if opts.shape:
        env["LAB_LOCUST_SHAPE"] = opts.shape
    return env


def start_locust(opts: LoadOptions) -> ManagedProcess:
    """Start Locust (headless, or the web UI once it answers) and return its process."""
    if not LOCUSTFILE.exists():
        raise ConfigError(f"{LOCUSTFILE} not found: `statelab load` runs from a clone of the repository")
    if opts.users < 1 or opts.spawn_rate <= 0 or opts.users_per_address < 1:
        raise ConfigError("--users and --users-per-address must be at least 1, --spawn-rate above 0")
    if opts.run_time:
        parse_duration_s(opts.run_time)
    opts.run_dir.mkdir(parents=True, exist_ok=True)
    if opts.web and _port_taken(opts.web_port):
        raise ServiceFailed(f"port {opts.web_port} is in use (another Locust?): stop it first")
    probe = http_probe(f"http://{WEB_HOST}:{opts.web_port}/", lambda s: s == 200) if opts.web else None
    proc = ManagedProcess("locust", locust_argv(opts), opts.log_path, probe=probe, env=locust_env(opts),
                          cwd=LOCUSTFILE.parent).start()
    try:
        return proc.wait_ready(READY_TIMEOUT_S)
    except BaseException:
        proc.stop()
        raise


def wait_finished(proc: ManagedProcess, run_time: str) -> int:
    """Wait for a headless run to end on its own (run time + grace), else stop it; return its exit code."""
    deadline = time.monotonic() + parse_duration_s(run_time) + FINISH_GRACE_S
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            proc.stop()  # reaps the group: nothing of Locust's outlives it
            return code
        time.sleep(WAIT_POLL_S)
    code = proc.stop()
    return code if code is not None else -1


def finish(proc: ManagedProcess, opts: LoadOptions) -> LoadRun:
    """Wait for a started Locust to end (headless: its run time; web UI: Ctrl-C), stop it, read its figures.

    A Locust that broke (any exit code but 0 or 1) is a ServiceFailed with its log's tail.
    """
    try:
        code = wait_interrupted(proc) if opts.web else wait_finished(proc, opts.run_time or "0s")
    finally:
        proc.stop()
    if code not in (LOCUST_OK, LOCUST_FAILURES):
        raise ServiceFailed(f"Locust exited with code {code} (log: {opts.log_path})", log_tail(opts.log_path))
    stats = Path(f"{opts.csv_prefix}_stats.csv")
    return LoadRun(code, read_summary(opts.csv_prefix) if stats.exists() else None)


def read_summary(csv_prefix: Path) -> LoadSummary:
    """Read Locust's <prefix>_stats.csv and <prefix>_failures.csv."""
    stats_path = Path(f"{csv_prefix}_stats.csv")
    try:
        with open(stats_path, newline="") as f:
            rows = [_stats_row(r) for r in csv.DictReader(f)]
    except FileNotFoundError:
        raise ServiceFailed(f"Locust wrote no statistics ({stats_path} is missing)") from None
    failures: list[FailureStats] = []
    failures_path = Path(f"{csv_prefix}_failures.csv")
    if failures_path.exists():
        with open(failures_path, newline="") as f:
            failures = [FailureStats(r["Method"], r["Name"], _error_text(r["Error"]), int(r["Occurrences"]))
                        for r in csv.DictReader(f)]
    total = next((r for r in rows if r.name == "Aggregated"), RequestStats("", "Aggregated", 0, 0, 0, 0, 0))
    return LoadSummary(tuple(r for r in rows if r.name != "Aggregated"), total, tuple(failures))


def _stats_row(r: dict[str, str]) -> RequestStats:
    def number(key: str) -> float:
        value = r.get(key) or "0"
        return 0.0 if value == "N/A" else float(value)

    return RequestStats(r["Type"], r["Name"], int(r["Request Count"]), int(r["Failure Count"]),
                        number("Median Response Time"), number("95%"), number("Requests/s"))


def _error_text(raw: str) -> str:
    """Return Locust's failure text without its exception wrapper: "CatchResponseError('x')" -> "x"."""
    match = re.fullmatch(r"\w+\((['\"])(.*)\1\)", raw.strip())
    return match.group(2) if match else raw


def lab_target(state_file: Path) -> tuple[str, Path]:
    """Return the running lab's balancer URL and run directory, from its state file."""
    try:
        state = json.loads(state_file.read_text())
    except FileNotFoundError:
        raise ControlError(f"no running lab found ({state_file} is missing): start one with "
                           "`statelab up --app stateful` in another shell, or pass --host URL") from None
    except ValueError:
        raise ControlError(f"{state_file} is not a lab state file") from None
    return str(state["balancer_url"]), Path(state["run_dir"])


def check_answers(host: str) -> None:
    """Fail with a clear message unless host answers HTTP at all."""
    try:
        requests.get(host.rstrip("/") + "/healthz", timeout=3)
    except requests.RequestException:
        raise ControlError(f"nothing answers at {host}: is `statelab up` still running?") from None


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((WEB_HOST, port)) == 0


def wait_interrupted(proc: ManagedProcess) -> int:
    """Wait while the web UI runs; Ctrl-C (or SIGTERM) stops Locust, which then writes its CSV files."""
    try:
        while proc.poll() is None:
            time.sleep(WAIT_POLL_S)
    except KeyboardInterrupt:
        pass
    code = proc.stop()
    # Stopped by us, Locust exits 1 when its users saw failures and -15/0 otherwise.
    return code if code in (LOCUST_OK, LOCUST_FAILURES) else LOCUST_OK


__all__ = ["LOCUSTFILE", "WEB_HOST", "FailureStats", "LoadOptions", "LoadRun", "LoadSummary", "RequestStats",
           "check_answers", "finish", "lab_target", "locust_argv", "parse_duration_s", "read_summary", "start_locust",
           "wait_finished", "wait_interrupted"]
