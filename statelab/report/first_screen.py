"""The HTML report's first screen: per scenario one sentence in users' words, with badges, and one key chart.

At 1280x720 (a projector) the four classic scenarios fit on it without scrolling: a 2x2 grid of
cards. The sentences come from `statelab.report.story`, each app's part led by its outcome badge.
Which chart answers a scenario's question is `KEY_CHART`: a series with the apps overlaid, the
share of requests per instance, or bars of a few figures; a scenario it does not list gets its
first non-zero loss series, else its failed requests, else its main figure as bars.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape
from typing import Sequence

from statelab.report import story, svg
from statelab.report.view import SERIES_LABELS, AppRun, ScenarioView, loss_keys, natural_key

BADGE_TEXT = {"reproduced": "✗ reproduced", "survived": "✓ survived", "error": "⚠ error"}
APP_COLORS = {"stateful": svg.VERMILLION, "stateless": svg.BLUE}
EXTRA_STYLES = [(svg.GREEN, "3 5"), (svg.PURPLE, "14 4 3 4"), (svg.ORANGE, ""), (svg.SKY, "10 6")]
SHARES = "shares"
WIDTH, HEIGHT = 600, 180
SAME_PHASE_S = 0.5  # a phase mark is drawn when every app reached it within this of the others


@dataclass(frozen=True)
class Bars:
    """Bars of figures per app: each bar is the sum of some figures minus others (e.g. follow-ups that worked)."""

    title: str
    bars: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...]  # (label, added figures, subtracted figures)

    def values(self, run: AppRun) -> list[float]:
        out = []
        for _, plus, minus in self.bars:
            got = [run.facts.value(n) for n in (*plus, *minus)]
            ok = all(v is not None for v in got)
            out.append(sum(got[:len(plus)]) - sum(got[len(plus):]) if ok else math.nan)  # type: ignore[arg-type]
        return out


KeyChart = str | Bars
KEY_CHART: dict[str, KeyChart] = {
    "rolling-deploy": "logouts",
    "nat-hotspot": SHARES,
    "local-disk-upload": Bars("follow-up requests after an upload", (
        ("found it", ("follow_ups",), ("follow_ups_failed",)),
        ("401: logged out", ("follow_ups_401",), ()), ("404: no file", ("follow_ups_404",), ()))),
    "cold-cache-autoscale": "db_queries",
    # the costs group
    "redis-outage": "logouts",
    "jwt-theft": "attacker_accepted",
    "s3-latency": Bars("time per transfer of 100 KB, p50 (ms)", (
        ("upload", ("upload_p50_ms",), ()), ("download", ("download_p50_ms",), ()))),
    "server-crash": "logouts",
    "worker-crash": Bars("background jobs, one worker killed mid-job", (
        ("done", ("jobs_done",), ()), ("lost", ("jobs_lost",), ()), ("ran twice", ("jobs_ran_twice",), ()),
        ("effect doubled", ("jobs_effect_doubled",), ()))),
    "worker-split": Bars("page loads", (
        ("found the session", ("page_loads",), ("logout_events",)), ("logged out", ("logout_events",), ()))),
    "lost-update": Bars("acknowledged cart adds from tabs at once", (
        ("in the cart", ("adds_acked",), ("items_lost",)), ("lost", ("items_lost",), ()))),
}
KEY_TITLES = {"logouts": "users logged out, per second", "items_lost": "cart items lost, per second",
              "uploads_missing": "uploads missing, per second", "errors": "failed requests, per second",
              "db_queries": "database queries, per second", "attacker_accepted": "stolen token accepted, per second",
              "requests": "requests per second", SHARES: "share of requests per instance"}


def judged_runs(sc: ScenarioView) -> list[AppRun]:
    """Return the runs the first screen shows: those with an expectation (all of them if none has one)."""
    return [r for r in sc.runs if r.judged] or list(sc.runs)


def key_chart_kind(sc: ScenarioView) -> KeyChart:
    """Return which chart answers a scenario's question (KEY_CHART, else a sensible fallback)."""
    runs = judged_runs(sc)
    kind = KEY_CHART.get(sc.name)
    if isinstance(kind, Bars) and any(not math.isnan(v) for r in runs for v in kind.values(r)):
        return kind
    if kind == SHARES and any(r.shares for r in runs):
        return kind
    if isinstance(kind, str) and any(kind in r.series for r in runs):
        return kind
    for key in (*loss_keys(runs), "errors"):
        if any(v for r in runs for _, v in r.series.get(key, ())):
            return key
    main = next((c.figure for r in runs for c in r.facts.checks), None)
    if main is not None:
        label = next((f.label for r in runs if (f := r.facts.figures.get(main))), main)
        return Bars(label, ((label, (main,), ()),))
    return "requests"


def key_names(runs: Sequence[AppRun]) -> list[str]:
    """Name each run in the key chart's legend: its variant alone where that leaves no doubt, else its label.

    The variant alone is enough when every run with a variant is of one app ("no persistence",
    "AOF everysec" next to "stateful"); with variants of both apps ("cookie", "round-robin") the
    app stays in the name.
    """
    apps = {r.app for r in runs if r.variant}
    return [r.variant if r.variant and len(apps) == 1 else r.label for r in runs]


def _app_styles(runs: Sequence[AppRun]) -> list[tuple[str, str]]:
    extra = iter(EXTRA_STYLES)
    return [(APP_COLORS[r.app], "" if r.app == "stateful" else "10 6") if not r.variant and r.app in APP_COLORS
            else next(extra, (svg.BLACK, "")) for r in runs]


def _common_phases(runs: Sequence[AppRun]) -> list[svg.Marker]:
    """Return the phase marks every app reached at about the same time (after the start), named without '▶'."""
    phases = [{label: t for t, label in r.events if label.startswith("▶")} for r in runs]
    shared = set.intersection(*(set(p) for p in phases)) if phases else set()
    marks = []
    for label in shared:
        times = [p[label] for p in phases]
        if min(times) > SAME_PHASE_S and max(times) - min(times) <= SAME_PHASE_S:
            marks.append(svg.Marker(min(times), label.removeprefix("▶").strip()))
    return sorted(marks, key=lambda m: m.x)


def key_chart(sc: ScenarioView) -> str:
    """Draw the first screen's chart: the apps overlaid on one axis, or grouped bars."""
    runs = judged_runs(sc)
    kind = key_chart_kind(sc)
    styles = _app_styles(runs)
    names = key_names(runs)
    if isinstance(kind, Bars):
        groups = [(name, [0.0 if math.isnan(v) else v for v in kind.values(r)], color)
                  for r, name, (color, _) in zip(runs, names, styles)]
        return svg.grouped_bar_chart(kind.title, [label for label, _, _ in kind.bars], groups, width=WIDTH,
                                     height=HEIGHT, cls="key figures", compact=True)
    if kind == SHARES:
        instances = sorted({i for r in runs for i, _ in r.shares}, key=natural_key)
        groups = []
        for r, name, (color, _) in zip(runs, names, styles):
            total = sum(v for _, v in r.shares) or 1.0
            per = dict(r.shares)
            groups.append((name, [100.0 * per.get(n, 0.0) / total for n in instances], color))
        return svg.grouped_bar_chart(KEY_TITLES[SHARES], instances, groups, unit="%", width=WIDTH, height=HEIGHT,
                                     cls="key shares", compact=True)
    series = [svg.Series(name, r.series.get(kind, ()), color, dash)
              for r, name, (color, dash) in zip(runs, names, styles)]
    return svg.line_chart(KEY_TITLES.get(kind, SERIES_LABELS.get(kind, kind)), series,
                          x_max=max(r.last_t for r in runs), y_label="per second", markers=_common_phases(runs),
                          marker_legend=False, width=WIDTH, height=HEIGHT, cls=f"key {kind}", compact=True)


def _badge(run: AppRun, color: str, name: str) -> str:
    deviated = bool(run.expected) and run.expected != run.outcome
    tip = (f"{run.label}: expected {run.expected}, " + ("DEVIATED" if deviated else "as expected")) if run.expected \
        else f"{run.label}: not judged"
    return (f'<span class="badge outcome-{escape(run.outcome or "none")}" style="border-left-color:{color}" '
            f'title="{escape(tip)}">{escape(name)} {escape(BADGE_TEXT.get(run.outcome, run.outcome or "?"))}'
            + (" — DEVIATED" if deviated else "") + "</span>")


def sentence_html(sc: ScenarioView) -> str:
    """Return the scenario's sentence, each case's part led by its badge (colour-keyed to the chart).

    A case with a variant is badged with its variant alone, its app said once before the first
    of them ("stateless: [no persistence ✗] ...; [AOF everysec ✓] ..."): five cases fit on a card.
    """
    runs = judged_runs(sc)
    by_label = {r.label: (r, color) for r, (color, _) in zip(runs, _app_styles(runs))}
    parts, app = [], ""
    for label, text in story.sentence(sc.name, [r.facts for r in runs]):
        run, color = by_label[label]
        lead = f'<strong class="app">{escape(run.app)}:</strong> ' if run.variant and run.app != app else ""
        parts.append(f"{lead}{_badge(run, color, run.variant or run.app)} {escape(text)}")
        app = run.app
    return "; ".join(parts)


def card(sc: ScenarioView) -> str:
    """Return one scenario's card: its title, its sentence with badges, its key chart."""
    return (f'<article class="card" data-scenario="{escape(sc.name)}"><h2><a href="#{escape(sc.name)}">'
            f'{escape(sc.title)}</a></h2><p class="sentence">{sentence_html(sc)}</p>'
            f'<figure class="key-chart">{key_chart(sc)}</figure></article>')


__all__ = ["Bars", "KEY_CHART", "card", "judged_runs", "key_chart", "key_chart_kind", "key_names", "sentence_html"]
