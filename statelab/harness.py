"""What a scenario's `run` uses to run its case: a lab, crowds and samplers, and the helpers they share.

`Harness` owns everything a case starts (a lab, crowds, samplers) on one ExitStack, so cleanup
always runs, also on Ctrl-C; it keeps a single clock for the case: every event, series and window
is in seconds since traffic started (`t0`), so charts line up. It reads everything from the case's
`CaseContext` (no hidden channel): the app, run directory, engine or target, progress and turn.
The scenarios themselves live in the `scenarios` package, which imports this; never the reverse.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from typing import Callable, Sequence

from statelab.engines import HEALTH_PATH
from statelab.engines.builtin import AdminClient
from statelab.errors import ScenarioError
from statelab.events import Event
from statelab.measure import CacheEvent, CacheEvents, Hit, RecordCollector, StatsSampler
from statelab.scenario import CaseContext, Series
from statelab.seed import SEED_PRODUCTS, SEED_USERS
from statelab.topology import Lab, LabSpec
from statelab.users import CrowdHandle, CrowdResult, LiveCounters, Population

# Short, so a deploy or a scale-out is not spent waiting for health checks (each check still has
# the balancer's own timeout, HEALTH_TIMEOUT_S, so a busy instance is not mistaken for a dead one).
HEALTH_INTERVAL_S = 0.25


def live_line(c: LiveCounters) -> str:
    """Render a crowd's live counters as one progress line."""
    return (f"{c.elapsed_s:5.1f}s  users {c.users_active}/{c.users_started}  requests {c.requests}  "
            f"errors {c.errors}  logins {c.logins_ok}  logged out {c.logout_events}  "
            f"items added {c.items_added}  lost {c.items_lost}")


class Harness:
    """One case's lab, crowds and samplers, stopped in reverse order when the case ends."""

    def __init__(self, ctx: CaseContext) -> None:
        self.ctx = ctx
        self.app = ctx.app
        self.progress = ctx.progress
        self.target = ctx.target
        self.stack = ExitStack()
        self.lab: Lab | None = None
        self.t0 = time.time()
        self._lab_wall0 = self.t0
        self._marks: list[Event] = []
        self.records: RecordCollector | None = None
        self.stats: StatsSampler | None = None
        self.cache: CacheEvents | None = None
        self._crowds: list[CrowdHandle] = []

    def __enter__(self) -> "Harness":
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.watch(None)
        self.stack.close()

    # --- setup ----------------------------------------------------------------------------------

    def start_lab(self, instances: int, policy: str, threads: int = 8, seed_users: int = SEED_USERS,
                  job_workers: int = 1, health_interval_s: float = HEALTH_INTERVAL_S, *,
                  seed_products: int = SEED_PRODUCTS, workers: int = 1, balancer: bool = True,
                  health_path: str = HEALTH_PATH, redis: str = "plain", s3_faults: bool = False,
                  restart_crashed: bool = True,
                  side_instances: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (),
                  own_stores: tuple[str, ...] = ()) -> Lab:
        """Start a fresh lab for this case (stores, seed, instances, balancer); see LabSpec for the options.

        Its stores are a clean tenancy on the run's shared ones (a database, a Redis index and a
        bucket of its own), except `own_stores`: those the scenario kills, restarts or reads
        process-wide figures of, which the lab runs itself.
        """
        if self.target is not None:
            raise ScenarioError("not supported with --target: this scenario starts, restarts or scales its own "
                                "processes (run it without --target)")
        spec = LabSpec(app=self.app.app, instances=instances, policy=policy, lb=self.ctx.lb, run_dir=self.ctx.run_dir,
                       threads=threads, health_interval_s=health_interval_s, seed_users=seed_users,
                       seed_products=seed_products, app_env=self.app.env, job_workers=job_workers, workers=workers,
                       balancer=balancer, health_path=health_path, redis=redis, s3_faults=s3_faults,
                       restart_crashed=restart_crashed, side_instances=side_instances, own_stores=own_stores)
        lab = Lab(spec)
        self._lab_wall0 = time.time()
        self.progress.phase(f"{self.app.label}: starting a lab ({instances} instances, {policy})")
        self.stack.callback(lab.stop)
        lab.start(progress=lambda msg: self.progress.phase(f"{self.app.label}: {msg}"), shared=self.ctx.stores)
        self.lab = lab
        self.ctx.turn.lab_ready()
        return lab

    @property
    def admin(self) -> AdminClient | None:
        """The target's admin API when it is the builtin balancer's (an http URL), else None."""
        if self.target is None or not (self.target.admin or "").startswith("http"):
            return None
        return AdminClient(self.target.admin or "")

    def target_backends(self) -> list[tuple[str, str]]:
        """Return the target balancer's backends as (id, address) (empty when its admin API is not reachable)."""
        admin = self.admin
        if admin is None:
            return []
        try:
            return [(b.id, b.address) for b in admin.backends()]
        except Exception:  # an admin we cannot read only costs per-instance figures
            return []

    @property
    def base_url(self) -> str:
        if self.target is not None:
            return self.target.url.rstrip("/")
        assert self.lab is not None
        return self.lab.entry_url

    def start_samplers(self, stats: bool = False, cache_events: bool = False) -> None:
        """Start draining balancer records (and polling /stats, listening to the shared cache when asked).

        Traffic time starts now. Cache events need the lab's own Redis (the stateless app's).

        With labs started side by side, this waits for this case's turn to send traffic.
        """
        self.progress.phase(f"{self.app.label}: lab ready, waiting for its turn to send traffic")
        self.ctx.turn.wait()
        self.stack.callback(self.ctx.turn.done)
        self.t0 = time.time()
        if self.lab is not None and self.lab.engine is not None:
            self.records = RecordCollector(self.lab.engine).start()
            self.stack.callback(self.records.stop)
        elif self.admin is not None:
            self.records = RecordCollector(self.admin).start()
            self.stack.callback(self.records.stop)
        if stats and self.lab is not None:
            lab = self.lab
            self.stats = StatsSampler(lambda: [(i.id, i.url) for i in lab.status().instances])
            self.stats.start()
            self.stack.callback(self.stats.stop)
        if cache_events and self.lab is not None and "redis" in self.lab.stores:
            self.cache = CacheEvents(self.lab.stores["redis"].url).start()
            self.stack.callback(self.cache.stop)

    def crowd(self, population: Population, journey: object, seed: int, ramp_s: float = 1.0,
              request_timeout_s: float = 5.0) -> CrowdHandle:
        """Start a crowd in the background and show its live counters."""
        handle = CrowdHandle(self.base_url, population, journey, seed=seed, ramp_s=ramp_s,  # type: ignore[arg-type]
                             request_timeout_s=request_timeout_s)
        self.stack.callback(handle.stop)
        handle.start()
        self._crowds.append(handle)
        self.progress.watch(lambda: live_line(handle.live()))
        return handle

    # --- during the run ----------------------------------------------------------------------------

    def now(self) -> float:
        return time.time() - self.t0

    def phase(self, name: str, detail: str = "") -> float:
        """Mark the start of a phase (shown live and drawn on charts); return its time."""
        t = self.now()
        self._marks.append(Event(t, "phase", name, detail))
        self.progress.phase(f"{self.app.label}: {name}" + (f" ({detail})" if detail else ""))
        return t

    def hold(self, seconds: float, crowd: CrowdHandle | None = None) -> None:
        """Let traffic run for a while (bounded; returns early if the crowd died)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.ctx.turn.aborted:
                raise KeyboardInterrupt
            if crowd is not None and not crowd.running():
                raise ScenarioError("the simulated users stopped early: " + _crowd_failure(crowd))
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    def hold_until(self, done: Callable[[LiveCounters], bool], crowd: CrowdHandle, min_s: float,
                   max_s: float) -> bool:
        """Let traffic run at least min_s, then until done(the crowd's live counters) or max_s; return done.

        For a fault that must strike users in a given state (logged in, carts filled), whatever the
        machine's speed: a fixed duration on a busy machine would strike them earlier in their journey.
        """
        deadline = time.monotonic() + max_s
        self.hold(min_s, crowd)
        while not done(crowd.live()):
            if time.monotonic() >= deadline:
                return False
            self.hold(0.05, crowd)
        return True

    def wait_done(self, crowd: CrowdHandle, timeout_s: float) -> None:
        """Wait until a crowd with a fixed number of steps has taken them all (bounded; `finish` stops it)."""
        deadline = time.monotonic() + timeout_s
        while crowd.running() and time.monotonic() < deadline:
            if self.ctx.turn.aborted:
                raise KeyboardInterrupt
            time.sleep(0.05)

    def finish(self, *crowds: CrowdHandle, timeout_s: float = 20.0) -> list[CrowdResult]:
        """Stop the crowds and return their results; then stop the samplers.

        A case whose users got no answer at all from the target measured nothing: that is a
        ScenarioError (an `error` outcome), never a finding.
        """
        for c in crowds:
            c.stop()
        results = [c.result(timeout_s) for c in crowds]
        if crowds and not any(r.answered for r in results):
            raise ScenarioError(no_answer_reason(self.base_url, results))
        self.progress.watch(None)
        if self.records is not None:
            self.records.stop()
        if self.stats is not None:
            self.stats.stop()
        if self.cache is not None:
            self.cache.stop()
        self.ctx.turn.done()
        return results

    # --- after the run -------------------------------------------------------------------------------

    @property
    def hits(self) -> list[Hit]:
        return self.records.hits if self.records is not None else []

    @property
    def cache_events(self) -> list[CacheEvent]:
        return self.cache.events if self.cache is not None else []

    def rel(self, wall_t: float) -> float:
        return wall_t - self.t0

    def events(self) -> tuple[Event, ...]:
        """Return the lab's events and the phase marks, in seconds since traffic started."""
        lab_events = []
        if self.lab is not None:
            offset = self._lab_wall0 - self.t0
            lab_events = [e.shifted(offset) for e in self.lab.events]
        return tuple(sorted(lab_events + self._marks, key=lambda e: e.t))

    def event_time(self, kind: str, last: bool = False) -> float | None:
        found = [e.t for e in self.events() if e.kind == kind]
        if not found:
            return None
        return found[-1] if last else found[0]


def crowd_series(result: CrowdResult, offset_s: float = 0.0) -> tuple[Series, ...]:
    """Return the crowd's timeline as chart series of per-second rates (one point per bucket)."""
    def pick(name: str, unit: str, get: Callable[[object], int]) -> Series:
        return Series(name, unit, tuple((round(b.t + offset_s, 3), get(b) / b.width_s) for b in result.timeline))

    return (pick("requests", "req/s", lambda b: b.requests),  # type: ignore[attr-defined]
            pick("errors", "1/s", lambda b: b.errors),  # type: ignore[attr-defined]
            pick("logouts", "1/s", lambda b: b.logouts),  # type: ignore[attr-defined]
            pick("items lost", "1/s", lambda b: b.items_lost))  # type: ignore[attr-defined]


def no_answer_reason(url: str, results: Sequence[CrowdResult]) -> str:
    """Say in one line that the users got no answer from url, and what they got instead."""
    sent = sum(r.requests for r in results)
    kinds: dict[str, int] = {}
    for r in results:
        for kind, n in r.errors.items():
            kinds[kind] = kinds.get(kind, 0) + n
    got = ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()) if n) or "nothing"
    return (f"the users got no answer from {url}: {sent} requests sent, errors by kind: {got}; "
            f"is anything listening there?")


def failed_requests(result: CrowdResult) -> int:
    """Return requests that failed for the user: no answer, timeouts, resets and 5xx (not 4xx)."""
    return sum(n for kind, n in result.errors.items() if kind != "4xx")


def error_notes(*results: CrowdResult) -> tuple[str, ...]:
    """Return a note with the users' errors by kind, when there were any (for diagnosis)."""
    kinds: dict[str, int] = {}
    for r in results:
        for kind, n in r.errors.items():
            kinds[kind] = kinds.get(kind, 0) + n
    if not any(kinds.values()):
        return ()
    return ("errors the users saw, by kind: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()) if n),)


def _crowd_failure(crowd: CrowdHandle) -> str:
    try:
        crowd.result(0.1)
    except Exception as exc:  # surface what broke the crowd thread
        return f"{type(exc).__name__}: {exc}"
    return "it finished before it was asked to"


__all__: Sequence[str] = ["Harness", "crowd_series", "error_notes", "failed_requests", "live_line", "no_answer_reason"]
