"""The scenario framework: result types, the Scenario protocol, its case context, its registry, the verdict logic.

A scenario is setup (a lab), run (traffic plus a fault), measure, verdict. Its verdict is a pure
function of its measurements. `reproduced` and `survived` are findings; `error` means the scenario
itself broke and is never counted as one (chaostoolkit's "deviated" vs "failed"). A case runs with
one explicit `CaseContext`; running cases is `statelab.runner`'s job, and `statelab.harness` is
what a scenario's `run` uses to start a lab, crowds and samplers for its case.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Literal, Protocol, Sequence, get_args

from statelab.config import APP_KINDS
from statelab.errors import ConfigError
from statelab.events import Event
from statelab.seed import SEED_USERS
from statelab.turns import Turn

if TYPE_CHECKING:
    from statelab.stores import SharedStores

Finding = Literal["reproduced", "survived"]  # what a scenario that ran found
Outcome = Literal["reproduced", "survived", "error"]  # error: the scenario itself broke, never a finding
OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)
EXIT_OK, EXIT_DEVIATED, EXIT_ERROR = 0, 1, 2  # the exit codes of `statelab run` (and `statelab load`)
ALL = "all"  # what `statelab run all` runs: the registry's first group, the classic disasters


# --- result types ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Figure:
    """One measured number: a stable key, how to show it, its value and unit."""

    name: str
    label: str
    value: float
    unit: str = ""

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "label": self.label, "value": _num(self.value), "unit": self.unit}


@dataclass(frozen=True)
class Tolerance:
    """A condition the design must hold to have survived: `figure op limit` (e.g. logged_out <= 0)."""

    figure: str
    op: str
    limit: float
    why: str = ""

    def holds(self, value: float) -> bool:
        ops: dict[str, Callable[[float, float], bool]] = {
            "<=": lambda a, b: a <= b, "<": lambda a, b: a < b, ">=": lambda a, b: a >= b,
            ">": lambda a, b: a > b, "==": lambda a, b: a == b}
        if self.op not in ops:
            raise ValueError(f"unknown operator {self.op!r}")
        return not math.isnan(value) and ops[self.op](value, self.limit)

    def describe(self) -> str:
        return f"{self.figure} {self.op} {_fmt(self.limit)}"

    def to_json(self) -> dict[str, object]:
        return {"figure": self.figure, "op": self.op, "limit": _num(self.limit), "why": self.why}


@dataclass(frozen=True)
class Check:
    """A tolerance applied to a measurement."""

    tolerance: Tolerance
    value: float
    held: bool

    def to_json(self) -> dict[str, object]:
        return {"tolerance": self.tolerance.to_json(), "value": _num(self.value), "held": self.held}


@dataclass(frozen=True)
class Verdict:
    """What the measurements say: the outcome, why, and each tolerance checked."""

    outcome: Outcome
    explanation: str
    checks: tuple[Check, ...] = ()


@dataclass(frozen=True)
class Series:
    """A per-second (or per-sample) timeline for charts: (t, value) points."""

    name: str
    unit: str
    points: tuple[tuple[float, float], ...]

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "unit": self.unit,
                "points": [[round(t, 3), _num(v)] for t, v in self.points]}


@dataclass(frozen=True)
class InstanceFigures:
    """What one app instance did: its share of requests and how fast it answered."""

    instance: str
    requests: int
    share: float
    errors: int = 0
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    note: str = ""

    def to_json(self) -> dict[str, object]:
        return {"instance": self.instance, "requests": self.requests, "share": _num(self.share),
                "errors": self.errors, "p50_ms": _num(self.p50_ms), "p99_ms": _num(self.p99_ms), "note": self.note}


@dataclass(frozen=True)
class Latency:
    """Latency of successful requests over a named window (the basis of the stateless price)."""

    p50_ms: float
    p99_ms: float
    requests: int
    window: str

    def to_json(self) -> dict[str, object]:
        return {"p50_ms": _num(self.p50_ms), "p99_ms": _num(self.p99_ms), "requests": self.requests,
                "window": self.window}


NO_LATENCY = Latency(math.nan, math.nan, 0, "none")


@dataclass(frozen=True)
class Measurements:
    """Everything a scenario measured in one case; the verdict reads only this."""

    figures: tuple[Figure, ...]
    latency: Latency = NO_LATENCY
    events: tuple[Event, ...] = ()
    series: tuple[Series, ...] = ()
    instances: tuple[InstanceFigures, ...] = ()
    notes: tuple[str, ...] = ()

    def value(self, name: str) -> float:
        """Return a figure's value by key (NaN when it was not measured)."""
        for f in self.figures:
            if f.name == name:
                return f.value
        return math.nan


@dataclass(frozen=True)
class AppCase:
    """One column of a scenario: an app, optionally a variant of it with extra LAB_* settings."""

    app: str
    variant: str = ""
    env: tuple[tuple[str, str], ...] = ()
    expect: Finding | None = None  # None: shown for comparison, not judged
    in_quick: bool = True  # False: a comparison column left out of --quick (its time budget)

    @property
    def label(self) -> str:
        return f"{self.app} ({self.variant})" if self.variant else self.app

    @property
    def key(self) -> str:
        return f"{self.app}-{self.variant}" if self.variant else self.app


@dataclass(frozen=True)
class Target:
    """An already-running deployment: its balancer URL and admin endpoint (`--target`)."""

    url: str
    admin: str | None = None


@dataclass(frozen=True)
class ScenarioResult:
    """One case's result, composed: which case, what it measured, the verdict, and how long it took.

    A scenario that broke has the `error` verdict and whatever it measured (usually nothing).
    """

    scenario: str
    case: AppCase
    measurements: Measurements
    verdict: Verdict
    wall_s: float
    run_dir: str = ""

    @property
    def app(self) -> str:
        return self.case.app

    @property
    def variant(self) -> str:
        return self.case.variant

    @property
    def label(self) -> str:
        return self.case.label

    @property
    def expected(self) -> Finding | None:
        return self.case.expect

    @property
    def outcome(self) -> Outcome:
        return self.verdict.outcome

    @property
    def matched(self) -> bool:
        return matches(self.outcome, self.expected)

    def figure(self, name: str) -> float:
        """Return a measured figure's value by key (NaN when it was not measured)."""
        return self.measurements.value(name)

    def to_json(self) -> dict[str, object]:
        m, v = self.measurements, self.verdict
        return {
            "scenario": self.scenario, "app": self.app, "variant": self.variant, "outcome": self.outcome,
            "expected": self.expected, "matched": self.matched, "explanation": v.explanation,
            "wall_s": round(self.wall_s, 3), "figures": [f.to_json() for f in m.figures],
            "checks": [c.to_json() for c in v.checks], "latency": m.latency.to_json(),
            "events": [e.to_json() for e in m.events], "series": [s.to_json() for s in m.series],
            "instances": [i.to_json() for i in m.instances], "notes": list(m.notes), "run_dir": self.run_dir,
        }


@dataclass(frozen=True)
class StatelessPrice:
    """What the stateless design costs per request in one scenario, measured in the same run."""

    scenario: str
    window: str
    stateful_p50_ms: float
    stateless_p50_ms: float
    stateful_p99_ms: float
    stateless_p99_ms: float

    @property
    def extra_p50_ms(self) -> float:
        return self.stateless_p50_ms - self.stateful_p50_ms

    @property
    def extra_p99_ms(self) -> float:
        return self.stateless_p99_ms - self.stateful_p99_ms

    def to_json(self) -> dict[str, object]:
        return {"scenario": self.scenario, "window": self.window,
                "stateful_p50_ms": _num(self.stateful_p50_ms), "stateless_p50_ms": _num(self.stateless_p50_ms),
                "stateful_p99_ms": _num(self.stateful_p99_ms), "stateless_p99_ms": _num(self.stateless_p99_ms),
                "extra_p50_ms": _num(self.extra_p50_ms), "extra_p99_ms": _num(self.extra_p99_ms)}


@dataclass(frozen=True)
class RunInputs:
    scenarios: tuple[str, ...]
    apps: tuple[str, ...]
    quick: bool
    seed: int
    users: int | None
    lb: str
    target: str | None
    run_dir: str
    side_by_side: bool = False

    def to_json(self) -> dict[str, object]:
        return {"scenarios": list(self.scenarios), "apps": list(self.apps), "quick": self.quick, "seed": self.seed,
                "users": self.users, "lb": self.lb, "target": self.target, "run_dir": self.run_dir,
                "side_by_side": self.side_by_side}


@dataclass(frozen=True)
class RunReport:
    """A whole `statelab run`: inputs, environment, results; what the JSON/JUnit/HTML reports read."""

    inputs: RunInputs
    started_at: str
    wall_s: float
    versions: tuple[tuple[str, str], ...]
    results: tuple[ScenarioResult, ...]
    scenario_wall_s: tuple[tuple[str, float], ...] = ()

    @property
    def exit_code(self) -> int:
        return exit_code(self.results)

    def prices(self) -> tuple[StatelessPrice, ...]:
        return stateless_prices(self.results)

    def to_json(self) -> dict[str, object]:
        return {"statelab_journal": 1, "inputs": self.inputs.to_json(), "started_at": self.started_at,
                "wall_s": round(self.wall_s, 3), "versions": dict(self.versions), "exit_code": self.exit_code,
                "results": [r.to_json() for r in self.results], "prices": [p.to_json() for p in self.prices()],
                "scenario_wall_s": dict(self.scenario_wall_s)}


# --- pure logic: judging, exit codes, prices ------------------------------------------------------

def judge(m: Measurements, tolerances: Sequence[Tolerance], preconditions: Sequence[Tolerance] = (),
          survived_because: str = "", reproduced_because: str = "") -> Verdict:
    """Return the verdict for measurements: survived iff every tolerance holds.

    Preconditions say the measurement means something (traffic flowed, users logged in); when one
    fails the outcome is `error`: the scenario broke, not the design.
    """
    for pre in preconditions:
        value = m.value(pre.figure)
        if math.isnan(value):
            return Verdict("error", f"the measurement is not meaningful: {pre.figure} was not measured"
                                    + (f" ({pre.why})" if pre.why else ""))
        if not pre.holds(value):
            return Verdict("error", f"the measurement is not meaningful: needed {pre.describe()}, "
                                    f"measured {_fmt(value)}" + (f" ({pre.why})" if pre.why else ""))
    # A figure the run did not measure breaks no tolerance: the verdict cannot be given at all.
    missing = [t.figure for t in tolerances if math.isnan(m.value(t.figure))]
    if missing:
        return Verdict("error", f"no verdict: the run did not measure {', '.join(dict.fromkeys(missing))}, "
                                f"which the tolerances need")
    checks = tuple(Check(t, m.value(t.figure), t.holds(m.value(t.figure))) for t in tolerances)
    broken = [c for c in checks if not c.held]
    if not broken:
        held = ", ".join(f"{c.tolerance.figure} = {_fmt(c.value)}" for c in checks)
        return Verdict("survived", " ".join(s for s in (survived_because, f"Within tolerance: {held}.") if s), checks)
    worst = "; ".join(f"{c.tolerance.figure} = {_fmt(c.value)} (tolerance {c.tolerance.op} {_fmt(c.tolerance.limit)}"
                      + (f": {c.tolerance.why}" if c.tolerance.why and c is not checks[0] else "") + ")"
                      for c in broken)
    # The scenario's story applies when its main tolerance broke; otherwise only the facts do.
    story = reproduced_because if checks and not checks[0].held else ""
    return Verdict("reproduced", " ".join(s for s in (story, f"Out of tolerance: {worst}.") if s), checks)


def exit_code(results: Iterable[ScenarioResult]) -> int:
    """Return 2 if any case errored, else 1 if any deviated from its expectation, else 0."""
    results = list(results)
    if not results or any(r.outcome == "error" for r in results):
        return EXIT_ERROR
    if any(not r.matched for r in results):
        return EXIT_DEVIATED
    return EXIT_OK


def matches(outcome: Outcome, expected: Finding | None) -> bool:
    """Return whether an outcome is what was expected (an error never matches; None accepts any finding)."""
    if outcome == "error":
        return False
    return expected is None or outcome == expected


def stateless_prices(results: Iterable[ScenarioResult]) -> tuple[StatelessPrice, ...]:
    """Pair each scenario's stateful and stateless (plain, no variant) latencies."""
    by_key = {(r.scenario, r.app, r.variant): r for r in results}
    prices = []
    for (scenario, app, variant), r in by_key.items():
        if app != "stateful" or variant:
            continue
        other = by_key.get((scenario, "stateless", ""))
        if other is None:
            continue
        mine, theirs = r.measurements.latency, other.measurements.latency
        if mine.requests == 0 or theirs.requests == 0:
            continue
        prices.append(StatelessPrice(scenario, mine.window, mine.p50_ms, theirs.p50_ms, mine.p99_ms, theirs.p99_ms))
    return tuple(prices)


def percentile(values: Sequence[float], q: float) -> float:
    """Return the q-th percentile (0-100) of values by nearest rank; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[min(rank, len(ordered)) - 1])


# --- the scenario protocol -------------------------------------------------------------------------

class Progress(Protocol):
    """Where a running scenario reports what it is doing (the report module renders it live)."""

    def phase(self, text: str) -> None: ...

    def watch(self, counters: Callable[[], str] | None) -> None: ...


@dataclass(frozen=True)
class Profile:
    """How big and how long a scenario runs; `quick` profiles keep `statelab run all --quick` near a minute."""

    users: int
    instances: int
    phase_s: float
    extra: tuple[tuple[str, float], ...] = ()
    seed_users: int = SEED_USERS

    def get(self, name: str, default: float = 0.0) -> float:
        return dict(self.extra).get(name, default)


def scale_profile(full: int, quick: bool, quick_value: int, users: int | None) -> int:
    """Return a profile's user count: --users if given, else the quick or the full value."""
    if users is not None:
        return users
    return quick_value if quick else full


@dataclass(frozen=True)
class CaseContext:
    """Everything one case of a scenario runs with, passed explicitly to `Scenario.run`.

    Like Locust's `Environment`, it is handed over, never looked up: the app case, its profile and
    seed, where its logs go, which balancer engine (or which running deployment, `target`) it
    drives, where it reports progress, its `turn` (when it may send traffic, and the run's
    abort signal), and the run's shared `stores` its lab takes a tenancy on.
    """

    app: AppCase
    profile: Profile
    seed: int
    run_dir: Path
    progress: Progress
    lb: str = "builtin"
    target: Target | None = None
    turn: Turn = field(default_factory=Turn.solo)
    stores: SharedStores | None = None  # the run's shared backing stores (None: each lab starts its own)


class Scenario(Protocol):
    """A disaster to replay: its name, story and tolerances, its cases, how it runs one, and its verdict.

    `traffic` says how its cases, run side by side, send traffic: `in-turns` (one case after the
    other: it measures latency) or `together` (it counts losses); see `statelab.turns`. The runner
    reads it with `in-turns` as the default.
    """

    @property
    def name(self) -> str: ...

    @property
    def title(self) -> str: ...

    @property
    def summary(self) -> str: ...

    @property
    def expect(self) -> dict[str, Finding]: ...

    @property
    def tolerances(self) -> tuple[Tolerance, ...]: ...

    def profile(self, quick: bool, users: int | None) -> Profile: ...

    def cases(self) -> tuple[AppCase, ...]: ...

    def run(self, ctx: CaseContext) -> Measurements: ...

    def verdict(self, measurements: Measurements) -> Verdict: ...


def default_cases(expect: dict[str, Finding]) -> tuple[AppCase, ...]:
    return tuple(AppCase(app, expect=expect.get(app)) for app in APP_KINDS)


@dataclass(frozen=True)
class Registry:
    """Every scenario by name, each in one named group, in the order `statelab list` shows them.

    `statelab run NAME` takes a scenario's name or a group's; `all` is the first group (the classic
    disasters), so adding a group never changes what `statelab run all` means.
    """

    entries: tuple[tuple[str, Scenario], ...]  # (group, scenario)

    def __post_init__(self) -> None:
        names = [s.name for _, s in self.entries]
        if len(set(names)) != len(names):
            raise ValueError(f"scenario names must be unique: {names}")
        if set(names) & set(self.groups()) or ALL in names:
            raise ValueError("a scenario cannot be named like a group or `all`")

    def __iter__(self) -> Iterator[Scenario]:
        return (s for _, s in self.entries)

    def groups(self) -> tuple[str, ...]:
        """Return the group names, in order of registration."""
        return tuple(dict.fromkeys(g for g, _ in self.entries))

    def group(self, name: str) -> tuple[Scenario, ...]:
        """Return a group's scenarios (`all`: the first group's)."""
        if name == ALL:
            name = self.groups()[0] if self.entries else name
        return tuple(s for g, s in self.entries if g == name)

    def get(self, name: str) -> Scenario | None:
        """Return the scenario called name, or None."""
        return next((s for s in self if s.name == name), None)

    def find(self, name: str) -> tuple[Scenario, ...]:
        """Return what `statelab run name` runs: a group's scenarios, or one scenario; ConfigError otherwise."""
        chosen = self.group(name) or tuple(s for s in (self.get(name),) if s is not None)
        if not chosen:
            raise ConfigError(f"no scenario {name!r}: choose one of {', '.join(s.name for s in self)}, "
                              f"a group ({', '.join(self.groups())}), or {ALL}")
        return chosen


# --- small helpers ---------------------------------------------------------------------------------

def _num(value: float) -> float | None:
    """Return a JSON-safe number (NaN becomes null), rounded for stable journals."""
    if value is None or (isinstance(value, float) and (math.isnan(value) or math.isinf(value))):
        return None
    return round(float(value), 4)


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.3g}"


__all__ = [
    "ALL", "AppCase", "CaseContext", "Check", "Event", "Figure", "Finding", "InstanceFigures", "Latency",
    "Measurements", "OUTCOMES", "Outcome", "Profile", "Progress", "Registry", "RunInputs", "RunReport", "Scenario",
    "ScenarioResult", "Series", "StatelessPrice", "Target", "Tolerance", "Verdict", "default_cases", "exit_code",
    "judge", "matches", "percentile", "scale_profile", "stateless_prices",
]
