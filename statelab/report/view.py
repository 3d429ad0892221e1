"""The run's journal read into views for the HTML report: per scenario, each app's figures, checks and series.

It reads plain dicts (`RunReport.to_json()`); every key is optional (see `statelab.report.html`
for the list), so a journal from an older or newer statelab still renders.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from statelab.report import story, svg

LOSS_SERIES = ("logouts", "items_lost", "uploads_missing", "attacker_accepted")
SERIES_LABELS = {
    "attacker_accepted": "stolen token accepted/s",
    "requests": "requests/s",
    "errors": "errors/s",
    "logouts": "users logged out/s",
    "items_lost": "cart items lost/s",
    "uploads_missing": "uploads missing/s",
    "db_queries": "database queries/s",
}
PER_INSTANCE_PREFIX = "requests on "
APP_ORDER = {"stateful": 0, "stateless": 1}
Points = tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class AppRun:
    """One scenario x app result, read from the journal."""

    label: str
    app: str
    variant: str
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
    latency_requests: int = 0
    facts: story.CaseFacts = story.CaseFacts("?", "")

    @property
    def judged(self) -> bool:
        return bool(self.expected)

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

def as_num(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def series_key(name: str) -> str:
    """Normalise a series name: 'items lost' -> 'items_lost', 'db_queries/s' -> 'db_queries'."""
    key = name.strip().lower().removesuffix("/s").removesuffix("_per_s")
    return key if key.startswith(PER_INSTANCE_PREFIX) else key.replace(" ", "_")


def as_map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Mapping[str, Any]]:
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, (list, tuple)) else []


def _read_run(r: Mapping[str, Any]) -> AppRun:
    series: dict[str, Points] = {}
    for s in _list(r.get("series")):
        pts = []
        for p in s.get("points") or ():
            if isinstance(p, (list, tuple)) and len(p) == 2:
                t, v = as_num(p[0]), as_num(p[1])
                if t is not None and v is not None:
                    pts.append((t, v))
        key = series_key(str(s.get("name", "?")))
        series[key] = _merge(series[key], tuple(pts)) if key in series else tuple(pts)
    events = []
    for ev in _list(r.get("events")):
        t = as_num(ev.get("t"))
        if t is not None:
            if ev.get("kind") == "phase":  # the scenario's own phase marks: name the phase
                label = f"▶ {ev.get('target', '')}"
            else:
                label = " ".join(str(ev[k]) for k in ("target", "kind") if ev.get(k))
            events.append((t, label + (f" ({ev['detail']})" if ev.get("detail") else "")))
    figures = tuple((str(f.get("label") or f.get("name")), as_num(f.get("value")), str(f.get("unit") or ""))
                    for f in _list(r.get("figures")))
    checks = []
    for c in _list(r.get("checks")):
        tol = as_map(c.get("tolerance"))
        limit = as_num(tol.get("limit"))
        text = f"{tol.get('figure', '?')} {tol.get('op', '?')} {svg.fmt(limit) if limit is not None else '?'}"
        checks.append((text, as_num(c.get("value")), bool(c.get("held"))))
    shares = tuple((str(i.get("instance", "?")), as_num(i.get("requests")) or 0.0) for i in _list(r.get("instances")))
    lat = as_map(r.get("latency"))
    latency = tuple((p, v) for p in ("p50", "p90", "p95", "p99", "max")
                    if (v := as_num(lat.get(f"{p}_ms", lat.get(p)))) is not None)
    app, variant = str(r.get("app") or "?"), str(r.get("variant") or "")
    return AppRun(
        label=f"{app} ({variant})" if variant else app, app=app, variant=variant, outcome=str(r.get("outcome") or ""),
        expected=str(r.get("expected") or ""), explanation=str(r.get("explanation") or ""),
        notes=tuple(str(n) for n in r.get("notes") or () if n), figures=figures, checks=tuple(checks),
        events=tuple(events), series=series, shares=shares, latency=latency,
        latency_window=str(lat.get("window") or ""), latency_requests=int(as_num(lat.get("requests")) or 0),
        facts=story.facts_from_json(r))


def _merge(a: Points, b: Points) -> Points:
    """Add two rate series that share a name (two crowds running at once) bucket by bucket.

    The buckets are the finer of the two series' steps (0.25 s for short runs, 1 s otherwise).
    """
    step = min(_step(a), _step(b))
    sums: dict[float, float] = {}
    for t, v in (*a, *b):
        key = round(math.floor(t / step + 1e-9) * step, 3)
        sums[key] = sums.get(key, 0.0) + v
    return tuple(sorted(sums.items()))


def _step(points: Points) -> float:
    gaps = [round(b[0] - a[0], 3) for a, b in zip(points, points[1:]) if b[0] > a[0]]
    return min(gaps, default=1.0) or 1.0


def _scenario_meta(name: str) -> tuple[str, str]:
    """Return (title, summary) from the scenario registry, if it knows the scenario; else the name."""
    try:
        from scenarios import REGISTRY  # here: the renderer reads journals, the registry is only for titles

        sc = REGISTRY.get(name)
    except Exception:  # a renderer must not fail for want of a title
        sc = None
    return (str(sc.title), str(sc.summary)) if sc is not None else (name, "")


def read_journal(journal: Mapping[str, Any]) -> list[ScenarioView]:
    """Group the journal's results by scenario (journal order), stateful before stateless, cases in journal order.

    A scenario lists its cases in the order its story goes (the failure, then its mitigations),
    and the journal keeps that order.
    """
    order: dict[str, list[Mapping[str, Any]]] = {}
    for r in _list(journal.get("results")):
        order.setdefault(str(r.get("scenario") or "scenario"), []).append(r)
    prices = {str(p.get("scenario")): p for p in _list(journal.get("prices"))}
    views = []
    for name, results in order.items():
        title, summary = str(results[0].get("title") or ""), str(results[0].get("summary") or "")
        if not title:
            title, summary = _scenario_meta(name)
        runs = sorted((_read_run(r) for r in results), key=lambda a: APP_ORDER.get(a.app, 9))
        views.append(ScenarioView(name, title, summary, tuple(runs), prices.get(name, {})))
    return views


def loss_keys(runs: Sequence[AppRun]) -> list[str]:
    """Pick the series that show what users lost: the non-zero loss series, else database queries/s, else none."""
    nonzero = [k for k in LOSS_SERIES if any(v for r in runs for _, v in r.series.get(k, ()))]
    if nonzero:
        return nonzero
    if any("db_queries" in r.series for r in runs):
        return ["db_queries"]
    return []  # flat zeros would contradict a loss the verdict table counts some other way


def natural_key(name: str) -> tuple[str, int]:
    head = name.rstrip("0123456789")
    return head, int(name[len(head):] or -1)


__all__ = ["AppRun", "ScenarioView", "LOSS_SERIES", "PER_INSTANCE_PREFIX", "SERIES_LABELS", "loss_keys",
           "read_journal", "series_key"]
