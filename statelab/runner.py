"""The runner behind `statelab run`: find the chosen scenarios, run each case in a fresh lab, build the report.

It owns how cases run (one after another, or side by side with `statelab.turns`), turns a broken
scenario into an `error` result, and records the environment a run depends on.
"""

from __future__ import annotations

import importlib
import logging
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable, Sequence

from statelab.errors import ConfigError, LabError
from statelab.report import journal
from statelab.report import scenarios as report
from statelab.scenario import (APPS, AppCase, Progress, RunInputs, RunReport, Scenario, ScenarioResult, Target,
                               matches)
from statelab.turns import ABORT, Turns, bind_case, case_waited_s, reset_case_wait, unbind_case

log = logging.getLogger(__name__)

SCENARIO_MODULES = ("rolling_deploy", "nat_hotspot", "local_disk_upload", "cold_cache_autoscale")
PACKAGES_IN_JOURNAL = ("statelab", "flask", "gunicorn", "redis", "psycopg", "rq", "minio", "httptools", "uvloop",
                       "rich")


# --- choosing scenarios ----------------------------------------------------------------------------

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


# --- progress plumbing ------------------------------------------------------------------------------

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


def _case_progress(progress: Progress, key: str) -> Progress:
    return CaseProgress(progress, key) if hasattr(progress, "case_phase") else progress


# --- running ----------------------------------------------------------------------------------------

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
    reset_case_wait()
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
                              reason, clock() - t0 - case_waited_s(), run_dir=str(case_dir))
    finally:
        progress.watch(None)
    return ScenarioResult(scenario.name, case.app, case.variant, v.outcome, case.expect,
                          matches(v.outcome, case.expect), m.figures, v.explanation,
                          clock() - t0 - case_waited_s(), v.checks,
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


def _run_turn(turns: Turns, i: int, scenario: Scenario, case: AppCase, opts: RunOptions,
              progress: Progress) -> ScenarioResult:
    bind_case(turns, i)
    try:
        return run_case(scenario, case, opts, progress)
    finally:
        turns.done(i)
        unbind_case()


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


# --- the command --------------------------------------------------------------------------------------

def run_from_cli(opts: RunOptions) -> int:
    """Run what `statelab run` asked for, render it, write the journals; return the exit code."""
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


__all__ = ["CaseProgress", "NullProgress", "RunOptions", "all_scenarios", "find_scenarios", "run_all", "run_case",
           "run_from_cli", "versions"]
