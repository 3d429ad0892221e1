"""What `statelab check` found: per phase what the journey saw, per check its outcome and evidence.

Frozen records with a stable JSON form. A check is `passed` or `failed` (findings); a check that
could not run is not a result at all: the whole command stops with a message and exit code 2.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from statelab.events import Event

Outcome = Literal["passed", "failed"]
EXIT_PASSED, EXIT_FAILED, EXIT_ERROR = 0, 1, 2
# No answer from the app at all (0: connection error or timeout) or the balancer's own gateway
# errors: such a request tells nothing about the app's state, so it never counts as lost state.
UNANSWERED_STATUSES = frozenset((0, 502, 503, 504))


@dataclass(frozen=True)
class Example:
    """One request the journey marked as failed: when (seconds since the phase's first request) and how."""

    t_s: float
    method: str
    name: str
    status: int
    error: str
    url: str = ""

    def to_json(self) -> dict[str, object]:
        return {"t_s": round(self.t_s, 3), "method": self.method, "name": self.name, "status": self.status,
                "error": self.error, "url": self.url}


@dataclass(frozen=True)
class FailureKind:
    """One kind of failure in one phase: a request name with the journey's error text, and how often."""

    method: str
    name: str
    error: str
    count: int
    unanswered: bool = False  # the app never answered these (see UNANSWERED_STATUSES): not lost state
    statuses: tuple[tuple[int, int], ...] = ()  # (HTTP status, occurrences); 0 = no answer
    examples: tuple[Example, ...] = ()

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.method, self.name, self.error)

    @property
    def label(self) -> str:
        return f"{self.error} ({self.method} {self.name})"

    def to_json(self) -> dict[str, object]:
        return {"method": self.method, "name": self.name, "error": self.error, "count": self.count,
                "unanswered": self.unanswered, "statuses": {str(s): n for s, n in self.statuses},
                "examples": [e.to_json() for e in self.examples]}


@dataclass(frozen=True)
class PhaseStats:
    """What the journey saw during one phase, on which instances, with which routing and fault."""

    name: str
    routing: str  # the balancer policy: cookie, round-robin, ip-hash
    instances: str  # "3", or "2 -> 4" for a scale-out
    requests: int
    failures: tuple[FailureKind, ...]
    wall_s: float  # from the first request to the last
    fault: str = ""  # what was done mid-phase, in words; "" for none
    fault_at_s: float | None = None  # seconds since the first request
    events: tuple[Event, ...] = ()  # the lab's own events during the phase, on the phase's clock
    per_second: tuple[tuple[int, int, int], ...] = ()  # (second, requests, failures the journey marked)
    served: tuple[tuple[str, int], ...] = ()  # (instance, requests the balancer sent it in this phase)
    latency_ms: tuple[tuple[str, float], ...] = ()  # (p50, p95, p99, max) as the journey saw them

    @property
    def answered(self) -> tuple[FailureKind, ...]:
        """The failures the app answered: the ones that can say something about its state."""
        return tuple(f for f in self.failures if not f.unanswered)

    def count(self, error: str) -> int:
        """Return how often the app answered with failure kind `error` (on any request) in this phase."""
        return sum(f.count for f in self.answered if f.error == error)

    @property
    def failed_requests(self) -> int:
        return sum(f.count for f in self.failures)

    @property
    def unanswered(self) -> int:
        return sum(f.count for f in self.failures if f.unanswered)

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "routing": self.routing, "instances": self.instances, "requests": self.requests,
                "failed_requests": self.failed_requests, "unanswered": self.unanswered,
                "wall_s": round(self.wall_s, 3), "fault": self.fault,
                "fault_at_s": None if self.fault_at_s is None else round(self.fault_at_s, 3),
                "failures": [f.to_json() for f in self.failures], "events": [e.to_json() for e in self.events],
                "per_second": [list(p) for p in self.per_second], "served": dict(self.served),
                "latency_ms": {k: round(v, 2) for k, v in self.latency_ms}}


@dataclass(frozen=True)
class KindChange:
    """One failure kind (the journey's error text) in a phase against the baseline: counts, rates, whether it rose.

    `where` breaks the counts down by request: (method, name, count in the phase, count in the baseline).
    """

    error: str
    baseline_count: int
    baseline_rate: float  # failures per request in the baseline
    count: int
    rate: float  # failures per request in the phase
    expected: float  # the baseline's rate times the phase's requests
    rose: bool
    where: tuple[tuple[str, str, int, int], ...] = ()
    examples: tuple[Example, ...] = ()

    @property
    def excess(self) -> float:
        return self.count - self.expected

    def to_json(self) -> dict[str, object]:
        return {"error": self.error, "baseline_count": self.baseline_count,
                "baseline_rate": round(self.baseline_rate, 6), "count": self.count, "rate": round(self.rate, 6),
                "expected": round(self.expected, 3), "excess": round(self.excess, 3), "rose": self.rose,
                "where": [{"method": m, "name": n, "count": c, "baseline_count": b} for m, n, c, b in self.where],
                "examples": [e.to_json() for e in self.examples]}


@dataclass(frozen=True)
class DiskFile:
    """A file an instance left on its own local disk, as the instance saw its path."""

    instance: str  # e.g. app-2
    generation: int  # 1 for the first process of that instance, 2 after its first restart...
    path: str
    size: int
    during_run: bool  # written after the instance was serving (else: while it started)

    def to_json(self) -> dict[str, object]:
        return {"instance": self.instance, "generation": self.generation, "path": self.path, "size": self.size,
                "during_run": self.during_run}


@dataclass(frozen=True)
class CheckResult:
    """One check: passed or failed, in one sentence, with the evidence behind it."""

    name: str  # round-robin, rolling-deploy, kill, scale-out, local-disk
    title: str
    outcome: Outcome
    summary: str
    phase: PhaseStats | None = None  # None for local-disk, which reads the disks, not a phase
    changes: tuple[KindChange, ...] = ()  # every kind seen in this phase or the baseline
    files: tuple[DiskFile, ...] = ()  # local-disk only

    @property
    def rose(self) -> tuple[KindChange, ...]:
        return tuple(c for c in self.changes if c.rose)

    @property
    def apps_own(self) -> tuple[KindChange, ...]:
        """Kinds already in the baseline that did not rise: the app's own failures, not this check's."""
        return tuple(c for c in self.changes if not c.rose and c.baseline_count)

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "title": self.title, "outcome": self.outcome, "summary": self.summary,
                "phase": self.phase.to_json() if self.phase else None,
                "changes": [c.to_json() for c in self.changes], "files": [f.to_json() for f in self.files]}


@dataclass(frozen=True)
class CheckReport:
    """The whole check: what was checked and how, the baseline, every check, and where the time went."""

    target: str  # the APP spec or the --cmd command
    journey: str
    instances: int
    users: int
    run_time_s: float
    isolation: str  # private, tmp-only, env-only (see statelab.check.disks)
    isolation_note: str
    baseline: PhaseStats
    checks: tuple[CheckResult, ...]
    started_at: str
    wall_s: float
    run_dir: str
    timings: tuple[tuple[str, float], ...] = field(default=())  # (step, seconds)
    warnings: tuple[str, ...] = ()

    @property
    def failed(self) -> tuple[CheckResult, ...]:
        return tuple(c for c in self.checks if c.outcome == "failed")

    @property
    def exit_code(self) -> int:
        return EXIT_FAILED if self.failed else EXIT_PASSED

    def to_json(self) -> dict[str, object]:
        return {"target": self.target, "journey": self.journey, "instances": self.instances, "users": self.users,
                "run_time_s": self.run_time_s, "isolation": self.isolation, "isolation_note": self.isolation_note,
                "baseline": self.baseline.to_json(), "checks": [c.to_json() for c in self.checks],
                "started_at": self.started_at, "wall_s": round(self.wall_s, 3), "run_dir": self.run_dir,
                "timings": {k: round(v, 3) for k, v in self.timings}, "warnings": list(self.warnings),
                "exit_code": self.exit_code}


__all__ = ["EXIT_ERROR", "EXIT_FAILED", "EXIT_PASSED", "UNANSWERED_STATUSES", "CheckReport", "CheckResult",
           "DiskFile", "Example", "FailureKind", "KindChange", "Outcome", "PhaseStats"]
