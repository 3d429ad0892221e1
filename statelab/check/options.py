"""The options of one `statelab check` and the plan of its phases, checked before anything starts.

`statelab.cli` builds `CheckOptions` from argv; everything wrong with them is a ConfigError that
names the option (exit 2), raised by `validate()` before a single process starts.
"""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from statelab.errors import ConfigError
from statelab.loadgen import parse_duration_s

DEFAULT_INSTANCES = 3
DEFAULT_USERS = 20
DEFAULT_RUN_TIME_S = 5.0  # per phase: the whole default check stays under a minute on a busy 2-core machine
DEFAULT_START_TIMEOUT_S = 20.0
FIRST_REQUEST_TIMEOUT_S = 15.0  # from a phase's go: Locust may still be starting (about a second), then a request
DEFAULT_THREADS = 8
SCALE_FROM, SCALE_TO = 2, 4
# What the check itself sets for every instance: the stores it started, where to listen, its own /tmp.
STORE_NAMES = ("REDIS_URL", "DATABASE_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
               "AWS_REGION", "S3_BUCKET")
RESERVED_NAMES = (*STORE_NAMES, "PORT", "TMPDIR")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_APP_SPEC = re.compile(r"[A-Za-z_][\w.]*(:[A-Za-z_][\w.]*(\(.*\))?)?", re.S)


@dataclass(frozen=True)
class Phase:
    """One phase of a check: the journey runs; the balancer routes one way; perhaps a fault mid-way."""

    name: str  # baseline, round-robin, rolling-deploy, kill, scale-out
    title: str
    routing: str  # balancer policy
    instances: int  # running when the phase starts
    fault: str = ""  # "", "deploy", "kill", "scale"


def phases(instances: int) -> tuple[Phase, ...]:
    """Return the phases, in order: the baseline first, then one per check that runs traffic.

    Why these routings: docs/check.md, "Phases and fairness".
    """
    return (
        Phase("baseline", "each user pinned to one instance, no fault", "cookie", instances),
        Phase("round-robin", "requests spread round-robin: does the user's state follow the user?", "round-robin",
              instances),
        Phase("rolling-deploy", "every instance replaced, one at a time, users pinned", "cookie", instances, "deploy"),
        Phase("kill", "one instance killed with SIGKILL, users pinned", "cookie", instances, "kill"),
        Phase("scale-out", f"from {SCALE_FROM} to {SCALE_TO} instances, users pinned by address (ip-hash)",
              "ip-hash", SCALE_FROM, "scale"),
    )


def parse_env(pairs: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """Return --env NAME=VALUE pairs as (name, value); a malformed or reserved one is a ConfigError."""
    out = []
    for raw in pairs:
        name, sep, value = raw.partition("=")
        if not sep or not _ENV_NAME.fullmatch(name):
            raise ConfigError(f"--env {raw!r}: write NAME=VALUE, where NAME is letters, digits and _ "
                              "and does not start with a digit")
        if name in RESERVED_NAMES:
            raise ConfigError(f"--env {name}: the check sets {name} itself for every instance "
                              f"({', '.join(RESERVED_NAMES)} are its own); choose another name")
        out.append((name, value))
    return tuple(out)


def parse_run_time(text: str) -> float:
    """Return --run-time in seconds: a number (6, 7.5) or a duration (30s, 1m)."""
    try:
        value = float(text)
    except ValueError:
        value = parse_duration_s(text)
    return value


@dataclass(frozen=True)
class CheckOptions:
    """One check: the app (APP for gunicorn, or a command), the journey, and how hard to push."""

    journey: Path
    run_dir: Path
    app: str | None = None
    cmd: str | None = None
    instances: int = DEFAULT_INSTANCES
    users: int = DEFAULT_USERS
    run_time_s: float = DEFAULT_RUN_TIME_S  # seconds of traffic per phase (half before a fault, half after)
    env: tuple[tuple[str, str], ...] = ()
    ready_path: str | None = None
    start_timeout_s: float = DEFAULT_START_TIMEOUT_S
    first_request_timeout_s: float = FIRST_REQUEST_TIMEOUT_S
    threads: int = DEFAULT_THREADS
    project_dir: Path = Path(".")
    json_path: Path | None = None
    junit_path: Path | None = None
    html_path: Path | None = None

    @property
    def target(self) -> str:
        return self.app or self.cmd or ""

    def command(self, port: int) -> list[str]:
        """Return one instance's command line on port (gunicorn with APP, or the user's command)."""
        if self.cmd is not None:
            return [arg.replace("{port}", str(port)) for arg in shlex.split(self.cmd)]
        # One worker with threads: one instance is one memory (gunicorn workers share nothing).
        return [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1",
                "--worker-class", "gthread", "--threads", str(self.threads), "--graceful-timeout", "5",
                "--log-level", "warning", "--access-logfile", "-", str(self.app)]

    def validate(self) -> None:
        """Raise a ConfigError naming the first option that cannot work."""
        if (self.app is None) == (self.cmd is None):
            raise ConfigError("give either APP (module:app, for gunicorn) or --cmd \"COMMAND ... {port}\", not both")
        if self.app is not None and not _APP_SPEC.fullmatch(self.app):
            raise ConfigError(f"APP {self.app!r}: write it as gunicorn does, e.g. `myapp:app` or "
                              "`myapp:create_app()`, importable from the current directory")
        if self.cmd is not None:
            try:
                argv = shlex.split(self.cmd)
            except ValueError as exc:
                raise ConfigError(f"--cmd {self.cmd!r}: {exc}") from None
            if not argv:
                raise ConfigError("--cmd is empty: give the command that starts one instance, with {port}")
        if not 2 <= self.instances <= 16:
            raise ConfigError("--instances must be between 2 and 16 (round-robin needs two to mean anything)")
        if not 1 <= self.users <= 500:
            raise ConfigError("--users must be between 1 and 500")
        if not 2.0 <= self.run_time_s <= 600.0:
            raise ConfigError("--run-time must be between 2 and 600 seconds (per phase)")
        if self.ready_path is not None and not self.ready_path.startswith("/"):
            raise ConfigError(f"--ready-path {self.ready_path!r} must start with /")
        if not 1.0 <= self.start_timeout_s <= 300.0:
            raise ConfigError("--start-timeout must be between 1 and 300 seconds")
        if not self.project_dir.is_dir():
            raise ConfigError(f"{self.project_dir} is not a directory")


__all__ = ["DEFAULT_INSTANCES", "DEFAULT_RUN_TIME_S", "DEFAULT_START_TIMEOUT_S", "DEFAULT_USERS", "RESERVED_NAMES",
           "SCALE_FROM", "SCALE_TO", "STORE_NAMES", "CheckOptions", "Phase", "parse_env", "parse_run_time", "phases"]
