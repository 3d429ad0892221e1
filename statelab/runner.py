"""The runner behind `statelab run`: find the chosen scenarios, run each case in a fresh lab, build the report.

It owns how cases run (one after another, or side by side with `statelab.turns`), hands each case
its `CaseContext`, turns a broken scenario into an `error` result, and records the environment a
run depends on. Which scenarios exist is the `scenarios` package's registry.
"""

from __future__ import annotations

import logging
import platform
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable, Sequence

from scenarios import REGISTRY
from statelab.config import APP_KINDS
from statelab.errors import ConfigError, LabError
from statelab.report import html, journal
from statelab.report import scenarios as report
from statelab.scenario import (AppCase, CaseContext, Measurements, Progress, RunInputs, RunReport, Scenario,
                               ScenarioResult, Target, Verdict)
from statelab.stores import SharedStores
from statelab.turns import IN_TURNS, Turn, Turns

log = logging.getLogger(__name__)

PACKAGES_IN_JOURNAL = ("statelab", "flask", "gunicorn", "redis", "psycopg", "rq", "minio", "httptools", "uvloop",
                       "rich")


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
    parallel: bool = True  # start a scenario's labs together (traffic in turns, or together: Scenario.traffic)
    share_stores: bool = True  # one PostgreSQL, Redis and S3 for the whole run, a clean tenancy per lab

    @property
    def side_by_side(self) -> bool:
        return self.parallel


def case_context(scenario: Scenario, case: AppCase, opts: RunOptions, progress: Progress,
                 turn: Turn | None = None, stores: SharedStores | None = None) -> CaseContext:
    """Return the context one case of scenario runs with under opts."""
    return CaseContext(app=case, profile=scenario.profile(opts.quick, opts.users), seed=opts.seed,
                       run_dir=(opts.run_dir / scenario.name / case.key).resolve(), progress=progress, lb=opts.lb,
                       target=Target(opts.target, opts.target_admin) if opts.target else None,
                       turn=turn or Turn.solo(), stores=stores)


def run_case(scenario: Scenario, ctx: CaseContext, clock: Callable[[], float] = time.monotonic) -> ScenarioResult:
    """Run one scenario x app case; turn any failure of the scenario itself into an `error` result."""
    t0 = clock()
    case = ctx.app
    try:
        m = scenario.run(ctx)
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
        m, v = Measurements(()), Verdict("error", reason)
    finally:
        ctx.progress.watch(None)
        delete_case_data(ctx.run_dir)
    return ScenarioResult(scenario.name, case, m, v, clock() - t0 - ctx.turn.waited_s, str(ctx.run_dir))


# What a finished case's lab stored (the users' uploads on each instance's disk and in S3, and the
# database's files when PostgreSQL runs unprivileged): measured already, never read again. Logs stay.
CASE_DATA_DIRS = ("uploads", "s3", "postgres")


def delete_case_data(run_dir: Path) -> None:
    """Delete what a case's lab stored in its run directory once the case is over (its logs stay)."""
    for name in CASE_DATA_DIRS:
        shutil.rmtree(run_dir / name, ignore_errors=True)


def find_scenarios(name: str) -> list[Scenario]:
    """Return what `statelab run name` runs (a scenario, a group, or all): the registry's answer."""
    return list(REGISTRY.find(name))


def run_all(opts: RunOptions, progress: Progress, on_result: Callable[[ScenarioResult], None] = lambda r: None,
            scenarios: Sequence[Scenario] | None = None) -> RunReport:
    """Run the chosen scenarios against the chosen apps, stateful first, each case in a fresh lab.

    The labs share the run's backing stores (started once, on first use), each on a clean tenancy
    of its own, unless opts.share_stores is off.
    """
    chosen = list(scenarios) if scenarios is not None else find_scenarios(opts.scenario)
    apps = APP_KINDS if opts.app == "both" else (opts.app,)
    started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    t0 = time.monotonic()
    results: list[ScenarioResult] = []
    walls: list[tuple[str, float]] = []
    stores = SharedStores(opts.run_dir / "stores") if opts.share_stores and not opts.target else None
    try:
        for scenario in chosen:
            t_scenario = time.monotonic()
            cases = [c for c in scenario.cases() if c.app in apps and (c.in_quick or not opts.quick)]
            if opts.side_by_side and len(cases) > 1:
                done = _run_side_by_side(scenario, cases, opts, progress, on_result, stores)
            else:
                done = []
                for case in cases:
                    ctx = case_context(scenario, case, opts, _case_progress(progress, case.key), stores=stores)
                    done.append(run_case(scenario, ctx))
                    on_result(done[-1])
            results.extend(done)
            walls.append((scenario.name, round(time.monotonic() - t_scenario, 3)))
    finally:
        if stores is not None:
            stores.stop()
    inputs = RunInputs(tuple(s.name for s in chosen), tuple(apps), opts.quick, opts.seed, opts.users, opts.lb,
                       opts.target, str(opts.run_dir), opts.side_by_side)
    return RunReport(inputs, started_at, time.monotonic() - t0, versions(), tuple(results), tuple(walls))


def _run_turn(scenario: Scenario, ctx: CaseContext) -> ScenarioResult:
    try:
        return run_case(scenario, ctx)
    finally:
        ctx.turn.done()


def _run_side_by_side(scenario: Scenario, cases: Sequence[AppCase], opts: RunOptions, progress: Progress,
                      on_result: Callable[[ScenarioResult], None],
                      stores: SharedStores | None = None) -> list[ScenarioResult]:
    """Start every case's lab at once, then let the cases send traffic one after the other, or together
    when the scenario says so (`traffic`, see Turns).

    On Ctrl-C, the turns' abort signal tells the cases to stop waiting; we wait for their cleanup
    before re-raising.
    """
    turns = Turns(len(cases), threading.Event(), traffic=getattr(scenario, "traffic", IN_TURNS))
    contexts = [case_context(scenario, c, opts, _case_progress(progress, c.key), turns.turn(i), stores)
                for i, c in enumerate(cases)]
    with ThreadPoolExecutor(max_workers=len(cases), thread_name_prefix="statelab-case") as pool:
        futures = [pool.submit(_run_turn, scenario, ctx) for ctx in contexts]
        try:
            results = [f.result() for f in futures]
        except BaseException:
            turns.abort.set()
            turns.wake()
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
        html.write_html(run, opts.html_path)
        report.wrote("HTML report", opts.html_path)
    return run.exit_code


__all__ = ["CASE_DATA_DIRS", "CaseProgress", "NullProgress", "RunOptions", "case_context", "delete_case_data",
           "find_scenarios", "run_all", "run_case", "run_from_cli", "versions"]
