"""Scenarios: the framework, the result types and the runner behind `statelab run`.

A scenario is setup (a lab), run (traffic plus a fault), measure, verdict. Its verdict is a pure
function of its measurements. `reproduced` and `survived` are findings; `error` means the scenario
itself broke and is never counted as one (chaostoolkit's "deviated" vs "failed").
"""

from __future__ import annotations

import importlib
import logging
import math
import platform
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterable, Protocol, Sequence

from statelab.errors import ConfigError, LabError, ScenarioError

log = logging.getLogger(__name__)

APPS = ("stateful", "stateless")
OUTCOMES = ("reproduced", "survived", "error")
EXIT_OK, EXIT_DEVIATED, EXIT_ERROR = 0, 1, 2
ABORT = threading.Event()  # set on Ctrl-C: running cases stop waiting and clean up
SCENARIO_MODULES = ("rolling_deploy", "nat_hotspot", "local_disk_upload", "cold_cache_autoscale")
PACKAGES_IN_JOURNAL = ("statelab", "flask", "gunicorn", "redis", "psycopg", "rq", "minio", "httptools", "uvloop",
                       "rich")


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
    outcome: str
    explanation: str
    checks: tuple[Check, ...] = ()


@dataclass(frozen=True)
class Event:
    """Something the lab or the scenario did, at t seconds since the case started."""

    t: float
    kind: str
    target: str
    detail: str = ""

    def to_json(self) -> dict[str, object]:
        return {"t": round(self.t, 3), "kind": self.kind, "target": self.target, "detail": self.detail}


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
    expect: str | None = None  # None: shown for comparison, not judged
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
    scenario: str
    app: str
    variant: str
    outcome: str
    expected: str | None
    matched: bool
    figures: tuple[Figure, ...]
    explanation: str
    wall_s: float
    checks: tuple[Check, ...] = ()
    latency: Latency = NO_LATENCY
    events: tuple[Event, ...] = ()
    series: tuple[Series, ...] = ()
    instances: tuple[InstanceFigures, ...] = ()
    notes: tuple[str, ...] = ()
    run_dir: str = ""

    @property
    def label(self) -> str:
        return f"{self.app} ({self.variant})" if self.variant else self.app

    def figure(self, name: str) -> float:
        return next((f.value for f in self.figures if f.name == name), math.nan)

    def to_json(self) -> dict[str, object]:
        return {
            "scenario": self.scenario, "app": self.app, "variant": self.variant, "outcome": self.outcome,
            "expected": self.expected, "matched": self.matched, "explanation": self.explanation,
            "wall_s": round(self.wall_s, 3), "figures": [f.to_json() for f in self.figures],
            "checks": [c.to_json() for c in self.checks], "latency": self.latency.to_json(),
            "events": [e.to_json() for e in self.events], "series": [s.to_json() for s in self.series],
            "instances": [i.to_json() for i in self.instances], "notes": list(self.notes), "run_dir": self.run_dir,
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
        if not pre.holds(value):
            return Verdict("error", f"the measurement is not meaningful: needed {pre.describe()}, "
                                    f"measured {_fmt(value)}" + (f" ({pre.why})" if pre.why else ""))
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


def matches(outcome: str, expected: str | None) -> bool:
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
        if other is None or r.latency.requests == 0 or other.latency.requests == 0:
            continue
        prices.append(StatelessPrice(scenario, r.latency.window, r.latency.p50_ms, other.latency.p50_ms,
                                     r.latency.p99_ms, other.latency.p99_ms))
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


class NullProgress:
    def phase(self, text: str) -> None:
        log.info("%s", text)

    def watch(self, counters: Callable[[], str] | None) -> None:
        pass

    def for_case(self, key: str) -> Progress:
        return self


class CaseProgress:
    """One case's view of a shared progress display (cases of a scenario may run side by side)."""

    def __init__(self, parent: object, key: str) -> None:
        self.parent = parent
        self.key = key

    def phase(self, text: str) -> None:
        self.parent.case_phase(self.key, text)  # type: ignore[attr-defined]

    def watch(self, counters: Callable[[], str] | None) -> None:
        self.parent.case_watch(self.key, counters)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Profile:
    """How big and how long a scenario runs; `quick` profiles keep `statelab run all --quick` near a minute."""

    users: int
    instances: int
    phase_s: float
    extra: tuple[tuple[str, float], ...] = ()
    seed_users: int = 5000

    def get(self, name: str, default: float = 0.0) -> float:
        return dict(self.extra).get(name, default)


class Scenario(Protocol):
    name: str
    title: str
    summary: str
    expect: dict[str, str]
    tolerances: tuple[Tolerance, ...]

    def profile(self, quick: bool, users: int | None) -> Profile: ...

    def cases(self) -> tuple[AppCase, ...]: ...

    def run(self, app: AppCase, profile: Profile, seed: int, lb: str, run_dir: Path, progress: Progress,
            target: Target | None = None) -> Measurements: ...

    def verdict(self, measurements: Measurements) -> Verdict: ...


def default_cases(expect: dict[str, str]) -> tuple[AppCase, ...]:
    return tuple(AppCase(app, expect=expect.get(app)) for app in APPS)


def all_scenarios() -> list[Scenario]:
    """Return every scenario, in the order `statelab run all` runs them."""
    found = []
    for mod in SCENARIO_MODULES:
        module = importlib.import_module(f"scenarios.{mod}")
        found.append(module.SCENARIO)
    return found


def find_scenarios(name: str) -> list[Scenario]:
    every = all_scenarios()
    if name == "all":
        return every
    chosen = [s for s in every if s.name == name]
    if not chosen:
        raise ConfigError(f"no scenario {name!r}: choose one of {', '.join(s.name for s in every)}, or all")
    return chosen


# --- the runner -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunOptions:
    scenario: str
    app: str = "both"
    quick: bool = False
    seed: int = 1
    users: int | None = None
    lb: str = "builtin"
    json_path: Path | None = None
    junit_path: Path | None = None
    html_path: Path | None = None
    run_dir: Path = Path(".statelab/runs/run")
    target: str | None = None
    target_admin: str | None = None
    parallel: bool = True  # start a scenario's labs together (traffic still runs one case at a time)

    @property
    def side_by_side(self) -> bool:
        return self.parallel


def run_case(scenario: Scenario, case: AppCase, opts: RunOptions, progress: Progress,
             clock: Callable[[], float] = time.monotonic) -> ScenarioResult:
    """Run one scenario x app case; turn any failure of the scenario itself into an `error` result."""
    t0 = clock()
    _case.waited_s = 0.0
    case_dir = (opts.run_dir / scenario.name / case.key).resolve()
    target = Target(opts.target, opts.target_admin) if opts.target else None
    profile = scenario.profile(opts.quick, opts.users)
    try:
        m = scenario.run(case, profile, opts.seed, opts.lb, case_dir, progress, target=target)
        v = scenario.verdict(m)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # the scenario broke: report it as an error, never as a finding
        if isinstance(exc, LabError):  # a message written for the user; the report shows it
            log.info("%s on %s: %s", scenario.name, case.label, exc)
            reason = str(exc)
        else:
            log.exception("%s on %s failed", scenario.name, case.label)
            reason = f"{type(exc).__name__}: {exc}"
        return ScenarioResult(scenario.name, case.app, case.variant, "error", case.expect, False, (),
                              reason, clock() - t0 - _case.waited_s, run_dir=str(case_dir))
    finally:
        progress.watch(None)
    return ScenarioResult(scenario.name, case.app, case.variant, v.outcome, case.expect,
                          matches(v.outcome, case.expect), m.figures, v.explanation, clock() - t0 - _case.waited_s,
                          v.checks,
                          m.latency, m.events, m.series, m.instances, m.notes, str(case_dir))


def run_all(opts: RunOptions, progress: Progress, on_result: Callable[[ScenarioResult], None] = lambda r: None,
            scenarios: Sequence[Scenario] | None = None) -> RunReport:
    """Run the chosen scenarios against the chosen apps, stateful first, each in a fresh lab."""
    chosen = list(scenarios) if scenarios is not None else find_scenarios(opts.scenario)
    apps = APPS if opts.app == "both" else (opts.app,)
    started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    t0 = time.monotonic()
    results: list[ScenarioResult] = []
    walls: list[tuple[str, float]] = []
    ABORT.clear()
    for scenario in chosen:
        t_scenario = time.monotonic()
        cases = [c for c in scenario.cases() if c.app in apps and (c.in_quick or not opts.quick)]
        if opts.side_by_side and len(cases) > 1:
            done = _run_side_by_side(scenario, cases, opts, progress, on_result)
        else:
            done = []
            for case in cases:
                done.append(run_case(scenario, case, opts, _case_progress(progress, case.key)))
                on_result(done[-1])
        results.extend(done)
        walls.append((scenario.name, round(time.monotonic() - t_scenario, 3)))
    inputs = RunInputs(tuple(s.name for s in chosen), tuple(apps), opts.quick, opts.seed, opts.users, opts.lb,
                       opts.target, str(opts.run_dir), opts.side_by_side)
    return RunReport(inputs, started_at, time.monotonic() - t0, versions(), tuple(results), tuple(walls))


TURN_TIMEOUT_S = 600.0
_case = threading.local()


class Turns:
    """Let a scenario's cases start their labs together but send traffic one at a time, in order.

    Starting labs is most of a case's time and costs little CPU once done; measuring must not
    overlap, or one app's latency would include the other's load. Case i sends traffic when every
    lab is up (or failed) and cases 0..i-1 have finished their traffic.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self.ready: set[int] = set()
        self.next = 0
        self.cv = threading.Condition()

    def lab_ready(self, i: int) -> None:
        with self.cv:
            self.ready.add(i)
            self.cv.notify_all()

    def wait_turn(self, i: int) -> None:
        with self.cv:
            self.ready.add(i)
            self.cv.notify_all()
            t0 = time.monotonic()
            ok = self.cv.wait_for(lambda: ABORT.is_set() or (len(self.ready) >= self.n and self.next >= i),
                                  timeout=TURN_TIMEOUT_S)
            _case.waited_s = getattr(_case, "waited_s", 0.0) + time.monotonic() - t0
        if ABORT.is_set():
            raise KeyboardInterrupt
        if not ok:
            raise ScenarioError(f"waited {TURN_TIMEOUT_S:.0f} s for the other cases of this scenario")

    def done(self, i: int) -> None:
        with self.cv:
            self.ready.add(i)
            self.next = max(self.next, i + 1)
            self.cv.notify_all()


def case_lab_ready() -> None:
    """Tell the runner this thread's case has its lab up (no-op outside side-by-side runs)."""
    turns = getattr(_case, "turns", None)
    if turns is not None:
        turns.lab_ready(_case.index)


def case_wait_turn() -> None:
    """Block until this case may send traffic (no-op outside side-by-side runs)."""
    turns = getattr(_case, "turns", None)
    if turns is not None:
        turns.wait_turn(_case.index)


def case_traffic_done() -> None:
    """Let the next case send traffic (no-op outside side-by-side runs)."""
    turns = getattr(_case, "turns", None)
    if turns is not None:
        turns.done(_case.index)


def _run_turn(turns: Turns, i: int, scenario: Scenario, case: AppCase, opts: RunOptions,
              progress: Progress) -> ScenarioResult:
    _case.turns, _case.index, _case.waited_s = turns, i, 0.0
    try:
        return run_case(scenario, case, opts, progress)
    finally:
        turns.done(i)
        _case.turns = None


def _case_progress(progress: Progress, key: str) -> Progress:
    return CaseProgress(progress, key) if hasattr(progress, "case_phase") else progress


def _run_side_by_side(scenario: Scenario, cases: Sequence[AppCase], opts: RunOptions, progress: Progress,
                      on_result: Callable[[ScenarioResult], None]) -> list[ScenarioResult]:
    """Start every case's lab at once, then let the cases send traffic one after the other (see Turns).

    On Ctrl-C, ABORT tells the cases to stop waiting; we wait for their cleanup before re-raising.
    """
    turns = Turns(len(cases))
    with ThreadPoolExecutor(max_workers=len(cases), thread_name_prefix="statelab-case") as pool:
        futures = [pool.submit(_run_turn, turns, i, scenario, c, opts, _case_progress(progress, c.key))
                   for i, c in enumerate(cases)]
        try:
            results = [f.result() for f in futures]
        except BaseException:
            ABORT.set()
            raise
    for r in results:
        on_result(r)
    return results


def versions() -> tuple[tuple[str, str], ...]:
    """Return the versions of python, the platform and the packages a result depends on."""
    found = [("python", platform.python_version()), ("platform", platform.platform())]
    for pkg in PACKAGES_IN_JOURNAL:
        try:
            found.append((pkg, metadata.version(pkg)))
        except metadata.PackageNotFoundError:
            found.append((pkg, "not installed"))
    return tuple(found)


def run_from_cli(opts: RunOptions) -> int:
    """Run what `statelab run` asked for, render it, write the journals; return the exit code."""
    from statelab.report import journal
    from statelab.report import scenarios as report

    chosen = find_scenarios(opts.scenario)
    if opts.target and opts.app == "both":
        raise ConfigError("with --target, say which app that deployment runs: --app stateful or --app stateless")
    opts.run_dir.mkdir(parents=True, exist_ok=True)
    with report.LiveProgress() as progress:
        run = run_all(opts, progress, on_result=progress.done, scenarios=chosen)
    report.run_report(run, {s.name: s for s in chosen})
    if opts.json_path:
        journal.write_json(run, opts.json_path)
        report.wrote("JSON journal", opts.json_path)
    if opts.junit_path:
        journal.write_junit(run, opts.junit_path)
        report.wrote("JUnit XML", opts.junit_path)
    if opts.html_path:
        try:
            html = importlib.import_module("statelab.report.html")
        except ImportError:
            report.notice("--html: the HTML report (statelab.report.html) is not part of this build yet; skipped")
        else:
            html.write_html(run, opts.html_path)
            report.wrote("HTML report", opts.html_path)
    return run.exit_code


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
    "AppCase", "Check", "Event", "Figure", "InstanceFigures", "Latency", "Measurements", "Profile", "Progress",
    "RunOptions", "RunReport", "Scenario", "ScenarioResult", "Series", "StatelessPrice", "Target", "Tolerance",
    "Verdict", "all_scenarios", "exit_code", "judge", "matches", "percentile", "run_all", "run_from_cli",
]
