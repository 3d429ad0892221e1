"""The run's records on disk: the JSON journal (and reading it back) and JUnit XML for CI.

JUnit: one testcase per scenario x app; a deviation from the expectation is a <failure>, a
scenario that broke is an <error>, and a case with no expectation (a comparison column) passes.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from statelab.events import Event
from statelab.scenario import (AppCase, Check, Figure, InstanceFigures, Latency, Measurements, RunInputs, RunReport,
                               ScenarioResult, Series, Tolerance, Verdict)


def dumps(run: RunReport) -> str:
    """Return the journal as stable JSON text (sorted keys, no NaN)."""
    return json.dumps(run.to_json(), indent=2, sort_keys=True, allow_nan=False) + "\n"


def write_json(run: RunReport, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(dumps(run))
    tmp.replace(path)


def read_json(path: Path) -> RunReport:
    return from_json(json.loads(path.read_text()))


def _f(v: Any) -> float:
    return math.nan if v is None else float(v)


def result_from_json(d: dict[str, Any]) -> ScenarioResult:
    """Rebuild a ScenarioResult from its to_json() form (`matched` follows from outcome and expected)."""
    lat = d["latency"]
    measurements = Measurements(
        figures=tuple(Figure(f["name"], f["label"], _f(f["value"]), f["unit"]) for f in d["figures"]),
        latency=Latency(_f(lat["p50_ms"]), _f(lat["p99_ms"]), lat["requests"], lat["window"]),
        events=tuple(Event(e["t"], e["kind"], e["target"], e["detail"]) for e in d["events"]),
        series=tuple(Series(s["name"], s["unit"], tuple((float(t), _f(v)) for t, v in s["points"]))
                     for s in d["series"]),
        instances=tuple(InstanceFigures(i["instance"], i["requests"], _f(i["share"]), i["errors"], _f(i["p50_ms"]),
                                        _f(i["p99_ms"]), i["note"]) for i in d["instances"]),
        notes=tuple(d["notes"]),
    )
    verdict = Verdict(d["outcome"], d["explanation"],
                      tuple(Check(Tolerance(c["tolerance"]["figure"], c["tolerance"]["op"], _f(c["tolerance"]["limit"]),
                                            c["tolerance"]["why"]), _f(c["value"]), c["held"]) for c in d["checks"]))
    return ScenarioResult(d["scenario"], AppCase(d["app"], d["variant"], expect=d["expected"]), measurements, verdict,
                          d["wall_s"], d["run_dir"])


def from_json(d: dict[str, Any]) -> RunReport:
    """Rebuild a RunReport from a journal (what an HTML report or a later comparison reads)."""
    i = d["inputs"]
    inputs = RunInputs(tuple(i["scenarios"]), tuple(i["apps"]), i["quick"], i["seed"], i["users"], i["lb"],
                       i["target"], i["run_dir"], i.get("side_by_side", False))
    return RunReport(inputs, d["started_at"], d["wall_s"], tuple(d["versions"].items()),
                     tuple(result_from_json(r) for r in d["results"]),
                     tuple((k, float(v)) for k, v in d.get("scenario_wall_s", {}).items()))


def junit_xml(run: RunReport) -> ET.Element:
    """Return a <testsuites> element with one <testsuite> per scenario and one <testcase> per app."""
    root = ET.Element("testsuites", name="statelab", tests=str(len(run.results)), time=f"{run.wall_s:.3f}")
    by_scenario: dict[str, list[ScenarioResult]] = {}
    for r in run.results:
        by_scenario.setdefault(r.scenario, []).append(r)
    totals = {"failures": 0, "errors": 0}
    for scenario, results in by_scenario.items():
        failures = sum(1 for r in results if r.outcome != "error" and not r.matched)
        errors = sum(1 for r in results if r.outcome == "error")
        totals["failures"] += failures
        totals["errors"] += errors
        suite = ET.SubElement(root, "testsuite", name=scenario, tests=str(len(results)), failures=str(failures),
                              errors=str(errors), skipped="0", time=f"{sum(r.wall_s for r in results):.3f}")
        for r in results:
            case = ET.SubElement(suite, "testcase", classname=f"statelab.{scenario}", name=r.label,
                                 time=f"{r.wall_s:.3f}")
            figures = "\n".join(f"{f.label}: {f.value:g} {f.unit}".rstrip() for f in r.measurements.figures)
            why = r.verdict.explanation
            if r.outcome == "error":
                ET.SubElement(case, "error", message=why.splitlines()[0] if why else "error",
                              type="ScenarioError").text = why
            elif not r.matched:
                ET.SubElement(case, "failure", message=f"expected {r.expected}, got {r.outcome}",
                              type="Deviation").text = f"{why}\n\n{figures}"
            ET.SubElement(case, "system-out").text = f"outcome: {r.outcome}\n{why}\n\n{figures}"
    root.set("failures", str(totals["failures"]))
    root.set("errors", str(totals["errors"]))
    return root


def write_junit(run: RunReport, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tree = ET.ElementTree(junit_xml(run))
    ET.indent(tree)
    tree.write(path, encoding="utf-8", xml_declaration=True)
