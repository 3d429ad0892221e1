"""The user's journey: checked before the run, run by Locust once per phase, and read back as data.

Locust runs as its own process (as `statelab load` does) with `child/locustfile.py`, which imports
the journey and counts what it sees. One fresh Locust per phase: each phase starts with new users
who log in afresh, so what one phase broke never spills into the next phase's figures. Locust's
start (about a second) would be paid once per phase; a gate hides it (see `JourneyRun`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from statelab.check.result import UNANSWERED_STATUSES, Example, FailureKind
from statelab.errors import ConfigError, ServiceFailed
from statelab.procs import ManagedProcess, log_tail

LOCUSTFILE = Path(__file__).resolve().parent / "child" / "locustfile.py"
SPAWN_RATE_FACTOR = 10  # every user spawned within a tenth of a second
RUN_TIME_CAP = "30m"  # Locust stops on its own after this even if nobody stops it (it never should)
STOP_GRACE_S = 10.0
POLL_S = 0.1


def validate(path: Path) -> None:
    """Fail with a ConfigError unless path is a Python file that compiles."""
    if not path.is_file():
        raise ConfigError(f"--journey {path}: no such file (write one with `statelab check --init-journey {path}`)")
    try:
        compile(path.read_bytes(), str(path), "exec")
    except SyntaxError as exc:
        where = f"line {exc.lineno}" + (f", column {exc.offset}" if exc.offset else "")
        raise ConfigError(f"--journey {path}: syntax error at {where}: {exc.msg}") from None
    except ValueError as exc:  # e.g. null bytes
        raise ConfigError(f"--journey {path}: not a Python file ({exc})") from None


def _env(journey: Path, record: Path, go: Path | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "LAB_CHECK_JOURNEY": str(journey.resolve()),
           "LAB_CHECK_RECORD": str(record)}
    if go is not None:
        env["LAB_CHECK_GO"] = str(go)
    return env


@dataclass(frozen=True)
class JourneyRecord:
    """What the journey saw in one phase, read from the child's record."""

    started: float  # wall clock
    first_request: float | None
    requests: int
    kinds: tuple[FailureKind, ...]
    per_second: tuple[tuple[int, int, int], ...]  # (second since first request, requests, failures)
    users_unbound: int  # users whose client could not bind its own address (not an HttpUser)
    latency_ms: tuple[tuple[str, float], ...] = ()  # (p50/p95/p99/max, ms), in the final record only


def read_record(path: Path) -> JourneyRecord | None:
    """Return the record the child wrote, or None if there is none yet."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    first = doc.get("first_request")
    t0 = float(first) if first is not None else float(doc["started"])
    offset = int(t0 - float(doc["started"]))
    kinds: list[FailureKind] = []
    for k in doc.get("kinds", []):
        kinds += _split(k, t0)
    per_second = tuple((int(s) - offset, int(r), int(f)) for s, r, f in doc.get("per_second", []))
    return JourneyRecord(float(doc["started"]), None if first is None else float(first), int(doc["requests"]),
                         tuple(kinds), per_second, int(doc.get("users_unbound", 0)),
                         tuple((k, float(v)) for k, v in doc.get("latency_ms", {}).items()))


def _split(k: dict[str, Any], t0: float) -> list[FailureKind]:
    """Return one record kind as up to two FailureKinds: the answered part and the unanswered part."""
    out = []
    statuses = {int(s): int(n) for s, n in k["statuses"].items()}
    for unanswered in (False, True):
        part = {s: n for s, n in statuses.items() if (s in UNANSWERED_STATUSES) == unanswered}
        if not part:
            continue
        examples = tuple(Example(float(e["t"]) - t0, k["method"], k["name"], int(e["status"]), k["error"],
                                 str(e.get("url", ""))) for e in k["examples"]
                         if (int(e["status"]) in UNANSWERED_STATUSES) == unanswered)
        out.append(FailureKind(k["method"], k["name"], k["error"], sum(part.values()), unanswered,
                               tuple(sorted(part.items())), examples))
    return out


class JourneyRun:
    """One phase's Locust: started early behind a gate, let go, watched for its first request, stopped, read.

    Its users wait in on_start until `go()`: the parent starts the next phase's Locust while the
    current phase still runs, and Locust's start-up (about a second) is hidden.
    """

    def __init__(self, journey: Path, host: str, users: int, phase_dir: Path, project: Path) -> None:
        self.journey = journey
        self.record_path = phase_dir / "record.json"
        self.gate_path = phase_dir / "go"
        self.log_path = phase_dir / "locust.log"
        argv = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", host,
                "--users", str(users), "--spawn-rate", str(users * SPAWN_RATE_FACTOR), "--run-time", RUN_TIME_CAP,
                "--only-summary", "--exit-code-on-error", "1"]
        self.proc = ManagedProcess("locust", argv, self.log_path, env=_env(journey, self.record_path, self.gate_path),
                                   cwd=project, stop_grace_s=STOP_GRACE_S)
        self.released = False

    def start(self) -> "JourneyRun":
        """Start Locust; its users are spawned and wait at the gate."""
        self.record_path.parent.mkdir(parents=True, exist_ok=True)
        for path in (self.record_path, self.gate_path):
            path.unlink(missing_ok=True)
        self.proc.start()
        return self

    def go(self) -> None:
        """Open the gate: the users start their journeys."""
        self.check_loaded()
        self.released = True
        self.gate_path.touch()

    def check_loaded(self) -> None:
        """Fail with what Locust said if it has already exited: before go(), the journey did not load."""
        code = self.proc.poll()
        if code is None:
            return
        tail = log_tail(self.log_path)
        if not self.released:
            if "No User class found" in tail:
                raise ConfigError(f"--journey {self.journey}: it defines no User class with tasks (e.g. "
                                  "`class Shopper(HttpUser)` with @task methods): see `statelab check --init-journey`")
            raise ConfigError(f"--journey {self.journey}: Locust could not load it (exit code {code}; "
                              f"log: {self.log_path})\n--- log tail ---\n{tail}")
        raise ServiceFailed(f"Locust running the journey exited early with code {code} (log: {self.log_path})", tail)

    def wait_first_request(self, timeout_s: float) -> float:
        """Return the wall-clock time of the journey's first request; a ConfigError if none comes."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_loaded()
            record = read_record(self.record_path)
            if record is not None and record.first_request is not None:
                return record.first_request
            time.sleep(POLL_S)
        raise ConfigError(f"--journey {self.journey}: no request within {timeout_s:g} s of Locust's start: do its "
                          f"tasks call self.client? (log: {self.log_path})\n--- log tail ---\n{log_tail(self.log_path)}")

    def wait_until(self, wall_t: float) -> None:
        """Let the journey run until wall-clock time wall_t (failing fast if Locust dies)."""
        while time.time() < wall_t:
            self.check_loaded()
            time.sleep(min(POLL_S, max(0.0, wall_t - time.time())))

    def stop(self) -> JourneyRecord:
        """Stop Locust (SIGTERM: it stops its users and writes the final record) and read what it saw."""
        self.proc.stop()
        record = read_record(self.record_path)
        if record is None:
            raise ServiceFailed(f"Locust left no record of the phase (log: {self.log_path})", log_tail(self.log_path))
        return record


EXAMPLE = '''\
"""A journey for `statelab check`: one kind of user of your app, written as a Locust user.

statelab check runs it against your instances behind a load balancer, phase after phase (users
pinned to one instance; round-robin; a rolling deploy; an instance killed; a scale-out), and
compares the failures it marks in each phase with the pinned baseline. Lost state is whatever
this file marks as a failure: use `catch_response=True` and `r.failure("...")` with a short,
stable message ("logged out", "cart lost"); the message is the failure's kind in the report.

Mark a failure only when something the server *confirmed* is gone: a request that got no
answer at all (a connection error, or the balancer's 502/503/504) is never counted as lost
state, so a user should only remember what a 2xx response confirmed.

Adapt the paths and bodies below to your app; keep the shape: log in, change some state,
read it back, compare with what this user remembers.
"""

import itertools

from locust import HttpUser, between, task

_numbers = itertools.count(1)  # a distinct account per simulated user


class Shopper(HttpUser):
    wait_time = between(0.2, 0.6)  # seconds between tasks: short, so each phase sees many steps

    def on_start(self) -> None:
        self.username = f"user{next(_numbers):04d}"
        self.logged_in = False
        self.cart: dict[int, int] = {}  # what this user added, as the server confirmed it

    def login(self) -> None:
        with self.client.post("/login", json={"username": self.username, "password": "secret"},
                              catch_response=True) as r:
            if r.status_code == 200:
                self.logged_in = True
                self.cart = {}  # a new session starts with an empty cart
            else:
                r.failure(f"login refused: HTTP {r.status_code}")

    @task(3)
    def add_to_cart(self) -> None:
        if not self.logged_in:
            return self.login()
        product = 1 + len(self.cart) % 5
        with self.client.post("/cart/items", json={"product_id": product, "qty": 1}, catch_response=True) as r:
            if r.status_code == 401:
                r.failure("logged out")  # the server forgot a session it gave us
                self.logged_in = False
            elif r.status_code in (200, 201):
                self.cart[product] = self.cart.get(product, 0) + 1

    @task(2)
    def check_cart(self) -> None:
        if not self.logged_in:
            return self.login()
        with self.client.get("/cart", catch_response=True) as r:
            if r.status_code == 401:
                r.failure("logged out")
                self.logged_in = False
                return
            if r.status_code != 200:
                return  # not about state: Locust counts a 4xx/5xx as `HTTP <status>` on its own
            shown = {int(i["product_id"]): int(i["qty"]) for i in r.json().get("items", [])}
            if any(shown.get(product, 0) < qty for product, qty in self.cart.items()):
                r.failure("cart lost")  # items the server confirmed are gone
            self.cart = shown  # the server is the truth from here on: each loss is counted once
'''


def write_example(path: Path) -> None:
    """Write the commented example journey to path; refuse to overwrite a file."""
    if path.exists():
        raise ConfigError(f"--init-journey {path}: the file exists; choose a new name (nothing was written)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(EXAMPLE)
    except OSError as exc:
        raise ConfigError(f"--init-journey {path}: {exc.strerror}") from None


__all__ = ["EXAMPLE", "LOCUSTFILE", "JourneyRecord", "JourneyRun", "read_record", "validate", "write_example"]
