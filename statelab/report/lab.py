"""Terminal output for a running lab: the what-runs-where table, status, progress lines."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Mapping

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from statelab.loadgen import LoadSummary
from statelab.runs import CleanPlan

console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)


def progress(message: str) -> None:
    """Show one progress line on stderr (kept off stdout so --json output stays clean)."""
    err_console.print(f"[dim]…[/dim] {message}")


def error(message: str) -> None:
    """Show an error a user can act on, without a traceback."""
    err_console.print(f"[bold red]error:[/bold red] {message}")


def lab_table(status: Mapping[str, Any], state_file: str | None = None) -> None:
    """Print what runs where: balancer, instances, stores, log paths."""
    console.print(f"[bold]{status['app']}[/bold] lab behind [bold]{status['lb']}[/bold] balancer, "
                  f"policy [bold]{status['policy']}[/bold]")
    console.print(f"  balancer  {status['balancer_url']}")
    if status.get("admin_url"):
        console.print(f"  admin     {status['admin_url']}")
    if status.get("control_url"):
        console.print(f"  control   {status['control_url']}")
    if status.get("dashboard_url"):
        console.print(f"  dashboard {status['dashboard_url']}")
    table = Table(show_edge=False, pad_edge=False)
    for col in ("instance", "url", "pid", "state", "gen", "active", "requests", "errors", "log"):
        table.add_column(col, justify="right" if col in ("pid", "gen", "active", "requests", "errors") else "left")
    for inst in status["instances"]:
        table.add_row(inst["id"], inst["url"], str(inst["pid"]), inst["state"], str(inst["generation"]),
                      str(inst["active"]), str(inst["requests"]), str(inst["errors"]), inst["log"])
    console.print(table)
    for name, url in status["stores"]:
        console.print(f"  {name:<9} {url}")
    console.print(f"  run dir   {status['run_dir']}")
    if state_file:
        console.print(f"  state     {state_file}")


def events(status: Mapping[str, Any]) -> None:
    """Print the lab's recent events (deploys, crashes, restarts)."""
    for ev in status.get("events", []):
        console.print(f"  {ev['t']:8.2f}s  {ev['kind']:<10} {ev['target']:<8} {ev['detail']}")


def line(message: str) -> None:
    console.print(message)


def raw(text: str) -> None:
    """Write text to stdout untouched (machine-readable output such as --json: no wrapping, no markup)."""
    sys.stdout.write(text + "\n")


def flush() -> None:
    sys.stdout.flush()


def load_summary(summary: LoadSummary, csv_prefix: Path) -> None:
    """Print what a Locust run measured, business failures (logged out, cart lost, ...) first."""
    t = summary.total
    console.print(f"{t.requests} requests, {t.failures} failed, {t.rps:.1f} req/s, "
                  f"median {t.median_ms:.0f} ms, p95 {t.p95_ms:.0f} ms")
    for r in summary.requests:  # request names like /products/[id] are not markup
        console.print(escape(f"  {r.method:<4} {r.name:<22} {r.requests:>6} req {r.failures:>5} failed  "
                             f"p50 {r.median_ms:>4.0f} ms  p95 {r.p95_ms:>4.0f} ms"))
    if summary.failures:
        console.print("What users saw go wrong:")
        for f in sorted(summary.failures, key=lambda f: -f.occurrences):
            console.print(escape(f"  {f.occurrences:>6} x {f.error}  ({f.method} {f.name})"))
    console.print(escape(f"CSV files: {csv_prefix}_*.csv"))


def clean_summary(plan: CleanPlan, dry_run: bool) -> None:
    """Say which run directories went (or would go), how many MB, and which stayed and why."""
    verb = "would delete" if dry_run else "deleted"
    for d in plan.doomed:
        console.print(f"  {verb} {d.path.name}  [dim]{d.mb:.1f} MB[/dim]")
    for d, why in plan.kept:
        console.print(f"  kept    {d.path.name}  [dim]{d.mb:.1f} MB, {why}[/dim]")
    console.print(f"{verb.capitalize()} {len(plan.doomed)} run director{'y' if len(plan.doomed) == 1 else 'ies'} "
                  f"({plan.doomed_mb:.1f} MB) under {plan.root}; kept {len(plan.kept)}.")
