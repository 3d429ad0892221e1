"""cold-cache-autoscale: a traffic spike, autoscaling from 2 to 6 instances, and a database stampede."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from statelab import measure
from statelab.harness import Harness, crowd_series, error_notes, failed_requests
from statelab.scenario import (AppCase, CaseContext, Figure, Finding, Measurements, Profile, Series, Tolerance,
                               Verdict, judge, scale_profile)
from statelab.users import CrowdResult, Population, VirtualUser

EXPECT: dict[str, Finding] = {"stateful": "reproduced", "stateless": "survived"}
POLICY = "round-robin"
DEFAULT_TTL_S = 60  # the apps' LAB_CACHE_TTL_S default: longer than a run, so no product expires
# The stampede comparison: popular products expire every 2 s (many times per run, at the spike's
# concurrency), with protection on and off; the same short TTL for both, so only the lock differs.
SHORT_TTL = (("LAB_CACHE_TTL_S", "2"),)
STAMPEDE_OFF = SHORT_TTL + (("LAB_CACHE_STAMPEDE_PROTECTION", "0"),)
HOT_PRODUCTS = 10  # the most viewed products: the keys a stampede hits


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
    Two more columns (full profile only: they would take --quick over its one-minute budget) show
    that protection at work: the stateless app with a 2 s cache TTL, so popular products expire
    again and again under the spike, with the protection on and off. Their refill figures count,
    from Redis's own keyspace events, how many DB loads each expiry cost.

    Judged on the database's load (queries/s after the join vs steady, the number an on-call
    engineer sees); DB queries per request are shown next to it, so the spike's extra traffic can
    be told apart from the cost of per-instance caches. A short-TTL column is judged on the
    stampede instead (DB loads per refill of the most viewed products): with products expiring
    every 2 s its DB load grows with the spike's traffic whatever the design, so the load ratio
    would not say anything about the lock.
    """

    name: str = "cold-cache-autoscale"
    title: str = "Cold caches on autoscale"
    summary: str = "a spike, scale 2 -> 6 instances: how hard the new instances' cold caches hit the database"
    expect: dict[str, Finding] = field(default_factory=lambda: dict(EXPECT))
    tolerances: tuple[Tolerance, ...] = (
        Tolerance("db_load_ratio", "<", 2.0, "DB queries/s after the new instances join stay under 2x the steady state"),
        Tolerance("failed_requests", "<=", 0, "no request fails during the spike"),
    )
    preconditions: tuple[Tolerance, ...] = (
        Tolerance("baseline_db_qps", ">", 0, "the /stats sampler must have seen DB queries before the spike"),
        Tolerance("instances_after", ">=", 3, "the lab must have scaled out"),
    )
    stampede_tolerances: tuple[Tolerance, ...] = (
        Tolerance("hot_db_loads_per_refill", "<", 1.1,
                  "an expiring hot product costs the database one load, not one per request waiting for it"),
    )
    stampede_preconditions: tuple[Tolerance, ...] = (
        Tolerance("refills", ">", 0, "with a short TTL, the cache's key events must show products being reloaded"),
    )

    def cases(self) -> tuple[AppCase, ...]:
        return (AppCase("stateful", expect=self.expect["stateful"]),
                AppCase("stateless", expect=self.expect["stateless"]),
                AppCase("stateless", variant="short TTL with protection", env=SHORT_TTL, expect=None, in_quick=False),
                AppCase("stateless", variant="short TTL without protection", env=STAMPEDE_OFF, expect=None,
                        in_quick=False))

    def profile(self, quick: bool, users: int | None) -> Profile:
        base = scale_profile(60, quick, 40, users)
        return Profile(users=base, instances=2, phase_s=2.0 if quick else 5.0,
                       extra=(("spike_users", base * 2), ("scale_to", 6), ("think_s", 0.4)),
                       seed_users=200)

    def run(self, ctx: CaseContext) -> Measurements:
        app, profile, seed = ctx.app, ctx.profile, ctx.seed
        with Harness(ctx) as h:
            lab = h.start_lab(profile.instances, POLICY, seed_users=profile.seed_users)
            old = [i.id for i in lab.status().instances]
            h.start_samplers(stats=True, cache_events=True)
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
            lab.scale(int(profile.get("scale_to")), progress=lambda msg: ctx.progress.phase(f"{app.label}: {msg}"))
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
        figures: tuple[Figure, ...] = (
            Figure("users", "users, steady + spike", result.users + spike_result.users, "users"),
            Figure("cache_ttl_s", "cache TTL (LAB_CACHE_TTL_S)", _cache_ttl_s(h.app), "s"),
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
        figures += self._peak_figures(h, e)
        if h.cache is not None and _cache_ttl_s(h.app) < DEFAULT_TTL_S:  # else no key expires: nothing to count
            figures += self._refill_figures(h, e)
        return Measurements(figures, base_lat, h.events(), series, measure.shares(hits, old + new),
                            (_ttl_note(h.app),) + error_notes(result, spike_result))

    def _peak_figures(self, h: Harness, e: Edges) -> tuple[Figure, ...]:
        """Return the DB's busiest moment after the first second, and the hot products' p99."""
        samples = h.stats.samples if h.stats is not None else []
        # Only sampler ticks (0.5 s apart): the scenario's own samples at phase edges would make short, noisy rates.
        qps = measure.counter_rates(samples, "db_queries", h.t0, min_interval_s=0.4)
        ms = measure.counter_rates(samples, "db_time_ms", h.t0, min_interval_s=0.4)
        after_cold = [(t, q, m) for (t, q), (_, m) in zip(qps.points, ms.points) if e.cold < t <= e.end + 0.5]
        _, peak_q, peak_ms = max(after_cold, key=lambda p: p[1], default=(math.nan, math.nan, math.nan))
        mean_q = sum(q for _, q, _ in after_cold) / len(after_cold) if after_cold else math.nan
        hits = measure.window(h.hits, h.t0 + e.cold, h.t0 + e.end)
        hot = {f"/products/{pid}" for pid in _hot_products(hits)}
        hot_lat = measure.latency([x for x in hits if x.path in hot], "hot products", ok_only=False)
        return (
            Figure("peak_db_qps", "DB queries/s, busiest 0.5 s after the first second", round(peak_q, 1), "q/s"),
            Figure("peak_to_mean_db_qps", "DB queries/s, busiest 0.5 s / mean after the first second",
                   _ratio(peak_q, mean_q), "x"),
            Figure("peak_db_ms", "DB time per query in that busiest 0.5 s",
                   round(peak_ms / peak_q, 2) if peak_q else math.nan, "ms"),
            Figure("hot_p99_ms", f"request p99 on the {HOT_PRODUCTS} most viewed products, after the first second",
                   hot_lat.p99_ms, "ms"),
        )

    def _refill_figures(self, h: Harness, e: Edges) -> tuple[Figure, ...]:
        """Return how many DB loads each expiry of a product key cost (from the shared cache's key events)."""
        hits = measure.window(h.hits, h.t0 + e.cold, h.t0 + e.end)
        hot = [f"{measure.CACHE_KEY_PREFIX}{pid}" for pid in _hot_products(hits)]
        every = measure.refill_loads(h.cache_events)
        hot_bursts = measure.refill_loads(h.cache_events, hot)
        return (
            Figure("refills", "product keys expired and reloaded (refills)", len(every), ""),
            Figure("db_loads_per_refill", "DB loads per refill, every product", _mean(every), ""),
            Figure("hot_db_loads_per_refill", f"DB loads per refill, {HOT_PRODUCTS} most viewed products",
                   _mean(hot_bursts), ""),
            Figure("max_db_loads_per_refill", "DB loads for one refill, largest", max(every, default=0), ""),
            Figure("extra_db_loads", "DB loads beyond one per refill (the stampede's extra queries)",
                   sum(n - 1 for n in every), "q"),
        )

    def verdict(self, m: Measurements) -> Verdict:
        if m.value("cache_ttl_s") < DEFAULT_TTL_S:  # a stampede column: keys expire within the run
            return judge(m, self.stampede_tolerances, self.stampede_preconditions,
                         survived_because="Each expiring hot product was reloaded by one request while the others "
                                          "waited for its value.",
                         reproduced_because="Each expiring hot product was reloaded by every request that found it "
                                            "missing: a stampede on the database, one key at a time.")
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


def _hot_products(hits: list[measure.Hit]) -> list[int]:
    """Return the ids of the most requested products among hits, most viewed first."""
    counts: dict[int, int] = {}
    for x in hits:
        head, _, tail = x.path.rpartition("/")
        if head == "/products" and tail.isdigit():
            counts[int(tail)] = counts.get(int(tail), 0) + 1
    return sorted(counts, key=lambda pid: -counts[pid])[:HOT_PRODUCTS]


def _cache_ttl_s(app: AppCase) -> int:
    """Return the cache TTL the case's instances run with (its own env, else the inherited one, else the default)."""
    raw = dict(app.env).get("LAB_CACHE_TTL_S") or os.environ.get("LAB_CACHE_TTL_S") or str(DEFAULT_TTL_S)
    return int(raw) if raw.strip().isdigit() else DEFAULT_TTL_S


def _ttl_note(app: AppCase) -> str:
    ttl = _cache_ttl_s(app)
    if ttl >= DEFAULT_TTL_S:
        return (f"cache TTL {ttl} s, longer than this run: no product expires, so stampede protection is not "
                "exercised here (the short-TTL columns, full profile only, show it)")
    if app.app == "stateful":
        return f"cache TTL {ttl} s: each instance reloads expiring products into its own copy"
    return (f"cache TTL {ttl} s: popular products expire and are reloaded many times in this run; each refill's "
            "DB loads are counted from Redis's keyspace events (one SET per DB load, between two expiries)")


def _mean(values: list[int]) -> float:
    return round(sum(values) / len(values), 2) if values else math.nan


def _ratio(a: float, b: float) -> float:
    return round(a / b, 2) if b and not math.isnan(a) and not math.isnan(b) else math.nan


def _pct(ratio: float) -> float:
    return round(100 * ratio, 1) if ratio == ratio else math.nan


SCENARIO = ColdCacheAutoscale()
