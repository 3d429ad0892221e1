"""rolling-deploy: restart every instance, one by one, while people are logged in and shopping."""

from __future__ import annotations

from dataclasses import dataclass, field

from statelab import measure
from statelab.harness import Harness, crowd_series, error_notes, failed_requests
from statelab.scenario import (AppCase, CaseContext, Figure, Finding, Measurements, Profile, Tolerance, Verdict,
                               default_cases, judge, scale_profile)
from statelab.users import Population

EXPECT: dict[str, Finding] = {"stateful": "reproduced", "stateless": "survived"}
# The stateful app needs stickiness even to keep a session between two requests; the stateless
# one can be balanced freely. Both are drained and health-checked during the deploy.
POLICY = {"stateful": "cookie", "stateless": "round-robin"}


@dataclass(frozen=True)
class RollingDeploy:
    """A rolling deploy logs users out and empties their carts when sessions live in process memory.

    What breaks: every instance is replaced one at a time, drained first, the way a careful
    deploy script does it. With the stateful app, each restart throws away that instance's
    in-memory sessions and carts: its users are suddenly logged out and what they put in their cart
    is gone, although no request failed and the balancer did everything right.

    Why: the principle violated is "processes are disposable" (twelve-factor, VI/IX): a process
    kept state that outlives a request, so replacing the process destroyed user data. Draining only
    protects requests in flight, never the state between requests.

    What the stateless design does differently: sessions and carts live in Redis, so any instance
    (including the freshly started one) can serve any user; a restart costs nothing but the
    requests in flight, and draining plus health checks protect those.
    """

    name: str = "rolling-deploy"
    title: str = "Rolling deploy"
    summary: str = "restart every instance one by one while users shop: who got logged out, whose cart emptied"
    expect: dict[str, Finding] = field(default_factory=lambda: dict(EXPECT))
    tolerances: tuple[Tolerance, ...] = (
        Tolerance("users_logged_out", "<=", 0, "a deploy must not log anyone out"),
        Tolerance("items_lost", "<=", 0, "a deploy must not take anything out of a cart"),
        Tolerance("failed_requests", "<=", 0, "draining + health checks: no request may fail"),
    )
    preconditions: tuple[Tolerance, ...] = (
        Tolerance("logins", ">=", 1, "users must have logged in"),
        Tolerance("items_added", ">=", 1, "users must have shopped"),
        Tolerance("instances_restarted", ">=", 1, "the deploy must have happened"),
    )

    def cases(self) -> tuple[AppCase, ...]:
        return default_cases(self.expect)

    def profile(self, quick: bool, users: int | None) -> Profile:
        n = scale_profile(200, quick, 60, users)
        return Profile(users=n, instances=3, phase_s=1.0 if quick else 4.0,
                       extra=(("think_s", 0.5 if quick else 1.5),), seed_users=max(n, 200))

    def run(self, ctx: CaseContext) -> Measurements:
        app, profile = ctx.app, ctx.profile
        with Harness(ctx) as h:
            lab = h.start_lab(profile.instances, POLICY[app.app], seed_users=profile.seed_users)
            h.start_samplers()
            crowd = h.crowd(Population(distinct_users=profile.users, think_s=profile.get("think_s", 1.0)),
                            "shopper", ctx.seed, ramp_s=min(1.0, profile.phase_s))
            h.phase("users log in and shop")
            h.hold(profile.phase_s, crowd)
            t_deploy = h.phase("rolling deploy", f"{profile.instances} instances, drain on")
            lab.deploy(batch=1, drain=True, progress=lambda msg: ctx.progress.phase(f"{app.label}: {msg}"))
            t_done = h.phase("after the deploy: users look at their carts")
            h.hold(profile.phase_s, crowd)
            (result,) = h.finish(crowd)
            hits = h.hits
            restarted = sum(1 for e in lab.events if e.kind == "ready")
            deploy_hits = measure.window(hits, h.t0 + t_deploy, h.t0 + t_done + 1.0)
            latency = measure.latency(measure.window(hits, h.t0, h.t0 + t_deploy), "before the deploy")
            logged_out_share = result.users_logged_out / result.users if result.users else 0.0
            lost_share = result.items_lost / result.items_added if result.items_added else 0.0
            figures = (
                Figure("users", "simulated users", result.users, "users"),
                Figure("logins", "successful logins", result.logins_ok, ""),
                Figure("users_logged_out", "users logged out", result.users_logged_out, "users"),
                Figure("logged_out_share", "share of users logged out", round(100 * logged_out_share, 1), "%"),
                Figure("items_added", "items added to carts", result.items_added, "items"),
                Figure("items_lost", "items lost from carts", result.items_lost, "items"),
                Figure("items_lost_share", "share of added items lost", round(100 * lost_share, 1), "%"),
                Figure("failed_requests", "failed requests (no answer, timeout, 5xx)", failed_requests(result), "req"),
                Figure("deploy_5xx", "5xx seen by the balancer during the deploy",
                       sum(1 for x in deploy_hits if x.status >= 500 or x.status == 0), "req"),
                Figure("requests", "requests sent", result.requests, "req"),
                Figure("deploy_s", "deploy duration", round(t_done - t_deploy, 2), "s"),
                Figure("instances_restarted", "instances restarted", restarted, ""),
                Figure("p50_ms", "p50 latency (before the deploy)", latency.p50_ms, "ms"),
                Figure("p99_ms", "p99 latency (before the deploy)", latency.p99_ms, "ms"),
                Figure("generator_cpu", "load generator CPU share", round(100 * result.loop_cpu_share, 1), "%"),
            )
            return Measurements(figures, latency, h.events(), crowd_series(result),
                                measure.shares(hits, [i.id for i in lab.status().instances]), error_notes(result))

    def verdict(self, m: Measurements) -> Verdict:
        return judge(m, self.tolerances, self.preconditions,
                     survived_because="Sessions and carts live in Redis, so restarting an instance lost nothing; "
                                      "draining and health checks kept every request answered.",
                     reproduced_because="Each restart threw away the sessions and carts held in that "
                                        "instance's memory: its users were logged out and their carts emptied.")


SCENARIO = RollingDeploy()
