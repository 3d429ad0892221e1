"""server-crash: one instance is killed (SIGKILL) while users shop: who loses their session and cart?"""

from __future__ import annotations

import math
import signal
from dataclasses import dataclass

from statelab import measure
from statelab.harness import Harness, crowd_series, error_notes, failed_requests
from statelab.scenario import (AppCase, CaseContext, Figure, Finding, Measurements, Profile, Tolerance, Verdict,
                               judge, scale_profile)
from statelab.turns import TOGETHER
from statelab.users import Population

VICTIM = "app-2"
FILL_TIMEOUT_S = 8.0  # at most this long for the users to fill their carts before the crash


@dataclass(frozen=True)
class ServerCrash:
    """An instance dies without warning, and the users it held in memory lose their session and cart.

    What breaks: no deploy, no draining: one instance is killed (an OOM kill, a kernel panic, a
    spot instance reclaimed). With sticky routing, each stateful instance holds its users' sessions
    and carts; the balancer notices the death within moments and sends those users elsewhere, where
    nobody knows them. With cookie stickiness that is the dead instance's share, about 1/N of the
    users. With ip-hash it is worse: the hash is taken modulo the instances still alive, so losing
    one of three remaps about two users in three, and most of them land on an instance that never
    saw them (consistent hashing would move only the dead instance's 1/N).

    Why: the principle violated is "processes are disposable" (twelve-factor IX): a crash is a
    deploy nobody planned, and a process that holds user state turns it into data loss.

    What the stateless design does differently: sessions and carts live in Redis, so the other
    instances serve the dead one's users as if nothing happened; only the requests in flight on it
    at the moment of the kill can fail.
    """

    name: str = "server-crash"
    title: str = "Server crash"
    summary: str = "SIGKILL one of 3 instances under sticky routing: users logged out, carts lost"
    traffic: str = TOGETHER  # it counts users and items: the cases run at once
    tolerances: tuple[Tolerance, ...] = (
        Tolerance("users_logged_out", "<=", 0, "a crash must not log anyone out"),
        Tolerance("items_lost", "<=", 0, "a crash must not take anything out of a cart"),
    )
    preconditions: tuple[Tolerance, ...] = (
        Tolerance("logins", ">=", 1, "users must have logged in"),
        Tolerance("items_added", ">=", 1, "users must have shopped"),
        Tolerance("victim_requests_before", ">=", 1, "the killed instance must have been serving users"),
    )

    def cases(self) -> tuple[AppCase, ...]:
        return (AppCase("stateful", variant="cookie", expect="reproduced"),
                AppCase("stateful", variant="ip-hash", expect="reproduced"),
                AppCase("stateless", variant="round-robin", expect="survived"))

    @property
    def expect(self) -> dict[str, Finding]:
        return {c.label: c.expect for c in self.cases() if c.expect is not None}

    def profile(self, quick: bool, users: int | None) -> Profile:
        n = scale_profile(150, quick, 45, users)
        return Profile(users=n, instances=3, phase_s=1.2 if quick else 5.0,
                       extra=(("after_s", 2.0 if quick else 6.0), ("think_s", 0.5)), seed_users=max(n, 100))

    def run(self, ctx: CaseContext) -> Measurements:
        profile, policy = ctx.profile, ctx.app.variant
        with Harness(ctx) as h:
            # No restart: the dead instance stays dead for the run, so what follows is the balancer's doing.
            lab = h.start_lab(profile.instances, policy, seed_users=profile.seed_users, job_workers=0,
                              restart_crashed=False)
            backends = [i.id for i in lab.status().instances]
            h.start_samplers()
            crowd = h.crowd(Population(distinct_users=profile.users, think_s=profile.get("think_s", 0.5)), "shopper",
                            ctx.seed, ramp_s=min(1.0, profile.phase_s))
            h.phase("users log in and shop", f"{policy} over {profile.instances} instances")
            # The crash strikes users with something to lose: a busy machine only makes this phase longer.
            h.hold_until(lambda c: c.items_added >= 3 * profile.users, crowd, profile.phase_s, FILL_TIMEOUT_S)
            t_kill = h.phase("an instance is killed", f"{VICTIM}, SIGKILL, not restarted")
            lab.kill(VICTIM, signal.SIGKILL)
            h.hold(profile.get("after_s", 2.5), crowd)
            (result,) = h.finish(crowd)
            hits = h.hits
            before = measure.window(hits, h.t0, h.t0 + t_kill)
            last = measure.last_routed_to(hits, VICTIM, h.t0 + t_kill)
            n = len(backends)
            expected = 100 / n
            logged_out_share = 100 * result.users_logged_out / result.users if result.users else math.nan
            latency = measure.latency(before, "before the crash (the cases ran at once)")
            figures = (
                Figure("users", "simulated users", result.users, "users"),
                Figure("instances", "instances", n, ""),
                Figure("logins", "successful logins", result.logins_ok, ""),
                Figure("victim_requests_before", f"requests {VICTIM} served before it was killed",
                       sum(1 for x in before if x.backend == VICTIM), "req"),
                Figure("users_logged_out", "users logged out", result.users_logged_out, "users"),
                Figure("logged_out_share", "share of users logged out", round(logged_out_share, 1), "%"),
                Figure("dead_share", "the dead instance's share of users (1/N)", round(expected, 1), "%"),
                Figure("items_added", "items added to carts", result.items_added, "items"),
                Figure("items_lost", "items lost from carts", result.items_lost, "items"),
                Figure("failed_requests", "failed requests (no answer, timeout, 5xx)", failed_requests(result), "req"),
                Figure("routed_after_kill_s", "seconds the balancer still sent requests to the dead instance",
                       round(last - (h.t0 + t_kill), 3) if last is not None else 0.0, "s"),
                Figure("p50_ms", "p50 latency (before the crash)", latency.p50_ms, "ms"),
                Figure("p99_ms", "p99 latency (before the crash)", latency.p99_ms, "ms"),
            )
            return Measurements(figures, latency, h.events(), crowd_series(result), measure.shares(hits, backends),
                                error_notes(result))

    def verdict(self, m: Measurements) -> Verdict:
        share, dead = m.value("logged_out_share"), m.value("dead_share")
        remapped = share > 1.5 * dead  # more than the dead instance's users: the survivors' users moved too
        return judge(m, self.tolerances, self.preconditions,
                     survived_because="Sessions and carts live in Redis: the surviving instances served the dead "
                                      "one's users as if nothing had happened.",
                     reproduced_because=f"The killed instance took its users' sessions and carts with it: "
                                        f"{_fmt(share)}% of users were logged out, where the dead instance held "
                                        f"{_fmt(dead)}%" + (" (the hash, taken over fewer instances, also moved "
                                                           "users of the survivors)." if remapped else "."))


def _fmt(v: float) -> str:
    return f"{v:.0f}" if v == v else "n/a"


SCENARIO = ServerCrash()
