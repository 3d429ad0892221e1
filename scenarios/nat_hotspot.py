"""nat-hotspot: thousands of users behind one NAT address, balanced by source IP, pile onto one instance."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from statelab import measure
from statelab.harness import Harness, crowd_series, error_notes, failed_requests
from statelab.scenario import (AppCase, CaseContext, Figure, Finding, InstanceFigures, Measurements, Profile,
                               Tolerance, Verdict, default_cases, judge, scale_profile)
from statelab.users import CrowdResult, Population

EXPECT: dict[str, Finding] = {"stateful": "reproduced", "stateless": "survived"}
# The stateful app must pin each client to the instance holding its session; ip-hash is the
# classic way (no cookie needed). The stateless app can spread requests freely.
POLICY = {"stateful": "ip-hash", "stateless": "round-robin"}
IDLE_SHARE = 0.02  # an instance serving under 2% of requests is effectively idle
THREADS = 4  # finite capacity per instance, so a hot spot shows up as latency
# A saturated instance answers its health checks late; checking once a second (each check with the
# balancer's 1 s timeout) keeps the hot instance from flapping in and out of rotation and dragging
# its NAT along (a real failure, but not the one this scenario measures).
HEALTH_CHECK_S = 1.0


@dataclass(frozen=True)
class NatHotspot:
    """Source-IP stickiness sends a whole NAT (an office, a campus, a mobile carrier) to one instance.

    What breaks: a stateful app has to pin each client to the instance that holds its session.
    Pinning by source address (ip-hash) looks free, until thousands of people arrive from one
    address: a corporate proxy or carrier-grade NAT. They all hash to the same instance, which
    saturates while the others idle; adding instances does not help, because the hash still
    picks one.

    Why: the principle violated is "any instance can serve any request". Affinity turns the
    balancer's job from spreading load into routing to where the state is, and the state's
    distribution is decided by something outside your control (how users' traffic is NATed).

    What the stateless design does differently: no affinity is needed, so the balancer spreads
    requests per request (round-robin here) and every instance carries its share whatever
    addresses the users come from.
    """

    name: str = "nat-hotspot"
    title: str = "NAT hot spot"
    summary: str = "thousands of users behind one NAT address with ip-hash stickiness: one instance melts"
    expect: dict[str, Finding] = field(default_factory=lambda: dict(EXPECT))
    tolerances: tuple[Tolerance, ...] = (
        Tolerance("max_mean_ratio", "<", 1.3, "the busiest instance carries at most 1.3x its fair share"),
        Tolerance("idle_instances", "<=", 0, "no instance sits idle while another saturates"),
        Tolerance("users_logged_out", "<=", 0, "nobody loses their session (a hot instance ejected by its "
                                                "health check moves its whole NAT elsewhere)"),
    )
    preconditions: tuple[Tolerance, ...] = (
        Tolerance("requests", ">=", 100, "enough requests to compute shares"),
    )

    def cases(self) -> tuple[AppCase, ...]:
        return default_cases(self.expect)

    def profile(self, quick: bool, users: int | None) -> Profile:
        nat = scale_profile(2000, quick, 400, users)
        distinct = max(10, nat * 3 // 20)
        # Think times keep the offered load (~200 req/s) below what this 2-core lab serves when spread
        # evenly: the hot spot must come from the routing, not from an overloaded machine.
        return Profile(users=nat + distinct, instances=4, phase_s=3.0 if quick else 14.0,
                       extra=(("nat_users", nat), ("distinct_users", distinct), ("think_s", 3.0 if quick else 10.0)),
                       seed_users=nat + distinct)

    def run(self, ctx: CaseContext) -> Measurements:
        profile = ctx.profile
        with Harness(ctx) as h:
            backends: list[str] = []
            if ctx.target is None:
                lab = h.start_lab(profile.instances, POLICY[ctx.app.app], threads=THREADS,
                                  seed_users=profile.seed_users, health_interval_s=HEALTH_CHECK_S)
                backends = [i.id for i in lab.status().instances]
            else:
                backends = [bid for bid, _ in h.target_backends()]
            h.start_samplers()
            population = Population(distinct_users=int(profile.get("distinct_users")),
                                    nat_users=int(profile.get("nat_users")), think_s=profile.get("think_s", 1.0))
            crowd = h.crowd(population, "shopper", ctx.seed, ramp_s=profile.phase_s / 3)
            h.phase("users behind one NAT address shop", f"{population.nat_users} behind one IP, "
                                                         f"{population.distinct_users} on their own")
            h.hold(profile.phase_s, crowd)
            (result,) = h.finish(crowd)
            return self._measure(h, result, backends, profile)

    def _measure(self, h: Harness, result: CrowdResult, backends: list[str], profile: Profile) -> Measurements:
        hits = h.hits
        if hits:
            instances = measure.shares(hits, backends)
        else:  # --target without a balancer record feed: count X-Served-By as the users saw it
            instances = _shares_from_served_by(result, backends)
        counts = [i.requests for i in instances]
        total = sum(counts)
        hottest = max(instances, key=lambda i: i.requests) if instances else None
        rest = [i for i in instances if i is not hottest]
        rest_hits = [x for x in hits if hottest is None or x.backend != hottest.instance]
        rest_latency = measure.latency(rest_hits, "other instances", ok_only=False)
        latency = measure.latency(hits, "whole run") if hits else measure.Latency(
            result.latency.p50_ms, result.latency.p99_ms, result.latency.count, "whole run")
        idle = sum(1 for i in instances if total and i.share < IDLE_SHARE)
        figures = (
            Figure("users", "simulated users", result.users, "users"),
            Figure("nat_users", "users behind one NAT address", result.nat_users, "users"),
            Figure("requests", "requests served", total or result.answered, "req"),
            Figure("hottest_share", "busiest instance's share", round(100 * hottest.share, 1) if hottest else math.nan,
                   "%"),
            Figure("fair_share", "fair share per instance", round(100 / len(instances), 1) if instances else math.nan,
                   "%"),
            Figure("max_mean_ratio", "busiest / mean instance load", round(measure.imbalance(counts), 2), "x"),
            Figure("idle_instances", f"idle instances (< {IDLE_SHARE:.0%} of requests)", idle, ""),
            Figure("hot_p50_ms", "p50 on the busiest instance", hottest.p50_ms if hottest else math.nan, "ms"),
            Figure("hot_p99_ms", "p99 on the busiest instance", hottest.p99_ms if hottest else math.nan, "ms"),
            Figure("rest_p50_ms", "p50 on the other instances", rest_latency.p50_ms if rest else math.nan, "ms"),
            Figure("rest_p99_ms", "p99 on the other instances", rest_latency.p99_ms if rest else math.nan, "ms"),
            Figure("timeouts", "timeouts", result.errors.get("timeout", 0), "req"),
            Figure("failed_requests", "failed requests (no answer, timeout, 5xx)", failed_requests(result), "req"),
            Figure("users_logged_out", "users logged out", result.users_logged_out, "users"),
            Figure("p50_ms", "p50 latency (whole run)", latency.p50_ms, "ms"),
            Figure("p99_ms", "p99 latency (whole run)", latency.p99_ms, "ms"),
            Figure("generator_cpu", "load generator CPU share", round(100 * result.loop_cpu_share, 1), "%"),
        )
        series = crowd_series(result) + tuple(
            measure.per_second(hits, h.t0, f"requests on {b}", pick=lambda x, b=b: x.backend == b)  # type: ignore[misc]
            for b in backends)
        return Measurements(figures, latency, h.events(), series, instances, error_notes(result))

    def verdict(self, m: Measurements) -> Verdict:
        return judge(m, self.tolerances, self.preconditions,
                     survived_because="Without affinity the balancer spread the NAT's users over every instance.",
                     reproduced_because="ip-hash sent everyone behind the NAT address to one instance: it carried "
                                        "most of the load while others idled.")


def _shares_from_served_by(result: CrowdResult, backends: list[str]) -> tuple[InstanceFigures, ...]:
    counts = {b: 0 for b in backends}
    counts.update({k: v for k, v in result.served_by.items() if k != "-"})
    total = sum(counts.values())
    return tuple(InstanceFigures(k, v, round(v / total, 4) if total else 0.0, 0,
                                 result.latency_by_instance[k].p50_ms if k in result.latency_by_instance else math.nan,
                                 result.latency_by_instance[k].p99_ms if k in result.latency_by_instance else math.nan)
                 for k, v in sorted(counts.items()))


SCENARIO = NatHotspot()
