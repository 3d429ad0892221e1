"""cold-cache-autoscale: a traffic spike, autoscaling from 2 to 6 instances, and a database stampede."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from scenarios import Harness, crowd_series, error_notes, failed_requests, scale_profile
from statelab import measure
from statelab.scenario import (AppCase, Figure, Measurements, Profile, Progress, Series, Target, Tolerance, Verdict,
                               judge)
from statelab.users import CrowdResult, Population, VirtualUser

EXPECT = {"stateful": "reproduced", "stateless": "survived"}
POLICY = "round-robin"
STAMPEDE_OFF = (("LAB_CACHE_STAMPEDE_PROTECTION", "0"),)


async def anonymous_browser(user: VirtualUser) -> None:
    """Look at products by popularity without logging in, so DB queries are cache misses only."""
    while user.running:
        await user.call("GET", f"/products/{user.pick_product()}")
        user.steps_done += 1
        await user.think()


@dataclass(frozen=True)
class ColdCacheAutoscale:
    """New instances with empty in-process caches all ask the database at once, exactly when load peaks.

    What breaks: a spike arrives and the autoscaler adds instances, as designed. Each new stateful
    instance starts with an empty in-process cache, so for its first seconds nearly every request
    becomes a database query: the database's load multiplies at the moment it is busiest, and
    the fix (more instances) makes it worse, because every instance warms its own copy.

    Why: the principle violated is "instances are interchangeable and disposable": a per-process
    cache is state, and it makes a new instance worse than an old one until it has warmed up.

    What the stateless design does differently: the cache is shared (Redis), already warm when
    new instances join, so they cost the database nothing; with stampede protection (one loader
    per key, others wait for it) even an expiring hot key costs one query, not one per request.
    The third column runs the stateless app with that protection off (full profile only: it
    would take --quick over its one-minute budget).

    Judged on the database's load (queries/s after the join vs steady, the number an on-call
    engineer sees); DB queries per request are shown next to it, so the spike's extra traffic can
    be told apart from the cost of per-instance caches.
    """

    name: str = "cold-cache-autoscale"
    title: str = "Cold caches on autoscale"
    summary: str = "a spike, scale 2 -> 6 instances: how hard the new instances' cold caches hit the database"
    expect: dict[str, str] = field(default_factory=lambda: dict(EXPECT))
    tolerances: tuple[Tolerance, ...] = (
        Tolerance("db_load_ratio", "<", 2.0, "DB queries/s after the new instances join stay under 2x the steady state"),
        Tolerance("failed_requests", "<=", 0, "no request fails during the spike"),
    )
    preconditions: tuple[Tolerance, ...] = (
        Tolerance("baseline_db_qps", ">", 0, "the /stats sampler must have seen DB queries before the spike"),
        Tolerance("instances_after", ">=", 3, "the lab must have scaled out"),
    )

    def cases(self) -> tuple[AppCase, ...]:
        return (AppCase("stateful", expect=self.expect["stateful"]),
                AppCase("stateless", expect=self.expect["stateless"]),
                AppCase("stateless", variant="no stampede protection", env=STAMPEDE_OFF, expect=None, in_quick=False))

    def profile(self, quick: bool, users: int | None) -> Profile:
        base = scale_profile(60, quick, 40, users)
        return Profile(users=base, instances=2, phase_s=2.0 if quick else 5.0,
                       extra=(("spike_users", base * 2), ("scale_to", 6), ("think_s", 0.4)),
                       seed_users=200)

    def run(self, app: AppCase, profile: Profile, seed: int, lb: str, run_dir: Path, progress: Progress,
            target: Target | None = None) -> Measurements:
        with Harness(app, run_dir, progress, lb, target) as h:
            lab = h.start_lab(profile.instances, POLICY, seed_users=profile.seed_users)
            old = [i.id for i in lab.status().instances]
            h.start_samplers(stats=True)
            assert h.stats is not None
            think = profile.get("think_s", 0.5)
            crowd = h.crowd(Population(distinct_users=profile.users, think_s=think), anonymous_browser, seed,
                            ramp_s=0.5)
            h.phase("steady browsing on warm instances", f"{profile.users} users")
            h.hold(1.0, crowd)
            t_cold = h.stats.sample() - h.t0  # the cache's own cold start, same for every column
            h.hold(max(0.5, profile.phase_s - 1.0), crowd)
            t_base0 = h.stats.sample() - h.t0
            h.hold(profile.phase_s, crowd)
            t_spike = h.stats.sample() - h.t0
            h.phase("spike", f"+{int(profile.get('spike_users'))} users, scale to {int(profile.get('scale_to'))}")
            spike = h.crowd(Population(distinct_users=int(profile.get("spike_users")), think_s=think,
                                       first_account=profile.users + 1), anonymous_browser, seed + 1, ramp_s=0.5)
            lab.scale(int(profile.get("scale_to")), progress=lambda msg: progress.phase(f"{app.label}: {msg}"))
            t_join = h.stats.sample() - h.t0
            h.phase("new instances serve traffic")
            h.hold(profile.phase_s, spike)
            t_end = h.stats.sample() - h.t0
            result, spike_result = h.finish(crowd, spike)
            new = [i.id for i in lab.status().instances if i.id not in old]
            edges = Edges(t_cold, t_base0, t_spike, t_join, t_end)
            return self._measure(h, result, spike_result, old, new, edges)

    def _measure(self, h: Harness, result: CrowdResult, spike_result: CrowdResult, old: list[str], new: list[str],
                 e: Edges) -> Measurements:
        samples = h.stats.samples if h.stats is not None else []
        t0 = h.t0
        hits = h.hits

        def window(a: float, b: float) -> tuple[float, float, float, int]:
            """Return (DB queries, DB ms, seconds, requests) between two sampling edges."""
            q = measure.counter_increase(samples, "db_queries", t0 + a, t0 + b)
            ms = measure.counter_increase(samples, "db_time_ms", t0 + a, t0 + b)
            return q, ms, b - a, len(measure.window(hits, t0 + a, t0 + b))

        cold_q, _, _, cold_req = window(-1e9, e.cold)
        base_q, base_ms, base_s, base_req = window(e.base0, e.spike)
        spike_q, spike_ms, spike_s, _ = window(e.spike, e.join)
        join_q, join_ms, join_s, join_req = window(e.join, e.end)
        base_qps = base_q / base_s if base_s > 0 else math.nan
        join_qps = join_q / join_s if join_s > 0 else math.nan
        base_per_100 = 100 * base_q / base_req if base_req else math.nan
        join_per_100 = 100 * join_q / join_req if join_req else math.nan
        per_request_ratio = join_per_100 / base_per_100 if base_per_100 else math.nan
        base_lat = measure.latency(measure.window(hits, t0 + e.base0, t0 + e.spike), "steady, before the spike")
        join_lat = measure.latency(measure.window(hits, t0 + e.join, t0 + e.end), "after the join", ok_only=False)
        new_ratio = measure.hit_ratio(samples, t0 + e.join, t0 + e.end, new, from_zero=True)
        old_hits = measure.counter_increase(samples, "cache_hits", t0 + e.join, t0 + e.end, old)
        old_misses = measure.counter_increase(samples, "cache_misses", t0 + e.join, t0 + e.end, old)
        old_ratio = old_hits / (old_hits + old_misses) if old_hits + old_misses else math.nan
        figures = (
            Figure("users", "users, steady + spike", result.users + spike_result.users, "users"),
            Figure("instances_after", "instances after scaling", len(old) + len(new), ""),
            Figure("scale_s", "time to scale out (start to serving)", round(e.join - e.spike, 2), "s"),
            Figure("baseline_db_qps", "DB queries/s, steady (2 warm instances)", round(base_qps, 1), "q/s"),
            Figure("spike_db_qps", "DB queries/s in the spike, before new instances joined",
                   round(spike_q / spike_s, 1) if spike_s > 0 else math.nan, "q/s"),
            Figure("join_db_qps", "DB queries/s after new instances joined", round(join_qps, 1), "q/s"),
            Figure("db_load_ratio", "DB load: queries/s after the join / steady", _ratio(join_qps, base_qps), "x"),
            Figure("baseline_db_per_100", "DB queries per 100 requests, steady", round(base_per_100, 2), ""),
            Figure("join_db_per_100", "DB queries per 100 requests after the join", round(join_per_100, 2), ""),
            Figure("db_per_request_ratio", "DB queries per request, after the join / steady",
                   _ratio(per_request_ratio, 1.0), "x"),
            Figure("baseline_db_ms", "DB time per query, steady", round(base_ms / base_q, 2) if base_q else math.nan,
                   "ms"),
            Figure("spike_db_ms", "DB time per query in the spike, before the join",
                   round(spike_ms / spike_q, 2) if spike_q else math.nan, "ms"),
            Figure("join_db_ms", "DB time per query after the join", round(join_ms / join_q, 2) if join_q else math.nan,
                   "ms"),
            Figure("new_hit_ratio", "cache hit ratio on new instances", _pct(new_ratio), "%"),
            Figure("old_hit_ratio", "cache hit ratio on old instances, after the join", _pct(old_ratio), "%"),
            Figure("cold_start_db_per_100", "DB queries per 100 requests in the first second (empty cache)",
                   round(100 * cold_q / cold_req, 1) if cold_req else math.nan, ""),
            Figure("join_p99_ms", "request p99 after the join", join_lat.p99_ms, "ms"),
            Figure("failed_requests", "failed requests (no answer, timeout, 5xx)",
                   failed_requests(result) + failed_requests(spike_result), "req"),
            Figure("p50_ms", "p50 latency (steady)", base_lat.p50_ms, "ms"),
            Figure("p99_ms", "p99 latency (steady)", base_lat.p99_ms, "ms"),
        )
        qps = measure.counter_rates(samples, "db_queries", t0)
        series = (Series("DB queries/s", "q/s", qps.points),) + crowd_series(result) + \
            crowd_series(spike_result, offset_s=e.spike)
        notes = ("cache TTL is the apps' default (60 s), longer than this run: stampede protection can only show "
                 "in the first misses (the first second, the spike's new products), not in expiring hot keys",)
        return Measurements(figures, base_lat, h.events(), series, measure.shares(hits, old + new),
                            notes + error_notes(result, spike_result))

    def verdict(self, m: Measurements) -> Verdict:
        return judge(m, self.tolerances, self.preconditions,
                     survived_because="New instances found the shared cache already warm: the database barely "
                                      "noticed the scale-out.",
                     reproduced_because="Every new instance started with an empty cache and sent its misses to the "
                                        "database, multiplying its load at the peak.")


@dataclass(frozen=True)
class Edges:
    """Phase edges of one run, in seconds since traffic started (each one a /stats sample)."""

    cold: float
    base0: float
    spike: float
    join: float
    end: float


def _ratio(a: float, b: float) -> float:
    return round(a / b, 2) if b and not math.isnan(a) and not math.isnan(b) else math.nan


def _pct(ratio: float) -> float:
    return round(100 * ratio, 1) if ratio == ratio else math.nan


SCENARIO = ColdCacheAutoscale()
