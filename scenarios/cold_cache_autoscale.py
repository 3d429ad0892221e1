"""cold-cache-autoscale: a traffic spike, autoscaling from 2 to 6 instances, and a database stampede."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from scenarios import Harness, crowd_series, failed_requests, scale_profile
from statelab import measure
from statelab.scenario import (AppCase, Figure, Measurements, Profile, Progress, Series, Target, Tolerance, Verdict,
                               judge)
from statelab.users import Population, VirtualUser

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
    The third column runs the stateless app with that protection off.
    """

    name: str = "cold-cache-autoscale"
    title: str = "Cold caches on autoscale"
    summary: str = "a spike, scale 2 -> 6 instances: how hard the new instances' cold caches hit the database"
    expect: dict[str, str] = field(default_factory=lambda: dict(EXPECT))
    tolerances: tuple[Tolerance, ...] = (
        Tolerance("db_load_ratio", "<", 2.0, "DB queries/s after the new instances join stay under 2x the baseline"),
        Tolerance("failed_requests", "<=", 0, "no request fails during the spike"),
    )
    preconditions: tuple[Tolerance, ...] = (
        Tolerance("baseline_db_qps", ">", 0, "the /stats sampler must have seen DB queries before the spike"),
        Tolerance("instances_after", ">=", 3, "the lab must have scaled out"),
    )

    def cases(self) -> tuple[AppCase, ...]:
        return (AppCase("stateful", expect=self.expect["stateful"]),
                AppCase("stateless", expect=self.expect["stateless"]),
                AppCase("stateless", variant="no stampede protection", env=STAMPEDE_OFF, expect=None))

    def profile(self, quick: bool, users: int | None) -> Profile:
        base = scale_profile(150, quick, 60, users)
        return Profile(users=base, instances=2, phase_s=2.5 if quick else 6.0,
                       extra=(("spike_users", base * 2), ("scale_to", 6), ("think_s", 0.2 if quick else 0.5),
                              ("cache_ttl_s", 3 if quick else 5)),
                       seed_users=200)

    def run(self, app: AppCase, profile: Profile, seed: int, lb: str, run_dir: Path, progress: Progress,
            target: Target | None = None) -> Measurements:
        ttl = int(profile.get("cache_ttl_s", 5))
        case = AppCase(app.app, app.variant, app.env + (("LAB_CACHE_TTL_S", str(ttl)),), app.expect)
        with Harness(case, run_dir, progress, lb, target) as h:
            lab = h.start_lab(profile.instances, POLICY, seed_users=profile.seed_users)
            old = [i.id for i in lab.status().instances]
            h.start_samplers(stats=True)
            think = profile.get("think_s", 0.5)
            crowd = h.crowd(Population(distinct_users=profile.users, think_s=think), anonymous_browser, seed,
                            ramp_s=0.5)
            h.phase("steady browsing on warm instances", f"{profile.users} users, cache TTL {ttl} s")
            h.hold(profile.phase_s * 2, crowd)
            t_spike = h.phase("spike", f"+{int(profile.get('spike_users'))} users, scale to "
                                       f"{int(profile.get('scale_to'))}")
            spike = h.crowd(Population(distinct_users=int(profile.get("spike_users")), think_s=think,
                                       first_account=profile.users + 1), anonymous_browser, seed + 1, ramp_s=0.5)
            lab.scale(int(profile.get("scale_to")), progress=lambda msg: progress.phase(f"{case.label}: {msg}"))
            t_join = h.phase("new instances serve traffic")
            h.hold(profile.phase_s, spike)
            t_end = h.now()
            result, spike_result = h.finish(crowd, spike)
            new = [i.id for i in lab.status().instances if i.id not in old]
            return self._measure(h, result, spike_result, old, new, t_spike, t_join, t_end, profile)

    def _measure(self, h: Harness, result, spike_result, old: list[str], new: list[str],  # type: ignore[no-untyped-def]
                 t_spike: float, t_join: float, t_end: float, profile: Profile) -> Measurements:
        samples = h.stats.samples if h.stats is not None else []
        t0 = h.t0
        qps = measure.counter_rates(samples, "db_queries", t0)
        db_ms = measure.counter_rates(samples, "db_time_ms", t0)
        base0 = t_spike - profile.phase_s  # the second half of the warm phase
        baseline = measure.mean_in(qps, base0, t_spike)
        during = measure.mean_in(qps, t_join, t_end + 0.01)
        peak = measure.peak_in(qps, t_join, t_end + 0.01)

        def db_latency(a: float, b: float) -> float:
            q = measure.counter_delta(samples, "db_queries", t0 + a, t0 + b)
            ms = measure.counter_delta(samples, "db_time_ms", t0 + a, t0 + b)
            return round(ms / q, 3) if q else math.nan

        hits = h.hits
        base_lat = measure.latency(measure.window(hits, t0 + base0, t0 + t_spike), "steady, before the spike")
        join_lat = measure.latency(measure.window(hits, t0 + t_join, t0 + t_end), "after the join", ok_only=False)
        new_ratio = measure.hit_ratio(samples, t0 + t_join, t0 + t_end, new, from_zero=True)
        old_ratio = measure.hit_ratio(samples, t0 + t_join, t0 + t_end, old)
        ratio = during / baseline if baseline else math.nan
        failed = failed_requests(result) + failed_requests(spike_result)
        figures = (
            Figure("users", "users before / during the spike", result.users + spike_result.users, "users"),
            Figure("instances_after", "instances after scaling", len(old) + len(new), ""),
            Figure("baseline_db_qps", "DB queries/s, steady (2 warm instances)", round(baseline, 1), "q/s"),
            Figure("join_db_qps", "DB queries/s after new instances joined", round(during, 1), "q/s"),
            Figure("peak_db_qps", "DB queries/s, peak sample after the join", round(peak, 1), "q/s"),
            Figure("db_load_ratio", "DB load after the join / baseline", round(ratio, 2), "x"),
            Figure("baseline_db_ms", "DB time per query, steady", db_latency(base0, t_spike), "ms"),
            Figure("join_db_ms", "DB time per query after the join", db_latency(t_join, t_end), "ms"),
            Figure("new_hit_ratio", "cache hit ratio on new instances", _pct(new_ratio), "%"),
            Figure("old_hit_ratio", "cache hit ratio on old instances (after the join)", _pct(old_ratio), "%"),
            Figure("join_p99_ms", "request p99 after the join", join_lat.p99_ms, "ms"),
            Figure("failed_requests", "failed requests (no answer, timeout, 5xx)", failed, "req"),
            Figure("p50_ms", "p50 latency (steady)", base_lat.p50_ms, "ms"),
            Figure("p99_ms", "p99 latency (steady)", base_lat.p99_ms, "ms"),
        )
        series = (Series("DB queries/s", "q/s", qps.points), Series("DB ms/s", "ms/s", db_ms.points)) + \
            crowd_series(result) + crowd_series(spike_result, offset_s=t_spike)
        return Measurements(figures, base_lat, h.events(), series, measure.shares(hits, old + new),
                            (f"cache TTL {int(profile.get('cache_ttl_s'))} s for both apps in this scenario",))

    def verdict(self, m: Measurements) -> Verdict:
        return judge(m, self.tolerances, self.preconditions,
                     survived_because="New instances found the shared cache already warm: the database barely "
                                      "noticed the scale-out.",
                     reproduced_because="Every new instance started with an empty cache and sent its misses to the "
                                        "database, multiplying its load at the peak.")


def _pct(ratio: float) -> float:
    return round(100 * ratio, 1) if ratio == ratio else math.nan


SCENARIO = ColdCacheAutoscale()
