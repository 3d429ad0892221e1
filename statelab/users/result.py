"""A crowd's frozen result: `CrowdResult` with its stable `to_json()` form, built from the tallies.

`_build_result` sums the users' `UserStats` and freezes the `_Recorder` once the crowd has ended.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from statelab.users.measures import FINE_STEP_S, LatencySummary, _Recorder, timeline_step_s
from statelab.users.population import Population
from statelab.users.virtual_user import VirtualUser


@dataclass(frozen=True)
class TimelineBucket:
    """What happened from t to t + width_s seconds after the run's start: what the chart plots.

    Counts, not rates: divide by width_s for per-second values. A short run has 0.25 s buckets,
    a long one whole seconds (`timeline_step_s`).
    """

    t: float
    width_s: float
    requests: int
    errors: int
    logouts: int
    items_lost: int


@dataclass(frozen=True)
class UserSummary:
    index: int
    username: str
    address: str | None
    behind_nat: bool
    stats: dict[str, int]


@dataclass(frozen=True)
class CrowdResult:
    """Everything a crowd measured; `to_json()` is the stable, plain-typed form."""

    base_url: str
    journey: str
    seed: int
    users: int
    nat_users: int
    wall_s: float
    requests: int
    answered: int  # requests that got an HTTP response of any status (the rest: no answer at all)
    requests_per_s: float
    errors: dict[str, int]
    users_logged_out: int
    logout_events: int
    logins_ok: int
    logins_failed: int
    relogins: int
    token_refreshes: int
    items_added: int
    items_lost: int
    items_unexpected: int
    cart_checks: int
    uploads: int
    uploads_missing: int
    uploads_corrupt: int
    jobs_done: int
    jobs_failed: int
    jobs_missing: int
    jobs_timed_out: int
    stale_retries: int
    connects: int
    journey_crashes: int
    latency: LatencySummary  # requests made while the crowd ran (not the closing checks)
    latency_by_instance: dict[str, LatencySummary]
    served_by: dict[str, int]
    timeline: tuple[TimelineBucket, ...]
    # Timer lateness of the crowd's loop: if its p99 nears the request latencies, the generator
    # itself was the bottleneck (or starved of CPU) and latencies are overstated.
    loop_lag: LatencySummary
    cpu_share: float  # process CPU seconds / wall seconds (whole process, all threads)
    loop_cpu_share: float  # the crowd's own thread only: the load generator's cost
    user_summaries: tuple[UserSummary, ...] = field(repr=False, default=())
    pages: int = 0  # page loads of the `pages` journey

    @property
    def error_total(self) -> int:
        return sum(self.errors.values())

    def to_json(self, per_user: bool = False) -> dict[str, Any]:
        """Return plain dicts/lists/numbers; per-user summaries only when asked (they are long)."""
        doc = asdict(self)
        if not per_user:
            del doc["user_summaries"]
        doc["timeline"] = [asdict(b) for b in self.timeline]
        return doc


_SUMMED = ("logins_ok", "logins_failed", "relogins", "token_refreshes", "items_added", "items_lost",
           "items_unexpected", "cart_checks", "uploads", "uploads_missing", "uploads_corrupt",
           "jobs_done", "jobs_failed", "jobs_missing", "jobs_timed_out", "pages")


def _build_result(base_url: str, journey_name: str, seed: int, population: Population,
                  users: list[VirtualUser], rec: _Recorder, wall_s: float, cpu_s: float,
                  thread_cpu_s: float, crashes: int) -> CrowdResult:
    sums = {name: sum(getattr(u.stats, name) for u in users) for name in _SUMMED}
    wall = max(wall_s, 1e-9)
    return CrowdResult(
        base_url=base_url, journey=journey_name, seed=seed, users=population.size,
        nat_users=population.nat_users, wall_s=round(wall_s, 3), requests=rec.requests, answered=rec.answered,
        requests_per_s=round(rec.requests / wall, 1), errors=dict(rec.error_kinds),
        users_logged_out=sum(1 for u in users if u.stats.logout_events),
        logout_events=rec.logout_events,
        stale_retries=sum(u.client.stale_retries for u in users),
        connects=sum(u.client.connects for u in users), journey_crashes=crashes,
        latency=rec.latency.summary(), loop_lag=rec.loop_lag.summary(),
        latency_by_instance={k: h.summary() for k, h in sorted(rec.latency_by_instance.items())},
        served_by=dict(sorted(rec.served_by.items())),
        timeline=_timeline(rec.timeline, timeline_step_s(wall_s)),
        cpu_share=round(cpu_s / wall, 4), loop_cpu_share=round(thread_cpu_s / wall, 4),
        user_summaries=tuple(UserSummary(u.spec.index, u.spec.username, u.spec.address,
                                         u.spec.behind_nat, dict(vars(u.stats))) for u in users),
        **sums)


def _timeline(fine: list[list[int]], step_s: float) -> tuple[TimelineBucket, ...]:
    """Sum the recorder's fine buckets into buckets of step_s (a multiple of FINE_STEP_S)."""
    per = max(1, round(step_s / FINE_STEP_S))
    out = []
    for start in range(0, len(fine), per):
        sums = [sum(col) for col in zip(*fine[start:start + per])]
        out.append(TimelineBucket(round(start * FINE_STEP_S, 3), per * FINE_STEP_S, *sums))
    return tuple(out)
