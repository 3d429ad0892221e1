"""The self-contained HTML report of a run: per scenario, every app side by side on shared axes.

It reads the run's JSON journal as plain dicts (`RunReport.to_json()`; an object with `to_json()`
is accepted too), so it depends on the journal's form, not on the scenario classes. Every chart is
drawn from the run's own records as inline SVG: no script, no CDN, no external font, so the file
opens offline and projects well.

Keys read, all optional (a missing one leaves its part out or says "no data recorded"):

    journal: "results" (list), "prices" (list), "inputs" {"quick", "seed", "users", "lb"},
        "started_at", "wall_s", "title".
    result: "scenario", "app", "variant", "outcome" ("reproduced" | "survived" | "error"),
        "expected", "matched", "explanation", "notes" [str], "title", "summary",
        "figures" [{"name", "label", "value", "unit"}],
        "checks" [{"tolerance": {"figure", "op", "limit", "why"}, "value", "held"}],
        "events" [{"t", "kind", "target", "detail"}] (t: seconds since traffic started),
        "series" [{"name", "unit", "points": [[t, value], ...]}] with names "requests", "errors",
            "logouts", "items lost", "uploads missing", "db_queries/s", "requests on <instance>",
        "instances" [{"instance", "requests", "share"}],
        "latency" {"p50_ms", "p95_ms", "p99_ms", "window"}.
    price: "scenario", "window", "extra_p50_ms", "extra_p99_ms".

A scenario's title and summary come from the result if present, else from the scenario registry
(`scenarios.REGISTRY`), else the name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from statelab.report import svg

LOSS_SERIES = ("logouts", "items_lost", "uploads_missing")
SERIES_LABELS = {
    "requests": "requests/s",
    "errors": "errors/s",
    "logouts": "users logged out/s",
    "items_lost": "cart items lost/s",
    "uploads_missing": "uploads missing/s",
    "db_queries": "database queries/s",
}
LOSS_STYLE = {"logouts": (svg.PURPLE, ""), "items_lost": (svg.ORANGE, "10 6"),
              "uploads_missing": (svg.GREEN, "3 5"), "db_queries": (svg.BLACK, "")}
INSTANCE_STYLES = [(c, d) for d in svg.DASHES for c in (svg.BLUE, svg.VERMILLION, svg.GREEN, svg.PURPLE, svg.ORANGE)]
PER_INSTANCE_PREFIX = "requests on "
OUTCOME_TEXT = {"reproduced": "✗ disaster reproduced", "survived": "✓ survived", "error": "⚠ scenario error"}
APP_ORDER = {"stateful": 0, "stateless": 1}
Points = tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class AppRun:
    """One scenario x app result, read from the journal."""

    label: str
    app: str
    outcome: str
    expected: str
    explanation: str
    notes: tuple[str, ...]
    figures: tuple[tuple[str, float | None, str], ...]  # (label, value, unit)
    checks: tuple[tuple[str, float | None, bool], ...]  # ("figure op limit", value, held)
    events: tuple[tuple[float, str], ...]  # (t, label)
    series: Mapping[str, Points]  # by normalised name
    shares: tuple[tuple[str, float], ...]  # (instance, requests)
    latency: tuple[tuple[str, float], ...]  # (percentile, ms)
    latency_window: str = ""

    @property
    def last_t(self) -> float:
        return max([1.0, *(t for pts in self.series.values() for t, _ in pts),
                    *(t for t, _ in self.events if t >= 0)])


@dataclass(frozen=True)
class ScenarioView:
    name: str
    title: str
    summary: str
    runs: tuple[AppRun, ...]
    price: Mapping[str, Any]


# --- reading the journal ----------------------------------------------------------------------

def _num(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def series_key(name: str) -> str:
    """Normalise a series name: 'items lost' -> 'items_lost', 'db_queries/s' -> 'db_queries'."""
    key = name.strip().lower().removesuffix("/s").removesuffix("_per_s")
    return key if key.startswith(PER_INSTANCE_PREFIX) else key.replace(" ", "_")


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Mapping[str, Any]]:
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, (list, tuple)) else []


def _read_run(r: Mapping[str, Any]) -> AppRun:
    series: dict[str, Points] = {}
    for s in _list(r.get("series")):
        pts = []
        for p in s.get("points") or ():
            if isinstance(p, (list, tuple)) and len(p) == 2:
                t, v = _num(p[0]), _num(p[1])
                if t is not None and v is not None:
                    pts.append((t, v))
        key = series_key(str(s.get("name", "?")))
        series[key] = _merge(series[key], tuple(pts)) if key in series else tuple(pts)
    events = []
    for ev in _list(r.get("events")):
        t = _num(ev.get("t"))
        if t is not None:
            if ev.get("kind") == "phase":  # the scenario's own phase marks: name the phase
                label = f"▶ {ev.get('target', '')}"
            else:
                label = " ".join(str(ev[k]) for k in ("target", "kind") if ev.get(k))
            events.append((t, label + (f" ({ev['detail']})" if ev.get("detail") else "")))
    figures = tuple((str(f.get("label") or f.get("name")), _num(f.get("value")), str(f.get("unit") or ""))
                    for f in _list(r.get("figures")))
    checks = []
    for c in _list(r.get("checks")):
        tol = _map(c.get("tolerance"))
        limit = _num(tol.get("limit"))
        text = f"{tol.get('figure', '?')} {tol.get('op', '?')} {svg.fmt(limit) if limit is not None else '?'}"
        checks.append((text, _num(c.get("value")), bool(c.get("held"))))
    shares = tuple((str(i.get("instance", "?")), _num(i.get("requests")) or 0.0) for i in _list(r.get("instances")))
    lat = _map(r.get("latency"))
    latency = tuple((p, v) for p in ("p50", "p90", "p95", "p99", "max")
                    if (v := _num(lat.get(f"{p}_ms", lat.get(p)))) is not None)
    app, variant = str(r.get("app") or "?"), str(r.get("variant") or "")
    return AppRun(
        label=f"{app} ({variant})" if variant else app, app=app, outcome=str(r.get("outcome") or ""),
        expected=str(r.get("expected") or ""), explanation=str(r.get("explanation") or ""),
        notes=tuple(str(n) for n in r.get("notes") or () if n), figures=figures, checks=tuple(checks),
        events=tuple(events), series=series, shares=shares, latency=latency,
        latency_window=str(lat.get("window") or ""))


def _merge(a: Points, b: Points) -> Points:
    """Add two per-second series that share a name (two crowds running at once) second by second."""
    sums: dict[float, float] = {}
    for t, v in (*a, *b):
        sums[float(math.floor(t))] = sums.get(float(math.floor(t)), 0.0) + v
    return tuple(sorted(sums.items()))


def _scenario_meta(name: str) -> tuple[str, str]:
    """Return (title, summary) from the scenario registry, if it knows the scenario; else the name."""
    try:
        from scenarios import REGISTRY  # here: the renderer reads journals, the registry is only for titles

        sc = REGISTRY.get(name)
    except Exception:  # a renderer must not fail for want of a title
        sc = None
    return (str(sc.title), str(sc.summary)) if sc is not None else (name, "")


def read_journal(journal: Mapping[str, Any]) -> list[ScenarioView]:
    """Group the journal's results by scenario (journal order), stateful before stateless."""
    order: dict[str, list[Mapping[str, Any]]] = {}
    for r in _list(journal.get("results")):
        order.setdefault(str(r.get("scenario") or "scenario"), []).append(r)
    prices = {str(p.get("scenario")): p for p in _list(journal.get("prices"))}
    views = []
    for name, results in order.items():
        title, summary = str(results[0].get("title") or ""), str(results[0].get("summary") or "")
        if not title:
            title, summary = _scenario_meta(name)
        runs = sorted((_read_run(r) for r in results), key=lambda a: (APP_ORDER.get(a.app, 9), a.label))
        views.append(ScenarioView(name, title, summary, tuple(runs), prices.get(name, {})))
    return views


# --- charts -----------------------------------------------------------------------------------

def loss_keys(runs: Sequence[AppRun]) -> list[str]:
    """Pick the series that show what users lost: the non-zero loss series, else database queries/s, else none."""
    nonzero = [k for k in LOSS_SERIES if any(v for r in runs for _, v in r.series.get(k, ()))]
    if nonzero:
        return nonzero
    if any("db_queries" in r.series for r in runs):
        return ["db_queries"]
    return []  # flat zeros would contradict a loss the verdict table counts some other way


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


# --- page -------------------------------------------------------------------------------------

def _cell_value(value: float | None, unit: str) -> str:
    return "—" if value is None else escape(svg.fmt(value) + (f" {unit}" if unit else ""))


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
    for label in dict.fromkeys(f[0] for r in runs for f in r.figures):
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
            out.append(f"<td>{mark}</td>")
        out.append("</tr>")
    out.append("<tr><th>why</th>")
    for r in runs:
        notes = "".join(f'<li>{escape(n)}</li>' for n in r.notes)
        out.append(f"<td>{escape(r.explanation)}" + (f'<ul class="notes">{notes}</ul>' if notes else "") + "</td>")
    out.append("</tr></tbody></table>")
    return "".join(out)


def _price(price: Mapping[str, Any]) -> str:
    p50, p99 = _num(price.get("extra_p50_ms")), _num(price.get("extra_p99_ms"))
    if p50 is None and p99 is None:
        return ""
    parts = [f"{'+' if v >= 0 else ''}{svg.fmt(round(v, 2))} ms at {name}"
             for name, v in (("p50", p50), ("p99", p99)) if v is not None]
    window = f" ({price['window']})" if price.get("window") else ""
    return (f'<p class="price"><strong>The price of statelessness</strong>{escape(window)}: '
            f'{escape(", ".join(parts))} per request, measured in this run.</p>')


def _scenario_section(sc: ScenarioView) -> str:
    out = [f'<section class="scenario" id="{escape(sc.name)}"><h2>{escape(sc.title)} <code>{escape(sc.name)}</code></h2>']
    if sc.summary:
        out.append(f'<p class="summary">{escape(sc.summary)}</p>')
    out.append(_verdict_table(sc))
    out.append(_price(sc.price))
    for row in _charts(sc):
        out.append(f'<div class="row" data-cols="{len(row)}">' + "".join(f"<figure>{c}</figure>" for c in row)
                   + "</div>")
    out.append("</section>")
    return "".join(out)


CSS = """
body{font-family:"DejaVu Sans",Verdana,Arial,sans-serif;font-size:20px;color:#111;background:#fff;margin:0 auto;
max-width:1800px;padding:16px 28px;line-height:1.4}
h1{font-size:34px;margin:8px 0}h2{font-size:28px;border-top:3px solid #111;padding-top:14px;margin-top:40px}
code{font-size:0.8em;background:#f1f1f1;padding:1px 6px;border-radius:4px;font-weight:normal}
table.verdict{border-collapse:collapse;width:100%;margin:12px 0 20px}
table.verdict th,table.verdict td{border:1px solid #999;padding:8px 12px;text-align:left;vertical-align:top}
table.verdict thead th{background:#eee;font-size:22px}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.check th{font-weight:normal;font-family:monospace}
td.outcome-reproduced{background:#fbe3d4}td.outcome-survived{background:#d7ecf7}td.outcome-error{background:#eee}
.expected{font-size:16px}.notes{font-size:17px;margin:6px 0 0;padding-left:20px}
.price{background:#f4f4f4;padding:8px 12px;border-left:6px solid #0072B2}
.row{display:grid;gap:16px;margin:8px 0;grid-template-columns:repeat(auto-fit,minmax(0,1fr))}
@media (max-width:1000px){.row{grid-template-columns:1fr}}
figure{margin:0;border:1px solid #ccc;padding:4px}svg.chart{display:block;height:auto}
nav a{margin-right:18px}
@media print{h2{break-before:page}}
"""


def render_html(journal: Mapping[str, Any]) -> str:
    """Return the whole report as one HTML document."""
    scenarios = read_journal(journal)
    inputs = _map(journal.get("inputs"))
    facts = [f"{k}: {v}" for k, v in (("started", journal.get("started_at")), ("seed", inputs.get("seed")),
                                      ("quick", inputs.get("quick")), ("users", inputs.get("users")),
                                      ("balancer", inputs.get("lb")), ("wall time (s)", journal.get("wall_s")))
             if v is not None]
    title = str(journal.get("title") or "statelab: stateful vs stateless, measured")
    nav = " ".join(f'<a href="#{escape(s.name)}">{escape(s.title)}</a>' for s in scenarios)
    body = "".join(_scenario_section(s) for s in scenarios) or "<p>This journal holds no results.</p>"
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{escape(title)}</h1><p>{escape(' · '.join(facts))}</p><nav>{nav}</nav>{body}</body></html>\n")


def write_html(report_json: Mapping[str, Any] | Any, path: Path) -> None:
    """Write the self-contained HTML report of a run's journal (a dict, or anything with to_json())."""
    journal = report_json.to_json() if hasattr(report_json, "to_json") else report_json
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(journal), encoding="utf-8")


__all__ = ["write_html", "render_html", "read_journal", "loss_keys", "series_key", "AppRun", "ScenarioView"]
