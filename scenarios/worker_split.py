"""worker-split: one stateful instance under gunicorn with 4 worker processes: its memory is split four ways."""

from __future__ import annotations

import math
from dataclasses import dataclass

from statelab import measure
from statelab.harness import Harness, crowd_series, error_notes, failed_requests
from statelab.scenario import (AppCase, CaseContext, Figure, Finding, Latency, Measurements, Profile, Tolerance,
                               Verdict, judge, scale_profile)
from statelab.turns import TOGETHER
from statelab.users import Population

WORKERS = (("stateful", 4, "reproduced"), ("stateful", 1, "survived"), ("stateless", 4, "survived"))
PAGE_LOADS = 10  # per user
STATS_PROBES = 40  # new connections asking /stats which worker (pid) answered
SEED_PRODUCTS = 20
TIMEOUT_S = 5.0


@dataclass(frozen=True)
class WorkerSplit:
    """One instance, no balancer, and users are still logged out: gunicorn's workers share nothing.

    What breaks: the stateful app runs as ONE instance, so nobody thinks of stickiness, but
    gunicorn is started with 4 worker processes, the usual advice for using the cores. Each worker
    is its own process with its own memory: a login lands in one worker's session table, and the
    next request, on a new connection, goes to whichever worker accepts it. About three requests
    in four find no session: the user is logged out, logs in again, and is logged out again.

    Why: the principle violated is "keep no state in the process". A process is the unit of
    memory, not the host or the container: the moment a server forks workers (gunicorn, uwsgi,
    Puma, PHP-FPM), in-process state is split without any balancer in sight.

    What the stateless design does differently: sessions live in Redis, so every worker process
    of every instance sees the same ones; adding workers (or instances) changes capacity, never
    who is logged in. The control column, the stateful app with one worker, shows the split comes
    from the processes, not from the app's code.
    """

    name: str = "worker-split"
    title: str = "Worker processes split memory"
    summary: str = "one stateful instance, 4 gunicorn workers, no balancer: how often users find no session"
    traffic: str = TOGETHER  # it counts logouts: the cases run at once
    tolerances: tuple[Tolerance, ...] = (
        Tolerance("users_logged_out", "<=", 0, "no user may lose a session while nothing restarts"),
    )
    preconditions: tuple[Tolerance, ...] = (
        Tolerance("logins", ">=", 1, "users must have logged in"),
        Tolerance("page_loads", ">=", 50, "enough page loads to count logouts"),
    )

    def cases(self) -> tuple[AppCase, ...]:
        return tuple(AppCase(app, variant=f"{n} worker{'s' if n > 1 else ''}", expect=expect)  # type: ignore[arg-type]
                     for app, n, expect in WORKERS)

    @property
    def expect(self) -> dict[str, Finding]:
        return {c.label: c.expect for c in self.cases() if c.expect is not None}

    def profile(self, quick: bool, users: int | None) -> Profile:
        return Profile(users=scale_profile(60, quick, 20, users), instances=1, phase_s=3.0 if quick else 8.0,
                       extra=(("think_s", 0.1), ("pages", PAGE_LOADS if quick else 3 * PAGE_LOADS)), seed_users=max(60, scale_profile(60, quick, 20, users)))

    def run(self, ctx: CaseContext) -> Measurements:
        profile, app = ctx.profile, ctx.app
        workers = int(app.variant.split()[0])
        with Harness(ctx) as h:
            # No balancer at all: users talk to the one instance directly.
            h.start_lab(1, "round-robin", threads=4, seed_users=profile.seed_users, seed_products=SEED_PRODUCTS,
                        job_workers=0, workers=workers, balancer=False)
            h.start_samplers()
            steps = int(profile.get("pages", PAGE_LOADS))
            crowd = h.crowd(Population(distinct_users=profile.users, think_s=profile.get("think_s", 0.1), steps=steps),
                            "pages", ctx.seed, ramp_s=0.5)
            h.phase("users load pages, each on a new connection", f"{profile.users} users x {steps} pages, "
                                                                   f"1 instance x {workers} workers")
            h.wait_done(crowd, profile.phase_s + 10.0)
            (result,) = h.finish(crowd)
            pids = _worker_pids(h.base_url, STATS_PROBES)
            latency = Latency(result.latency.p50_ms, result.latency.p99_ms, result.latency.count,
                              "every request (the cases ran at once)")
            per_100 = round(100 * result.logout_events / result.pages, 1) if result.pages else math.nan
            figures = (
                Figure("users", "simulated users", result.users, "users"),
                Figure("workers", "gunicorn worker processes in the instance", workers, ""),
                Figure("workers_seen", f"worker processes that answered {STATS_PROBES} new connections", len(pids), ""),
                Figure("logins", "logins (first ones and again after a logout)", result.logins_ok, ""),
                Figure("page_loads", "page loads (GET /me, GET /cart), each on a new connection", result.pages, "req"),
                Figure("logout_events", "page loads that found no session (logged out)", result.logout_events, "req"),
                Figure("logouts_per_100", "logouts per 100 page loads", per_100, ""),
                Figure("requests", "requests (page loads, logins and retries after a login)", result.requests, "req"),
                Figure("users_logged_out", "users logged out at least once", result.users_logged_out, "users"),
                Figure("failed_requests", "failed requests (no answer, timeout, 5xx)", failed_requests(result), "req"),
                Figure("p50_ms", "p50 latency", latency.p50_ms, "ms"),
                Figure("p99_ms", "p99 latency", latency.p99_ms, "ms"),
            )
            notes = (f"worker pids seen: {', '.join(str(p) for p in sorted(pids)) or 'none'}",) + error_notes(result)
            return Measurements(figures, latency, h.events(), crowd_series(result), (), notes)

    def verdict(self, m: Measurements) -> Verdict:
        return judge(m, self.tolerances, self.preconditions,
                     survived_because="Every worker process saw every session.",
                     reproduced_because=f"Each gunicorn worker kept its own sessions: "
                                        f"{_fmt(m.value('logouts_per_100'))} of every 100 page loads landed on a "
                                        f"worker that had never seen the login ({_fmt(m.value('workers_seen'))} "
                                        f"workers answered).")


def _worker_pids(url: str, probes: int) -> set[int]:
    """Ask /stats on `probes` new connections which worker process answered; return the pids seen."""
    pids = set()
    for _ in range(probes):
        doc = measure.fetch_stats(url, timeout_s=TIMEOUT_S)  # requests.get without a session: a new connection
        if doc is not None and isinstance(doc.get("pid"), int):
            pids.add(int(doc["pid"]))
    return pids


def _fmt(v: float) -> str:
    return f"{v:.0f}" if v == v else "n/a"


SCENARIO = WorkerSplit()
