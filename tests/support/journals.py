"""A synthetic run journal (the form of `RunReport.to_json()`): one scenario, both apps, hostile strings included."""

from __future__ import annotations

from typing import Any

HOSTILE = '<script>alert("x")</script>'
SECONDS = 30


def _series(name: str, values: list[float]) -> dict[str, Any]:
    return {"name": name, "unit": "1/s", "points": [[float(t), v] for t, v in enumerate(values)]}


def _result(app: str, lost: bool) -> dict[str, Any]:
    """One result in the form of ScenarioResult.to_json()."""
    requests = [100.0 + (i % 5) for i in range(SECONDS)]
    errors = [0.0] * SECONDS
    logouts = [0.0] * SECONDS
    if lost:
        for i in (10, 11, 20, 21):
            errors[i] = 12.0
            logouts[i] = 30.0
    return {
        "scenario": "rolling-deploy", "app": app, "variant": "",
        "outcome": "reproduced" if lost else "survived", "expected": "reproduced" if lost else "survived",
        "matched": True, "explanation": f"Sessions lived in process memory. {HOSTILE}",
        "figures": [{"name": "users", "label": "simulated users", "value": 60, "unit": "users"},
                    {"name": "users_logged_out", "label": "users logged out", "value": 60 if lost else 0,
                     "unit": "users"},
                    {"name": "items_lost", "label": f"cart items lost {HOSTILE}", "value": 360 if lost else 0,
                     "unit": "items"},
                    {"name": "deploy_s", "label": "deploy duration", "value": 2.2 if lost else 3.4, "unit": "s"},
                    {"name": "p50_ms", "label": "p50 latency", "value": 1234.5678, "unit": "ms"},
                    {"name": "nan", "label": "not measured", "value": None, "unit": ""}],
        "checks": [{"tolerance": {"figure": "users_logged_out", "op": "<=", "limit": 0, "why": ""},
                    "value": 60 if lost else 0, "held": not lost}],
        "latency": {"p50_ms": 4.2 if lost else 5.0, "p99_ms": 85.5 if lost else 88.6, "requests": 3000,
                    "window": "steady"},
        "events": [{"t": -3.0, "kind": "started", "target": "lab", "detail": "before traffic"},
                   {"t": 10.0, "kind": "draining", "target": "app-1", "detail": ""},
                   {"t": 10.4, "kind": "ready", "target": "app-1", "detail": "generation 2"},
                   {"t": 20.0, "kind": "draining", "target": "app-2", "detail": HOSTILE}],
        "series": [_series("requests", requests), _series("errors", errors), _series("logouts", logouts),
                   _series("items lost", [0.0] * SECONDS), _series("db_queries/s", [50.0] * SECONDS),
                   _series("requests on app-1", [40.0] * SECONDS), _series("requests on app-2", [60.0] * SECONDS)],
        "instances": [{"instance": "app-1", "requests": 1000, "share": 0.33},
                      {"instance": "app-2", "requests": 900, "share": 0.3},
                      {"instance": "app-3", "requests": 1100, "share": 0.37}],
        "notes": [f"note {HOSTILE}"], "run_dir": "/tmp/x",
    }


def synthetic_journal() -> dict[str, Any]:
    """A run of one scenario against both apps, in the form of RunReport.to_json()."""
    return {"statelab_journal": 1, "title": f"statelab run {HOSTILE}", "started_at": "2026-11-25T10:00:00",
            "inputs": {"seed": 1, "quick": True, "lb": "builtin"}, "wall_s": 40.0,
            "results": [_result("stateless", lost=False), _result("stateful", lost=True)],
            "prices": [{"scenario": "rolling-deploy", "window": "steady", "extra_p50_ms": 0.8, "extra_p99_ms": 3.1}]}
