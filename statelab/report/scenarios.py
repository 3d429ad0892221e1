"""Terminal output of `statelab run` and `statelab list`: live progress, side-by-side results, verdicts."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from statelab.report import noise, story
from statelab.scenario import Registry, RunReport, Scenario, ScenarioResult

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)
OUTCOME_STYLE = {"reproduced": "bold red", "survived": "bold green", "error": "bold magenta"}


class LiveProgress:
    """Show each running case's phase and its crowd's live counters (on stderr).

    On a terminal it is one redrawn block (a line per case running now); elsewhere (CI logs, pipes)
    one printed line per phase.
    """

    def __init__(self, refresh_per_s: float = 4.0) -> None:
        self._cases: dict[str, tuple[str, Callable[[], str] | None]] = {}
        self._lock = threading.Lock()
        self._t0 = time.monotonic()
        self._live: Live | None = None
        self._refresh = refresh_per_s

    def __enter__(self) -> "LiveProgress":
        if err_console.is_terminal:
            self._live = Live(self, console=err_console, refresh_per_second=self._refresh, transient=True)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)
            self._live = None

    def case_phase(self, key: str, text: str) -> None:
        with self._lock:
            self._cases[key] = (text, self._cases.get(key, ("", None))[1])
        if self._live is None:
            err_console.print(f"[dim]{time.monotonic() - self._t0:6.1f}s[/dim] {text}")

    def case_watch(self, key: str, counters: Callable[[], str] | None) -> None:
        with self._lock:
            phase = self._cases.get(key, ("", None))[0]
            self._cases[key] = (phase, counters)

    def phase(self, text: str) -> None:
        self.case_phase("", text)

    def watch(self, counters: Callable[[], str] | None) -> None:
        self.case_watch("", counters)

    def __rich__(self) -> Group:
        with self._lock:
            cases = list(self._cases.values())
        lines = [Text.from_markup(f"[dim]running for {time.monotonic() - self._t0:.0f}s[/dim]")]
        for phase, counters in cases:
            lines.append(Text.from_markup(f"[bold cyan]●[/bold cyan] {escape(phase)}"))
            if counters is not None:
                try:
                    lines.append(Text("    " + counters(), style="dim"))
                except Exception:  # a counter read racing the crowd's shutdown: skip one frame
                    pass
        return Group(*lines)

    def done(self, result: ScenarioResult) -> None:
        """Drop a finished case's live lines and print its one-line outcome."""
        key = result.case.key
        with self._lock:
            self._cases.pop(key, None)
            self._cases.pop("", None)
        case_done(result)


def case_done(result: ScenarioResult) -> None:
    """Print one line when a scenario x app case finishes."""
    style = OUTCOME_STYLE.get(result.outcome, "")
    mark = "" if result.matched or result.expected is None else "  [bold yellow](unexpected)[/bold yellow]"
    err_console.print(f"  {result.scenario:<22} {result.label:<36} [{style}]{result.outcome:<10}[/{style}] "
                      f"{result.wall_s:5.1f}s{mark}")


def _value(v: float, unit: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    text = f"{int(v):,}" if float(v).is_integer() else f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
    return f"{text} {unit}".rstrip() if unit not in ("", "x", "%") else f"{text}{unit}"


def scenario_table(scenario: str, results: Sequence[ScenarioResult]) -> Table:
    """Return the side-by-side table of one scenario's figures (one column per app)."""
    table = Table(title=None, show_edge=False, pad_edge=False, header_style="bold")
    table.add_column("measured")
    for r in results:
        table.add_column(r.label, justify="right")
    for name, label in measured_figures(results):
        cells = []
        for r in results:
            fig = next((f for f in r.measurements.figures if f.name == name), None)
            cells.append(_value(fig.value, fig.unit) if fig else "")
        table.add_row(label, *cells)
    verdicts = []
    for r in results:
        style = OUTCOME_STYLE.get(r.outcome, "")
        expected = f" (expected {r.expected})" if r.expected else " (not judged)"
        verdicts.append(f"[{style}]{r.outcome}[/{style}]{expected if not r.matched or not r.expected else ''}")
    table.add_row("[bold]verdict[/bold]", *verdicts, end_section=True)
    table.add_row("case time (lab start, run, stop)", *[f"{r.wall_s:.1f} s" for r in results])
    return table


def measured_figures(results: Sequence[ScenarioResult]) -> list[tuple[str, str]]:
    """Return (name, label) of the figures at least one case measured, in the order the cases list them."""
    names: dict[str, str] = {}
    for r in results:
        for f in r.measurements.figures:
            names.setdefault(f.name, f.label)
    return [(n, label) for n, label in names.items() if any(_measured(r.figure(n)) for r in results)]


def unmeasured_labels(results: Sequence[ScenarioResult]) -> list[str]:
    """Return the labels of figures no case measured (this profile does not): left out of the table."""
    kept = {n for n, _ in measured_figures(results)}
    return list(dict.fromkeys(f.label for r in results for f in r.measurements.figures if f.name not in kept))


def _measured(value: float) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def price_line(results: Sequence[ScenarioResult]) -> str:
    """Return the stateless price of one scenario (plain cases), each percentile a price or within noise; '' if none."""
    plain = {r.app: r for r in results if not r.variant}
    a, b = plain.get("stateful"), plain.get("stateless")
    if a is None or b is None or not a.measurements.latency.requests or not b.measurements.latency.requests:
        return ""
    la, lb = a.measurements.latency, b.measurements.latency
    text = noise.describe_price(noise.CaseLatency(la.p50_ms, la.p99_ms, la.requests),
                                noise.CaseLatency(lb.p50_ms, lb.p99_ms, lb.requests))
    return f"stateless price ({la.window}): {text} per request ({la.p50_ms:.1f} -> {lb.p50_ms:.1f} ms at p50)"


def run_report(run: RunReport, scenarios: Mapping[str, Scenario]) -> None:
    """Print every scenario's table, verdicts, tolerances and why; then the stateless price and a summary."""
    order: list[str] = []
    for r in run.results:
        if r.scenario not in order:
            order.append(r.scenario)
    walls = dict(run.scenario_wall_s)
    for name in order:
        results = [r for r in run.results if r.scenario == name]
        sc = scenarios.get(name)
        wall = f"  [dim]{walls[name]:.1f} s[/dim]" if name in walls else ""
        console.rule(f"[bold]{sc.title if sc else name}[/bold]  [dim]{name}[/dim]{wall}")
        if sc:
            console.print(f"[dim]{sc.summary}[/dim]")
        console.print(scenario_table(name, results))
        left_out = unmeasured_labels(results)
        if left_out:
            console.print(f"[dim]not measured with this profile: {escape('; '.join(left_out))}[/dim]")
        if sc and run.inputs.quick:
            left_out = [c.label for c in sc.cases() if not c.in_quick and c.app in run.inputs.apps]
            if left_out:
                console.print(f"[dim]not run with --quick (run without it to see): {', '.join(left_out)}[/dim]")
        if sc and sc.tolerances:
            tol = "; ".join(f"{t.describe()}" for t in sc.tolerances)
            console.print(f"[dim]survived only if:[/dim] {tol}")
        shared = set.intersection(*(set(r.measurements.notes) for r in results)) if len(results) > 1 else set()
        for r in results:
            style = OUTCOME_STYLE.get(r.outcome, "")
            console.print(f"[{style}]{r.label}[/{style}]: {r.verdict.explanation}")
            for note in r.measurements.notes:
                if note not in shared:
                    console.print(f"  [dim]{note}[/dim]")
        for note in dict.fromkeys(n for n in results[0].measurements.notes if n in shared):
            console.print(f"[dim]{note}[/dim]")  # said once, for every column
        price = price_line(results)
        if price:
            console.print(f"[bold]{escape(price)}[/bold]")
        console.print()
    summary(run)


def summary(run: RunReport) -> None:
    """Print what users lost per scenario (one sentence each), the one-line-per-case table and the exit status."""
    by_scenario: dict[str, list[ScenarioResult]] = {}
    for r in run.results:
        by_scenario.setdefault(r.scenario, []).append(r)
    console.rule("[bold]what users lost[/bold]")
    for name, results in by_scenario.items():
        text = story.plain(name, [story.facts_from_json(r.to_json()) for r in results])
        console.print(f"[bold]{escape(name)}[/bold]: {escape(text)}")
    console.print()
    table = Table(title="summary", show_edge=False, pad_edge=False, header_style="bold")
    for col in ("scenario", "app", "outcome", "expected", "matched", "wall"):
        table.add_column(col, justify="right" if col == "wall" else "left")
    for r in run.results:
        style = OUTCOME_STYLE.get(r.outcome, "")
        matched = "yes" if r.matched else ("-" if r.expected is None and r.outcome != "error" else "NO")
        table.add_row(r.scenario, r.label, f"[{style}]{r.outcome}[/{style}]", r.expected or "-", matched,
                      f"{r.wall_s:.1f} s")
    console.print(table)
    if run.scenario_wall_s:
        console.print("wall time per scenario: " + ", ".join(f"{n} {w:.1f} s" for n, w in run.scenario_wall_s))
    code = run.exit_code
    word = {0: "[green]every result matched its expectation[/green]",
            1: "[yellow]some results deviated from their expectation[/yellow]",
            2: "[magenta]some scenarios could not run (error)[/magenta]"}.get(code, str(code))
    console.print(f"{len(run.results)} cases in {run.wall_s:.1f} s: {word} (exit {code})")


def scenario_list(scenarios: Iterable[Scenario]) -> None:
    """Print the scenarios, one line each, under their group when given a registry (`statelab run <group>`)."""
    groups: Sequence[tuple[str, Sequence[Scenario]]]
    if isinstance(scenarios, Registry):
        groups = [(g, scenarios.group(g)) for g in scenarios.groups()]
    else:
        groups = [("", list(scenarios))]
    for n, (group, members) in enumerate(groups):
        title = None
        if group:
            first = " (what `statelab run all` runs)" if n == 0 else ""
            title = f"[bold]{group}[/bold]: `statelab run {group}`{first}"
        table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False, header_style="bold")
        table.add_column("scenario")
        table.add_column("what it replays")
        table.add_column("expected", style="dim")
        for s in members:
            table.add_row(s.name, s.summary, ", ".join(f"{k}: {v}" for k, v in s.expect.items()))
        console.print(table)
        if n < len(groups) - 1:
            console.print()


def wrote(label: str, path: Path) -> None:
    console.print(f"[dim]wrote {label}:[/dim] {path}")
