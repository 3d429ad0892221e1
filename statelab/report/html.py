"""The self-contained HTML report of a run: the answer first, then every app side by side on shared axes.

The first screen (1280x720, a projector) answers the question: per scenario one sentence in users'
words built from the measured figures (`statelab.report.story`), the outcome badges and one key
chart with the apps overlaid. Each scenario's tables and other charts follow, folded (`<details>`).

It reads the run's JSON journal as plain dicts (`RunReport.to_json()`; an object with `to_json()`
is accepted too), so it depends on the journal's form, not on the scenario classes. Every chart is
drawn from the run's own records as inline SVG: no script, no CDN, no external font, so the file
opens offline and projects well.

Keys read, all optional (a missing one leaves its part out or says "no data recorded"):

    journal: "results" (list), "prices" (list), "inputs" {"quick", "seed", "users", "lb"},
        "started_at", "wall_s", "title", "exit_code".
    result: "scenario", "app", "variant", "outcome" ("reproduced" | "survived" | "error"),
        "expected", "matched", "explanation", "notes" [str], "title", "summary",
        "figures" [{"name", "label", "value", "unit"}],
        "checks" [{"tolerance": {"figure", "op", "limit", "why"}, "value", "held"}],
        "events" [{"t", "kind", "target", "detail"}] (t: seconds since traffic started),
        "series" [{"name", "unit", "points": [[t, value], ...]}] with names "requests", "errors",
            "logouts", "items lost", "uploads missing", "attacker accepted", "db_queries/s",
            "requests on <instance>",
        "instances" [{"instance", "requests", "share"}],
        "latency" {"p50_ms", "p95_ms", "p99_ms", "requests", "window"}.
    price: "scenario", "window", "stateful_p50_ms", "stateless_p50_ms", "stateful_p99_ms",
        "stateless_p99_ms", "extra_p50_ms", "extra_p99_ms".

A scenario's title and summary come from the result if present, else from the scenario registry
(`scenarios.REGISTRY`), else the name.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from statelab.report import noise, svg
from statelab.report.first_screen import card
from statelab.report.view import (PER_INSTANCE_PREFIX, SERIES_LABELS, AppRun, ScenarioView, as_map, as_num, loss_keys,
                                  read_journal, series_key)

LOSS_STYLE = {"logouts": (svg.PURPLE, ""), "items_lost": (svg.ORANGE, "10 6"), "attacker_accepted": (svg.VERMILLION, ""),
              "uploads_missing": (svg.GREEN, "3 5"), "db_queries": (svg.BLACK, "")}
INSTANCE_STYLES = [(c, d) for d in svg.DASHES for c in (svg.BLUE, svg.VERMILLION, svg.GREEN, svg.PURPLE, svg.ORANGE)]
OUTCOME_TEXT = {"reproduced": "✗ disaster reproduced", "survived": "✓ survived", "error": "⚠ scenario error"}


# --- charts -----------------------------------------------------------------------------------

def _max(runs: Sequence[AppRun], keys: Iterable[str]) -> float:
    keys = list(keys)
    return max((v for r in runs for k in keys for _, v in r.series.get(k, ())), default=0.0)


def _charts(sc: ScenarioView) -> list[list[str]]:
    """Return rows of charts, one column per app, each row on shared axes."""
    runs = sc.runs
    x_max = max(r.last_t for r in runs)
    # three columns get a narrower canvas, so that side by side the text stays projector-sized
    w = 640 if len(runs) <= 2 else 540
    markers = [[svg.Marker(t, label) for t, label in r.events] for r in runs]
    rows: list[list[str]] = []

    traffic_max = _max(runs, ("requests", "errors"))
    rows.append([svg.line_chart(
        f"{r.label}: traffic",
        [svg.Series(SERIES_LABELS[k], r.series[k], color, dash)
         for k, color, dash in (("requests", svg.BLUE, ""), ("errors", svg.VERMILLION, "10 6")) if k in r.series],
        x_max=x_max, y_max=traffic_max, y_label="per second", markers=m, width=w, cls="traffic")
        for r, m in zip(runs, markers)])

    loss = loss_keys(runs)
    loss_max = _max(runs, loss)
    row = []
    for r, m in zip(runs, markers if loss else []):
        lost = [svg.Series(SERIES_LABELS.get(k, k), r.series[k], *LOSS_STYLE.get(k, (svg.BLACK, "")))
                for k in loss if k in r.series]
        # the totals are in the verdict table (distinct users); a per-second sum would count events
        title = f"{r.label}: " + ("database load" if loss == ["db_queries"] else "what users lost, per second")
        row.append(svg.line_chart(title, lost, x_max=x_max, y_max=loss_max, y_label="per second", markers=m,
                                  marker_legend=False, width=w, cls="loss"))
    if row:
        rows.append(row)

    per_instance = [{k.removeprefix(PER_INSTANCE_PREFIX): pts for k, pts in r.series.items()
                     if k.startswith(PER_INSTANCE_PREFIX)} for r in runs]
    if any(per_instance):
        inst_max = max((v for d in per_instance for pts in d.values() for _, v in pts), default=0.0)
        rows.append([svg.line_chart(
            f"{r.label}: requests/s per instance",
            [svg.Series(name, pts, *INSTANCE_STYLES[i % len(INSTANCE_STYLES)]) for i, (name, pts) in enumerate(sorted(d.items()))],
            x_max=x_max, y_max=inst_max, y_label="per second", markers=m, marker_legend=False, width=w,
            cls="per-instance")
            for r, d, m in zip(runs, per_instance, markers)])

    pcts = [[(k, 100.0 * v / (sum(x for _, x in r.shares) or 1.0)) for k, v in r.shares] for r in runs]
    share_max = max((v for p in pcts for _, v in p), default=0.0)
    rows.append([svg.bar_chart(f"{r.label}: share of requests per instance", p, unit="%", y_max=share_max,
                               color=svg.SKY, width=w, cls="shares") for r, p in zip(runs, pcts)])
    lat_max = max((v for r in runs for _, v in r.latency), default=0.0)
    rows.append([svg.bar_chart(f"{r.label}: latency" + (f" ({r.latency_window})" if r.latency_window else ""),
                               list(r.latency), unit=" ms", y_max=lat_max,
                               color=svg.BLUE, width=w, cls="latency") for r in runs])
    return rows


# --- the folded details -----------------------------------------------------------------------

def _cell_value(value: float | None, unit: str) -> str:
    return "—" if value is None else escape(svg.fmt(value) + (f" {unit}" if unit else ""))


def unmeasured(sc: ScenarioView) -> list[str]:
    """Return the labels of figures no run measured (all null): left out of the table, named once."""
    labels = dict.fromkeys(f[0] for r in sc.runs for f in r.figures)
    return [label for label in labels
            if all(f[1] is None for r in sc.runs for f in r.figures if f[0] == label)]


def _verdict_table(sc: ScenarioView) -> str:
    runs = sc.runs
    out = ['<table class="verdict"><thead><tr><th></th>',
           "".join(f"<th>{escape(r.label)}</th>" for r in runs), "</tr></thead><tbody><tr><th>outcome</th>"]
    for r in runs:
        text = OUTCOME_TEXT.get(r.outcome, r.outcome or "no outcome")
        exp = ""
        if r.expected:
            verdict = "as expected" if r.expected == r.outcome else "DEVIATED from the expectation"
            exp = f'<div class="expected">expected {escape(r.expected)}: {verdict}</div>'
        out.append(f'<td class="outcome outcome-{escape(r.outcome or "none")}"><strong>{escape(text)}</strong>'
                   f"{exp}</td>")
    out.append("</tr>")
    left_out = set(unmeasured(sc))
    for label in dict.fromkeys(f[0] for r in runs for f in r.figures):
        if label in left_out:
            continue
        out.append(f"<tr><th>{escape(label)}</th>")
        for r in runs:
            hit = next((f for f in r.figures if f[0] == label), None)
            out.append(f'<td class="num">{_cell_value(hit[1], hit[2]) if hit else "—"}</td>')
        out.append("</tr>")
    for text in dict.fromkeys(c[0] for r in runs for c in r.checks):
        out.append(f'<tr class="check"><th>check: {escape(text)}</th>')
        for r in runs:
            check = next((c for c in r.checks if c[0] == text), None)
            mark = "—" if check is None else ("✓ held" if check[2] else "✗ broken") + f" ({_cell_value(check[1], '')})"
            out.append(f'<td class="num">{mark}</td>')
        out.append("</tr>")
    shared = set.intersection(*(set(r.notes) for r in runs)) if len(runs) > 1 else set()
    out.append("<tr><th>why</th>")
    for r in runs:
        notes = "".join(f'<li>{escape(n)}</li>' for n in r.notes if n not in shared)
        out.append(f"<td>{escape(r.explanation)}" + (f'<ul class="notes">{notes}</ul>' if notes else "") + "</td>")
    out.append("</tr></tbody></table>")
    if left_out:
        out.append(f'<p class="unmeasured">Not measured with this profile (left out above): '
                   f'{escape("; ".join(unmeasured(sc)))}.</p>')
    out.extend(f'<p class="note">{escape(n)}</p>' for n in dict.fromkeys(n for n in runs[0].notes if n in shared))
    return "".join(out)


def price_text(sc: ScenarioView) -> str:
    """Say what statelessness cost per request in this scenario, a price or within noise; '' if unknown."""
    plain = {r.app: r for r in sc.runs if not r.variant}
    a, b = plain.get("stateful"), plain.get("stateless")
    if a is None or b is None:
        return ""
    cases = []
    for r in (a, b):
        lat = dict(r.latency)
        if "p50" not in lat or "p99" not in lat or not r.latency_requests:
            return ""
        cases.append(noise.CaseLatency(lat["p50"], lat["p99"], r.latency_requests))
    return noise.describe_price(cases[0], cases[1])


def _price(sc: ScenarioView) -> str:
    text = price_text(sc)
    if not text:
        return ""
    window = f" ({sc.price['window']})" if sc.price.get("window") else ""
    return (f'<p class="price"><strong>The price of statelessness</strong>{escape(window)}: '
            f'{escape(text)} per request, measured in this run (± a 95% band from each case\'s own spread).</p>')


def _scenario_section(sc: ScenarioView) -> str:
    out = [f'<section class="scenario" id="{escape(sc.name)}"><details><summary><h2>{escape(sc.title)} '
           f'<code>{escape(sc.name)}</code> <span class="more">every figure, check and chart</span></h2></summary>']
    if sc.summary:
        out.append(f'<p class="summary">{escape(sc.summary)}</p>')
    out.append(_verdict_table(sc))
    out.append(_price(sc))
    for row in _charts(sc):
        out.append(f'<div class="row" data-cols="{len(row)}">' + "".join(f"<figure>{c}</figure>" for c in row)
                   + "</div>")
    out.append("</details></section>")
    return "".join(out)


# --- page -------------------------------------------------------------------------------------

CSS = """
body{font-family:"DejaVu Sans",Verdana,Arial,sans-serif;font-size:18px;color:#111;background:#fff;margin:0 auto;
max-width:1800px;padding:6px 16px;line-height:1.35}
header{display:flex;flex-wrap:wrap;align-items:baseline;gap:4px 18px}
h1{font-size:22px;margin:0}.facts{font-size:14px;color:#333;margin:0}
.summary-grid{display:grid;gap:8px 12px;grid-template-columns:repeat(2,minmax(0,1fr));margin:6px 0 10px}
@media (max-width:1000px){.summary-grid{grid-template-columns:1fr}}
.card{border:1px solid #999;border-radius:6px;padding:2px 10px 4px}
.card h2{font-size:20px;margin:0}.card h2 a{color:#111}
.badge{font-size:14px;font-weight:bold;padding:0 6px;border-radius:4px;border:1px solid #777;border-left:9px solid;
white-space:nowrap}
.outcome-reproduced{background:#fbe3d4}.outcome-survived{background:#d7ecf7}.outcome-error{background:#eee}
.sentence{font-size:16px;margin:2px 0;line-height:1.3}
figure{margin:0}figure.key-chart{border:0}svg.chart{display:block;height:auto}
h2{font-size:24px;margin:0}
section.scenario{border-top:3px solid #111;margin-top:14px;padding-top:8px}
summary{cursor:pointer}summary h2{display:inline}.more{font-size:16px;font-weight:normal;color:#444}
code{font-size:0.8em;background:#f1f1f1;padding:1px 6px;border-radius:4px;font-weight:normal}
table.verdict{border-collapse:collapse;width:100%;margin:12px 0 20px}
table.verdict th,table.verdict td{border:1px solid #999;padding:8px 12px;text-align:left;vertical-align:top}
table.verdict thead th{background:#eee;font-size:20px}
table.verdict td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.check th{font-weight:normal;font-family:monospace}
.expected{font-size:16px}.notes{font-size:16px;margin:6px 0 0;padding-left:20px}
.price,.unmeasured,.note{background:#f4f4f4;padding:8px 12px;border-left:6px solid #0072B2}
.row{display:grid;gap:16px;margin:8px 0;grid-template-columns:repeat(auto-fit,minmax(0,1fr))}
@media (max-width:1000px){.row{grid-template-columns:1fr}}
.row figure{border:1px solid #ccc;padding:4px}
@media print{section.scenario{break-before:page}}
"""

EXIT_WORDS = {0: "every result matched its expectation", 1: "some results DEVIATED from their expectation",
              2: "some scenarios could not run"}


def render_html(journal: Mapping[str, Any]) -> str:
    """Return the whole report as one HTML document."""
    scenarios = read_journal(journal)
    inputs = as_map(journal.get("inputs"))
    profile = ("quick profile" if inputs.get("quick") else "full profile") if "quick" in inputs else None
    code = journal.get("exit_code")
    facts = [str(v) for v in (journal.get("started_at"), profile,
                              f"seed {inputs['seed']}" if inputs.get("seed") is not None else None,
                              f"{inputs['lb']} balancer" if inputs.get("lb") else None,
                              f"{journal['wall_s']:.0f} s" if as_num(journal.get("wall_s")) is not None else None,
                              EXIT_WORDS.get(code) if isinstance(code, int) else None) if v]
    if scenarios:
        facts.append("below: every figure and chart, folded")
    title = str(journal.get("title") or "statelab: stateful vs stateless, measured")
    cards = "".join(card(s) for s in scenarios)
    body = "".join(_scenario_section(s) for s in scenarios) or "<p>This journal holds no results.</p>"
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
            f'<header><h1>{escape(title)}</h1><p class="facts">{escape(" · ".join(facts))}</p></header>'
            + (f'<main id="summary" class="summary-grid">{cards}</main>' if cards else "")
            + f"{body}</body></html>\n")


def write_html(report_json: Mapping[str, Any] | Any, path: Path) -> None:
    """Write the self-contained HTML report of a run's journal (a dict, or anything with to_json())."""
    journal = report_json.to_json() if hasattr(report_json, "to_json") else report_json
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(journal), encoding="utf-8")


__all__ = ["write_html", "render_html", "read_journal", "loss_keys", "series_key", "price_text", "unmeasured",
           "AppRun", "ScenarioView"]
