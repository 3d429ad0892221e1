"""The JSON journal round-trips exactly and the JUnit XML has the shape CI tools read."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

from statelab.events import Event
from statelab.report import journal
from statelab.runner import NullProgress, RunOptions, run_all
from statelab.scenario import (AppCase, CaseContext, Check, Figure, InstanceFigures, Latency, Measurements, Profile,
                               RunInputs, RunReport, ScenarioResult, Series, Tolerance, Verdict, judge, matches)


def sample_run() -> RunReport:
    tol = Tolerance("users_logged_out", "<=", 0, "nobody logged out")
    results = (
        ScenarioResult("rolling-deploy", AppCase("stateful", expect="reproduced"),
                       Measurements((Figure("users_logged_out", "users logged out", 41, "users"),
                                     Figure("p99_ms", "p99", math.nan, "ms")),
                                    Latency(2.5, 11.0, 900, "before the deploy"),
                                    (Event(1.5, "phase", "rolling deploy"), Event(2.0, "draining", "app-1")),
                                    (Series("requests", "req/s", ((0.0, 120.0), (1.0, 130.0))),),
                                    (InstanceFigures("app-1", 500, 0.5, 0, 2.0, 9.0),), ("a note",)),
                       Verdict("reproduced", "Each restart threw away sessions.", (Check(tol, 41, False),)),
                       7.25, "/tmp/x"),
        ScenarioResult("rolling-deploy", AppCase("stateless", expect="survived"),
                       Measurements((Figure("users_logged_out", "users logged out", 0, "users"),),
                                    Latency(3.0, 12.5, 880, "before the deploy")),
                       Verdict("reproduced", "1 failed request."), 6.0),
        ScenarioResult("cold-cache-autoscale", AppCase("stateless", "no stampede protection"), Measurements(()),
                       Verdict("reproduced", ""), 5.0),
        ScenarioResult("nat-hotspot", AppCase("stateful", expect="reproduced"), Measurements(()),
                       Verdict("error", "postgres did not start\ntail"), 1.0),
    )
    inputs = RunInputs(("rolling-deploy",), ("stateful", "stateless"), True, 1, None, "builtin", None, "/tmp/run")
    return RunReport(inputs, "2026-01-01T00:00:00+0000", 19.25, (("python", "3.11.9"), ("flask", "3.0.0")), results)


def test_json_round_trip_is_exact() -> None:
    run = sample_run()
    text = journal.dumps(run)
    again = journal.from_json(json.loads(text))
    assert journal.dumps(again) == text
    assert again.results[0].measurements.series[0].points == ((0.0, 120.0), (1.0, 130.0))
    assert math.isnan(again.results[0].figure("p99_ms"))


def test_json_has_inputs_versions_results_prices_and_no_nan(tmp_path: Path) -> None:
    path = tmp_path / "out" / "journal.json"
    journal.write_json(sample_run(), path)
    doc = json.loads(path.read_text())
    assert doc["inputs"]["seed"] == 1 and doc["versions"]["python"] == "3.11.9"
    assert doc["exit_code"] == 2
    assert doc["results"][0]["figures"][1]["value"] is None
    assert [r["matched"] for r in doc["results"]] == [True, False, True, False]
    assert doc["prices"] == [{"scenario": "rolling-deploy", "window": "before the deploy", "stateful_p50_ms": 2.5,
                              "stateless_p50_ms": 3.0, "stateful_p99_ms": 11.0, "stateless_p99_ms": 12.5,
                              "extra_p50_ms": 0.5, "extra_p99_ms": 1.5}]
    assert journal.read_json(path) == journal.from_json(doc)


def test_junit_one_case_per_scenario_and_app(tmp_path: Path) -> None:
    path = tmp_path / "junit.xml"
    journal.write_junit(sample_run(), path)
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites" and root.get("tests") == "4"
    assert root.get("failures") == "1" and root.get("errors") == "1"
    cases = {(c.get("classname"), c.get("name")): c for c in root.iter("testcase")}
    assert set(cases) == {("statelab.rolling-deploy", "stateful"), ("statelab.rolling-deploy", "stateless"),
                          ("statelab.cold-cache-autoscale", "stateless (no stampede protection)"),
                          ("statelab.nat-hotspot", "stateful")}
    assert cases[("statelab.rolling-deploy", "stateful")].find("failure") is None
    failure = cases[("statelab.rolling-deploy", "stateless")].find("failure")
    assert failure is not None and failure.get("message") == "expected survived, got reproduced"
    error = cases[("statelab.nat-hotspot", "stateful")].find("error")
    assert error is not None and error.get("message") == "postgres did not start"
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    assert suites["rolling-deploy"].get("failures") == "1"


class _Broken:
    """A scenario that breaks in run() and one that measures: the runner keeps them apart."""

    name = "fake"
    title = "fake"
    summary = "fake"
    expect = {"stateful": "reproduced", "stateless": "survived"}
    tolerances = (Tolerance("x", "<=", 0),)

    def cases(self) -> tuple[AppCase, ...]:
        return (AppCase("stateful", expect="reproduced"), AppCase("stateless", expect="survived"))

    def profile(self, quick: bool, users: int | None) -> Profile:
        return Profile(users=1, instances=1, phase_s=0.0)

    def run(self, ctx: CaseContext) -> Measurements:
        if ctx.app.app == "stateful":
            raise RuntimeError("server did not start")
        return Measurements((Figure("x", "x", 0),))

    def verdict(self, m: Measurements) -> Verdict:
        return judge(m, self.tolerances)


def test_runner_turns_a_broken_scenario_into_an_error_and_keeps_going(tmp_path: Path) -> None:
    run = run_all(RunOptions("fake", run_dir=tmp_path), NullProgress(), scenarios=[_Broken()])
    assert [r.outcome for r in run.results] == ["error", "survived"]
    assert run.results[0].verdict.explanation == "RuntimeError: server did not start"
    assert run.results[1].matched and matches("survived", "survived")
    assert run.exit_code == 2
    root = journal.junit_xml(run)
    assert root.get("errors") == "1" and root.get("failures") == "0"
