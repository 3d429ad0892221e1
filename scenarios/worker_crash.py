"""worker-crash: the process running background jobs is killed mid-job: is the job lost, or done twice?"""

from __future__ import annotations

import io
import math
import signal
import time
from dataclasses import dataclass, field

import redis
import requests
from rq import Worker
from rq.exceptions import NoSuchJobError
from rq.job import Job

from statelab import measure
from statelab.errors import ScenarioError
from statelab.harness import Harness
from statelab.scenario import (AppCase, CaseContext, Figure, Finding, Measurements, Profile, Tolerance, Verdict,
                               judge)
from statelab.seed import SEED_PASSWORD, username
from statelab.turns import TOGETHER

JOB_DELAY_S = "1.0"  # each job lingers after its effect: the window in which its worker is killed
DELAY = (("LAB_JOB_DELAY_S", JOB_DELAY_S),)
STATELESS_WORKERS = 2
SEED_USERS = 20
SEED_PRODUCTS = 20
TIMEOUT_S = 5.0
POLL_S = 0.05
WORKERS_UP_S = 20.0
SETTLE_S = 15.0  # after the kill: re-delivery takes a heartbeat lapse (3 s) and a maintenance pass (1 s)


@dataclass
class Tally:
    """What the user saw of each job: when it was submitted, its last status, attempts and effects."""

    submitted: dict[str, float] = field(default_factory=dict)  # job id -> wall clock
    status: dict[str, str] = field(default_factory=dict)  # queued, running, done, failed, lost (404)
    attempts: dict[str, int] = field(default_factory=dict)
    effects: dict[str, int] = field(default_factory=dict)
    done_at: dict[str, float] = field(default_factory=dict)
    requests: list[float] = field(default_factory=list)  # when each status poll was answered

    def settled(self, job_id: str) -> bool:
        return self.status.get(job_id) in ("done", "failed", "lost")


@dataclass(frozen=True)
class WorkerCrash:
    """A background job dies with the process running it: lost for good, or run again and done twice.

    What breaks: a user uploads files and asks for them to be processed; each job applies an effect
    (think "charge the card", "send the e-mail") and then finishes. Mid-job, the process running it
    is killed (OOM killer, a deploy, a crashed node). The stateful app runs jobs on threads of the
    app process and keeps their state in its memory: the kill loses the running job, every queued
    one, and even the results of finished ones. Nothing will ever run them again.

    Why: the principle violated is "processes are disposable": a job queue in process memory makes
    the process precious. The stateless design fixes that with an external queue, and meets the
    next problem: delivery is at least once. A job whose worker died is handed out again, so it
    may run twice, and an effect that is not idempotent happens twice (the card is charged twice).

    What the stateless design does: jobs in Redis (RQ), a heartbeat per running job, re-delivery of
    abandoned jobs to another worker within seconds, and an effect applied once per job id (an
    atomic marker). The third column turns that guard off: the job is not lost, it is done twice.
    """

    name: str = "worker-crash"
    title: str = "Job worker killed mid-job"
    summary: str = "the process running background jobs is killed mid-job: jobs lost, jobs done twice"
    traffic: str = TOGETHER  # it counts jobs: the cases run at once
    tolerances: tuple[Tolerance, ...] = (
        Tolerance("jobs_lost", "<=", 0, "every job the user submitted must finish"),
        Tolerance("jobs_effect_doubled", "<=", 0, "a job's effect must happen once, even if the job runs twice"),
    )
    preconditions: tuple[Tolerance, ...] = (
        Tolerance("jobs", ">=", 1, "jobs must have been submitted"),
        Tolerance("killed", ">=", 1, "a job's process must have been killed while the job ran"),
    )

    def cases(self) -> tuple[AppCase, ...]:
        return (AppCase("stateful", env=DELAY, expect="reproduced"),
                AppCase("stateless", env=DELAY, expect="survived"),
                AppCase("stateless", variant="not idempotent", env=DELAY + (("LAB_JOB_IDEMPOTENT", "0"),),
                        expect="reproduced"))

    @property
    def expect(self) -> dict[str, Finding]:
        return {c.label: c.expect for c in self.cases() if c.expect is not None}

    def profile(self, quick: bool, users: int | None) -> Profile:
        return Profile(users=1, instances=1, phase_s=SETTLE_S, extra=(("jobs", 4 if quick else 10),),
                       seed_users=SEED_USERS)

    def run(self, ctx: CaseContext) -> Measurements:
        stateless = ctx.app.app == "stateless"
        with Harness(ctx) as h:
            lab = h.start_lab(1, "round-robin", seed_users=ctx.profile.seed_users, seed_products=SEED_PRODUCTS,
                              job_workers=STATELESS_WORKERS if stateless else 0, balancer=False)
            store = redis.Redis.from_url(lab.stores["redis"].url, socket_timeout=TIMEOUT_S) if stateless else None
            if store is not None:
                _wait_for_workers(store, STATELESS_WORKERS)
            h.start_samplers()
            base, tally = h.base_url, Tally()
            h.phase("a user submits jobs", f"{int(ctx.profile.get('jobs'))} uploads to process")
            _submit(base, int(ctx.profile.get("jobs")), tally)
            victim = _wait_for_an_effect(h, base, tally)
            if stateless:
                assert store is not None
                worker = _worker_of(store, victim, [w.name for w in lab.workers])
                lab.kill_worker(worker, signal.SIGKILL)
                where = worker
            else:
                where = next(iter(lab.instances))
                lab.kill(where, signal.SIGKILL)  # the supervisor starts it again, empty
            t_kill = time.time()
            h.phase("the job's process is killed", f"{where} (SIGKILL), while it runs job {victim[:8]}")
            redelivered = _settle(h, base, tally, victim, t_kill, ctx.profile.phase_s)
            h.finish()
            if store is not None:
                store.close()
            return self._measure(h, tally, victim, t_kill, redelivered, stateless)

    def _measure(self, h: Harness, tally: Tally, victim: str, t_kill: float, redelivered: float | None,
                 stateless: bool) -> Measurements:
        jobs = list(tally.submitted)
        done = [j for j in jobs if tally.status.get(j) == "done"]
        waits = sorted(tally.done_at[j] - tally.submitted[j] for j in done if j in tally.done_at)
        figures = (
            Figure("jobs", "jobs submitted", len(jobs), "jobs"),
            Figure("killed", "processes killed mid-job", 1, ""),
            Figure("jobs_done", "jobs done", len(done), "jobs"),
            Figure("jobs_lost", "jobs lost (never done)", len(jobs) - len(done), "jobs"),
            Figure("jobs_ran_twice", "jobs that ran more than once", sum(1 for j in jobs if tally.attempts.get(j, 0) > 1),
                   "jobs"),
            Figure("jobs_effect_doubled", "jobs whose effect happened more than once",
                   sum(1 for j in jobs if tally.effects.get(j, 0) > 1), "jobs"),
            Figure("victim_effects", "times the killed job's effect happened", tally.effects.get(victim, math.nan), ""),
            Figure("redelivery_s", "seconds from the kill to the job running again",
                   round(redelivered - t_kill, 2) if redelivered is not None else math.nan, "s"),
            Figure("job_p50_s", "seconds from submission to done, p50",
                   round(waits[len(waits) // 2], 2) if waits else math.nan, "s"),
            Figure("job_max_s", "seconds from submission to done, slowest", round(waits[-1], 2) if waits else math.nan,
                   "s"),
        )
        lost = [j[:8] for j in jobs if tally.status.get(j) != "done"]
        queue = f"RQ in Redis, {STATELESS_WORKERS} worker processes" if stateless else "threads of the app process"
        notes: tuple[str, ...] = (f"queue: {queue}; each job lingers {JOB_DELAY_S} s after its effect "
                                  "(LAB_JOB_DELAY_S)",)
        if lost:
            notes += (f"jobs never done: {', '.join(lost)} (last status: "
                      f"{', '.join(sorted({tally.status.get(j, '?') for j in jobs if j[:8] in lost}))})",)
        series = (measure.count_per_second("requests", tally.requests, h.t0),
                  measure.count_per_second("jobs done", [tally.done_at[j] for j in done if j in tally.done_at], h.t0))
        return Measurements(figures, events=h.events(), series=series, notes=notes)

    def verdict(self, m: Measurements) -> Verdict:
        v = judge(m, self.tolerances, self.preconditions,
                  survived_because="The killed worker's job was handed to another worker and finished; its "
                                   "effect happened once.",
                  reproduced_because=f"The jobs lived in the killed process: {_fmt(m.value('jobs_lost'))} of "
                                     f"{_fmt(m.value('jobs'))} will never run.")
        if v.outcome == "reproduced" and m.value("jobs_lost") <= 0:  # nothing lost: the story is the second run
            return Verdict(v.outcome, "No job was lost: the killed one ran again on another worker, and its effect, "
                                      "applied by both runs, happened twice. " + v.explanation, v.checks)
        return v


def _wait_for_workers(store: redis.Redis, n: int) -> None:
    """Wait until n RQ workers have registered (they start without a readiness probe)."""
    deadline = time.monotonic() + WORKERS_UP_S
    while len(Worker.all(connection=store)) < n:
        if time.monotonic() > deadline:
            raise ScenarioError(f"fewer than {n} job workers registered within {WORKERS_UP_S:.0f} s")
        time.sleep(POLL_S)


def _submit(base: str, n: int, tally: Tally) -> None:
    """Log in, upload n small text files and ask for each to be processed."""
    s = requests.Session()
    s.post(f"{base}/login", json={"username": username(1), "password": SEED_PASSWORD},
           timeout=TIMEOUT_S).raise_for_status()
    for i in range(n):
        up = s.post(f"{base}/uploads", files={"file": (f"f{i}.txt", io.BytesIO(b"one two three\nfour\n"))},
                    timeout=TIMEOUT_S)
        up.raise_for_status()
        job = s.post(f"{base}/uploads/{up.json()['key']}/process", timeout=TIMEOUT_S)
        job.raise_for_status()
        tally.submitted[job.json()["job_id"]] = time.time()


def _poll(base: str, tally: Tally, job_id: str) -> None:
    """Read one job's status into the tally; a 404 means the job is gone; no answer changes nothing."""
    try:
        r = requests.get(f"{base}/jobs/{job_id}", timeout=TIMEOUT_S)
    except requests.RequestException:
        return  # the instance is down (being restarted)
    tally.requests.append(time.time())
    if r.status_code == 404:
        tally.status[job_id] = "lost"
        return
    doc = r.json()
    tally.status[job_id] = str(doc.get("status"))
    tally.attempts[job_id] = int(doc.get("attempts") or 0)
    tally.effects[job_id] = int(doc.get("effects") or 0)
    if tally.status[job_id] == "done":
        tally.done_at.setdefault(job_id, time.time())


def _wait_for_an_effect(h: Harness, base: str, tally: Tally) -> str:
    """Return the first job seen running with its effect applied (its process is about to be killed)."""
    deadline = time.monotonic() + SETTLE_S
    while time.monotonic() < deadline:
        for job_id in tally.submitted:
            _poll(base, tally, job_id)
            if tally.status.get(job_id) == "running" and tally.effects.get(job_id, 0) >= 1:
                return job_id
        if h.ctx.turn.aborted:
            raise KeyboardInterrupt
        time.sleep(POLL_S)
    raise ScenarioError(f"no job was seen running with its effect applied within {SETTLE_S:.0f} s")


def _worker_of(store: redis.Redis, job_id: str, names: list[str]) -> str:
    """Return the lab's name of the worker process running job_id (RQ names it '<lab name>-<pid>-<n>')."""
    try:
        running = Job.fetch(job_id, connection=store).worker_name or ""
    except NoSuchJobError:
        running = ""
    found = next((n for n in names if running.startswith(n + "-")), None)
    if found is None:
        raise ScenarioError(f"job {job_id} runs on no known worker ({running or 'none'})")
    return found


def _settle(h: Harness, base: str, tally: Tally, victim: str, t_kill: float, limit_s: float) -> float | None:
    """Poll every job until each is done, failed or gone (bounded); return when the victim ran again, if it did."""
    deadline = time.monotonic() + limit_s
    redelivered = None
    while time.monotonic() < deadline and not all(tally.settled(j) for j in tally.submitted):
        for job_id in tally.submitted:
            if not tally.settled(job_id):
                _poll(base, tally, job_id)
        if redelivered is None and tally.attempts.get(victim, 0) >= 2:
            redelivered = time.time()
        if h.ctx.turn.aborted:
            raise KeyboardInterrupt
        time.sleep(POLL_S)
    if redelivered is None and tally.attempts.get(victim, 0) >= 2:
        redelivered = time.time()
    return redelivered if redelivered is not None and redelivered >= t_kill else None



def _fmt(v: float) -> str:
    return f"{v:.0f}" if v == v else "n/a"


SCENARIO = WorkerCrash()
