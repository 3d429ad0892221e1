"""What `statelab check` shows and writes: the terminal report, its JSON, JUnit (one case per check), HTML.

The HTML page is the scenarios' renderer (`statelab.report.html`) fed a journal-shaped view of the
check: one section per phase with its traffic and the journey's failures per second, the fault
marked, and the evidence as figures and notes.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path, PurePosixPath
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from statelab.check.result import CheckReport, CheckResult, DiskFile, Example, KindChange, PhaseStats
from statelab.report import html

console = Console(highlight=False)
STYLE = {"passed": "bold green", "failed": "bold red"}
MARK = {"passed": "✓", "failed": "✗"}
EXAMPLES_SHOWN = 3
FILES_SHOWN = 12


def _pct(rate: float) -> str:
    return f"{100 * rate:.1f}%"


def _size(n: int) -> str:
    return f"{n} B" if n < 1024 else f"{n / 1024:.1f} KiB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.1f} MiB"


def _where(change: KindChange) -> str:
    return ", ".join(f"{m} {n} {c}" + (f" (baseline {b})" if b else "") for m, n, c, b in change.where)


def _phase_line(phase: PhaseStats) -> str:
    text = (f"{phase.routing} routing, {phase.instances} instances: {phase.requests} requests in {phase.wall_s:.1f} s, "
            f"{phase.failed_requests} marked failed")
    if phase.unanswered:
        text += f" ({phase.unanswered} got no answer: not lost state)"
    if phase.served:
        text += "; served: " + ", ".join(f"{i} {n}" for i, n in phase.served)
    return text


def _example(e: Example) -> str:
    return f"+{e.t_s:.2f} s {e.method} {e.name} -> {e.status or 'no answer'} {e.error!r}"


def _evidence(check: CheckResult) -> list[str]:
    """Return the evidence of one check as plain lines (terminal, JUnit and HTML notes share them)."""
    lines = []
    phase = check.phase
    if phase is not None:
        lines.append(_phase_line(phase))
        if phase.fault:
            lines.append(f"fault at +{phase.fault_at_s or 0:.1f} s: {phase.fault}")
    for c in check.rose:
        lines.append(f"ROSE {c.error!r}: baseline {c.baseline_count} ({_pct(c.baseline_rate)}) -> {c.count} "
                     f"({_pct(c.rate)}), {c.excess:+.0f} over the {c.expected:.1f} the baseline predicts; {_where(c)}")
        lines += [f"  e.g. {_example(e)}" for e in c.examples[:EXAMPLES_SHOWN]]
    for c in check.apps_own:
        lines.append(f"app's own (already in the baseline, did not rise) {c.error!r}: baseline {c.baseline_count} "
                     f"({_pct(c.baseline_rate)}), here {c.count} ({_pct(c.rate)})")
    for c in check.changes:
        if not c.rose and not c.baseline_count and c.count:
            lines.append(f"below the threshold {c.error!r}: {c.count} ({_where(c)})")
    if check.files:
        lines += _files(check.files)
    return lines


def _files(files: tuple[DiskFile, ...]) -> list[str]:
    """Return the files instances wrote, grouped by instance and directory, with an example path each."""
    groups: dict[tuple[str, int, str], list[DiskFile]] = {}
    for f in files:
        if f.during_run:
            groups.setdefault((f.instance, f.generation, str(PurePosixPath(f.path).parent)), []).append(f)
    lines = [f"{inst} (generation {gen}) wrote {len(fs)} files, {_size(sum(f.size for f in fs))}, under {folder}/ "
             f"(e.g. {fs[0].path})" for (inst, gen, folder), fs in list(groups.items())[:FILES_SHOWN]]
    if len(groups) > FILES_SHOWN:
        lines.append(f"... and {len(groups) - FILES_SHOWN} more instances or directories")
    started = [f for f in files if not f.during_run]
    if started:
        lines.append(f"{len(started)} files written while starting, not counted (e.g. {started[0].path})")
    return lines


def show(report: CheckReport) -> None:
    """Print the whole report: what was checked, the baseline, each check with its evidence, a summary."""
    console.rule(f"[bold]statelab check[/bold]  {escape(report.target)}")
    console.print(escape(f"journey {report.journey}; {report.instances} instances, {report.users} users, "
                         f"{report.run_time_s:g} s of traffic per phase"))
    console.print(escape(f"disks: {report.isolation}: {report.isolation_note}"),
                  style="yellow" if report.isolation != "private" else "dim")
    console.print(escape(f"baseline (each user pinned to one instance, no fault): {_phase_line(report.baseline)}"))
    for f in report.baseline.answered:
        console.print(escape(f"  app's own in the baseline: {f.count} x {f.error!r} ({f.method} {f.name})"),
                      style="dim")
    for w in report.warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(w)}")
    for check in report.checks:
        style = STYLE[check.outcome]
        console.print()
        console.print(f"[{style}]{MARK[check.outcome]} {check.outcome.upper()}[/{style}]  [bold]{escape(check.name)}"
                      f"[/bold]: {escape(check.title)}")
        console.print(escape(check.summary))
        for line in _evidence(check):
            console.print("  " + escape(line), style="dim" if line.startswith("  e.g.") else "")
    console.print()
    table = Table(title="summary", show_edge=False, pad_edge=False, header_style="bold")
    for col in ("check", "outcome", "lost state (phase vs baseline)"):
        table.add_column(col)
    for check in report.checks:
        style = STYLE[check.outcome]
        lost = "; ".join(f"{c.error} {c.baseline_count} -> {c.count}" for c in check.rose)
        if check.name == "local-disk":
            lost = (f"{sum(1 for f in check.files if f.during_run)} files written while serving"
                    if check.outcome == "failed" else "")
        table.add_row(check.name, f"[{style}]{check.outcome}[/{style}]", escape(lost))
    console.print(table)
    console.print("time: " + ", ".join(f"{name} {s:.1f} s" for name, s in report.timings)
                  + f"; total {report.wall_s:.1f} s")
    verdict = ("[red]some checks found lost state[/red]" if report.exit_code
               else "[green]no check found lost state[/green]")
    console.print(f"{len(report.checks)} checks: {verdict} (exit {report.exit_code}); logs in {escape(report.run_dir)}")


def wrote(label: str, path: Path) -> None:
    console.print(f"[dim]wrote {label}:[/dim] {escape(str(path))}")


def wrote_example(path: Path) -> None:
    console.print(f"wrote an example journey to {escape(str(path))}: adapt its paths to your app, then run\n"
                  f"  statelab check module:app --journey {escape(str(path))}")


# --- files ------------------------------------------------------------------------------------

def write_json(report: CheckReport, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_json(), indent=2, sort_keys=True, allow_nan=False) + "\n")


def junit_xml(report: CheckReport) -> ET.Element:
    """Return <testsuites> with one <testsuite> of one <testcase> per check; lost state is a <failure>."""
    failures = len(report.failed)
    root = ET.Element("testsuites", name="statelab check", tests=str(len(report.checks)), failures=str(failures),
                      errors="0", time=f"{report.wall_s:.3f}")
    suite = ET.SubElement(root, "testsuite", name=f"statelab check {report.target}", tests=str(len(report.checks)),
                          failures=str(failures), errors="0", skipped="0", time=f"{report.wall_s:.3f}")
    times = dict(report.timings)
    for check in report.checks:
        case = ET.SubElement(suite, "testcase", classname="statelab.check", name=check.name,
                             time=f"{times.get(check.name, 0.0):.3f}")
        evidence = "\n".join(_evidence(check))
        if check.outcome == "failed":
            ET.SubElement(case, "failure", message=check.summary, type="LostState").text = evidence
        ET.SubElement(case, "system-out").text = f"{check.outcome}: {check.summary}\n{evidence}"
    return root


def write_junit(report: CheckReport, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tree = ET.ElementTree(junit_xml(report))
    ET.indent(tree)
    tree.write(path, encoding="utf-8", xml_declaration=True)


def journal_view(report: CheckReport) -> dict[str, Any]:
    """Return the check in the journal form the HTML renderer reads: one section per phase."""
    results = [_section("baseline", "baseline: each user pinned to one instance, no fault", None, report.baseline,
                        report)]
    for check in report.checks:
        results.append(_section(check.name, f"{check.name}: {check.title}", check, check.phase, report))
    return {"title": f"statelab check: {report.target}", "started_at": report.started_at,
            "wall_s": round(report.wall_s, 1), "inputs": {"users": report.users, "lb": "builtin"},
            "results": results}


def _section(name: str, title: str, check: CheckResult | None, phase: PhaseStats | None,
             report: CheckReport) -> dict[str, Any]:
    figures: list[dict[str, Any]] = []
    outcome: str
    events: list[dict[str, Any]] = []
    series: list[dict[str, Any]] = []
    instances: list[dict[str, Any]] = []
    latency: dict[str, float] = {}
    if phase is not None:
        figures.append({"name": "requests", "label": "requests", "value": phase.requests, "unit": ""})
        figures.append({"name": "unanswered", "label": "requests with no answer (not lost state)",
                        "value": phase.unanswered, "unit": ""})
        events += [{"t": e.t, "kind": e.kind, "target": e.target, "detail": e.detail} for e in phase.events]
        if phase.fault_at_s is not None:
            events.append({"t": phase.fault_at_s, "kind": "phase", "target": name, "detail": ""})
        series = [{"name": "requests", "unit": "/s", "points": [[s, r] for s, r, _ in phase.per_second]},
                  {"name": "errors", "unit": "/s", "points": [[s, f] for s, _, f in phase.per_second]}]
        instances = [{"instance": i, "requests": max(0, n)} for i, n in phase.served]
        latency = {f"{k}_ms": v for k, v in phase.latency_ms}
    if check is not None:
        for c in check.changes:
            figures.append({"name": f"baseline {c.error}", "label": f"{c.error!r} in the baseline",
                            "value": c.baseline_count, "unit": ""})
            figures.append({"name": c.error, "label": f"{c.error!r} here" + (" (ROSE)" if c.rose else ""),
                            "value": c.count, "unit": ""})
        outcome, explanation, notes = check.outcome, check.summary, _evidence(check)
    else:
        assert phase is not None
        for f in phase.answered:
            figures.append({"name": f.error, "label": f"{f.error!r} ({f.method} {f.name})", "value": f.count, "unit": ""})
        outcome, explanation = "baseline", "the reference: failures here are the app's own, not blamed on any check"
        notes = [_phase_line(phase), f"disks: {report.isolation}: {report.isolation_note}", *report.warnings]
    return {"scenario": name, "title": title, "summary": phase.fault if phase is not None and phase.fault else "",
            "app": report.target, "variant": "", "outcome": outcome, "expected": "", "explanation": explanation,
            "notes": notes, "figures": figures, "events": events, "series": series, "instances": instances,
            "latency": latency}


def write_html(report: CheckReport, path: Path) -> None:
    html.write_html(journal_view(report), path)


__all__ = ["journal_view", "junit_xml", "show", "write_html", "write_json", "write_junit", "wrote",
           "wrote_example"]
