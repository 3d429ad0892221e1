"""`statelab lint` output: findings as text for a person, JSON for scripts, SARIF 2.1.0 for code-scanning UIs."""

from __future__ import annotations

import json
import sys
from importlib import metadata
from typing import Any
from urllib.parse import quote

from statelab.lint import RULES, Finding, LintResult

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"


def text(result: LintResult) -> str:
    """Return one block per finding (where, what, the scenario that shows the damage) and a summary line."""
    out = []
    for f in result.findings:
        out.append(f"{f.location}: {f.severity} [{f.rule}] {f.subject}: {f.message}")
        out.append(f"    the damage, measured: {f.command}")
    errors = sum(f.severity == "error" for f in result.findings)
    warnings = len(result.findings) - errors
    read = f"{len(result.inputs)} input{'s' if len(result.inputs) != 1 else ''}"
    if result.findings:
        out.append(f"{len(result.findings)} finding{'s' if len(result.findings) != 1 else ''} "
                   f"({errors} error{'s' if errors != 1 else ''}, {warnings} warning{'s' if warnings != 1 else ''}) "
                   f"in {read}")
    else:
        out.append(f"no findings in {read}: {', '.join(result.inputs) or 'nothing read'}")
    return "\n".join(out)


def as_json(result: LintResult) -> dict[str, Any]:
    return {"findings": [f.to_json() for f in result.findings]}


def _sarif_result(f: Finding, rule_index: dict[str, int]) -> dict[str, Any]:
    message = f"{f.subject}: {f.message}. The damage, measured: {f.command}"
    location: dict[str, Any] = {"artifactLocation": {"uri": quote(f.path)}}
    if f.rendered:  # kustomize's output has no file of its own: point at the kustomization, say which line
        location = {"artifactLocation": {"uri": quote(f"{f.path}/kustomization.yaml")}}
        message += f" (line {f.line} of `kubectl kustomize {f.path}`)"
    else:
        location["region"] = {"startLine": f.line}
    return {"ruleId": f.rule, "ruleIndex": rule_index[f.rule], "level": f.severity, "message": {"text": message},
            "locations": [{"physicalLocation": location}],
            "properties": {"scenario": f.scenario, "rendered": f.rendered, "subject": f.subject}}


def as_sarif(result: LintResult) -> dict[str, Any]:
    """Return a SARIF 2.1.0 log: one run, every rule described, one result per finding."""
    rules = list(RULES.values())
    rule_index = {r.id: i for i, r in enumerate(rules)}
    try:
        version = metadata.version("statelab")
    except metadata.PackageNotFoundError:
        version = "0"
    driver = {"name": "statelab lint", "semanticVersion": version, "rules": [
        {"id": r.id, "shortDescription": {"text": r.summary}, "fullDescription": {"text": r.help},
         "help": {"text": f"{r.help} The damage, measured: statelab run {r.scenario}"},
         "defaultConfiguration": {"level": r.severity}, "properties": {"scenario": r.scenario}}
        for r in rules]}
    return {"$schema": SARIF_SCHEMA, "version": "2.1.0",
            "runs": [{"tool": {"driver": driver},
                      "results": [_sarif_result(f, rule_index) for f in result.findings]}]}


def show(result: LintResult, fmt: str) -> None:
    """Write the findings to stdout in fmt (text, json or sarif), untouched by any terminal styling."""
    if fmt == "json":
        body = json.dumps(as_json(result), indent=2)
    elif fmt == "sarif":
        body = json.dumps(as_sarif(result), indent=2)
    else:
        body = text(result)
    sys.stdout.write(body + "\n")
