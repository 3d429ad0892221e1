"""The phases of a check, one after the other on one lab: the journey runs, the balancer routes, a fault hits.

Every phase has a fresh Locust (fresh users), started behind a gate while the previous phase runs,
and times itself from the journey's first request after the gate opens: half of --run-time of
traffic, the fault, then the other half (a phase without a fault runs the whole --run-time). The
lab's own events during the phase (draining, stopped, ready, crashed...) are kept on the phase's
clock as part of the evidence.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from statelab.check.journey import JourneyRun
from statelab.check.options import SCALE_TO, CheckOptions, Phase
from statelab.check.result import PhaseStats
from statelab.errors import ServiceFailed
from statelab.procs import log_tail
from statelab.topology import Lab

RESTART_TIMEOUT_S = 30.0
POLL_S = 0.05


@dataclass
class PhaseContext:
    """What every phase needs, passed in: the lab, the options, where to write, how to say what happens."""

    lab: Lab
    opts: CheckOptions
    run_dir: Path
    host: str  # the balancer's URL, where every phase's journey goes
    progress: Callable[[str], None] = lambda message: None
    warnings: list[str] = field(default_factory=list)
    timings: list[tuple[str, float]] = field(default_factory=list)  # (phase, seconds)
    carried: dict[str, int] = field(default_factory=dict)  # requests counted by a backend the phase re-added


def journey_run(opts: CheckOptions, host: str, run_dir: Path, phase: Phase) -> JourneyRun:
    """Return the (unstarted) Locust of one phase against host."""
    return JourneyRun(opts.journey, host, opts.users, run_dir / "phases" / phase.name, opts.project_dir)


def run_phases(ctx: PhaseContext, plan: Sequence[Phase], first: JourneyRun) -> dict[str, PhaseStats]:
    """Run every phase in order, first's Locust already started; each next one starts (gated) during its predecessor."""
    stats: dict[str, PhaseStats] = {}
    run: JourneyRun | None = first
    try:
        for i, phase in enumerate(plan):
            assert run is not None
            started = time.monotonic()
            following = plan[i + 1] if i + 1 < len(plan) else None
            stats[phase.name], run = run_phase(ctx, phase, run, following)
            ctx.timings.append((phase.name, time.monotonic() - started))
    finally:
        if run is not None:
            run.proc.stop()
    return stats


def run_phase(ctx: PhaseContext, phase: Phase, run: JourneyRun,
              following: Phase | None = None) -> tuple[PhaseStats, JourneyRun | None]:
    """Run one phase with its started Locust; return its figures and the next phase's started Locust."""
    lab, opts = ctx.lab, ctx.opts
    if len(lab.instances) != phase.instances:
        lab.scale(phase.instances)
    if lab.policy != phase.routing:
        lab.set_policy(phase.routing)
    ctx.progress(f"phase {phase.name}: {phase.title}")
    fault, fault_at, first_event = "", None, len(lab.events)
    upcoming: JourneyRun | None = None
    served_before = _served(lab)
    try:
        run.go()
        t0 = run.wait_first_request(opts.first_request_timeout_s)
        lab_t0 = lab.now() - (time.time() - t0)  # the lab's clock at the first request
        if following is not None:  # it loads now and waits at its gate: its start-up costs no phase any time
            upcoming = journey_run(opts, ctx.host, ctx.run_dir, following).start()
        if phase.fault:
            run.wait_until(t0 + opts.run_time_s / 2)
            fault_at = time.time() - t0
            fault = _inject(ctx, phase, served_before)
            # A kill is over at once (users move while the lab restarts the instance); a deploy or a
            # scale-out is over when the last instance serves: the second half is counted from there.
            run.wait_until((t0 + fault_at if phase.fault == "kill" else time.time()) + opts.run_time_s / 2)
        else:
            run.wait_until(t0 + opts.run_time_s)
        ended = time.time()
        record = run.stop()
        served = tuple((i, n + ctx.carried.pop(i, 0) - served_before.get(i, 0)) for i, n in _served(lab).items())
    except BaseException:
        run.proc.stop()
        if upcoming is not None:
            upcoming.proc.stop()
        raise
    if record.users_unbound and phase.routing == "ip-hash":
        ctx.warnings.append(f"{record.users_unbound} journey users are not HttpUser (their client cannot bind its own "
                            "address): they all look like one client, and the scale-out check cannot move them")
    events = tuple(e.shifted(-lab_t0) for e in lab.events[first_event:])
    instances = f"{phase.instances} -> {SCALE_TO}" if phase.fault == "scale" else str(phase.instances)
    return PhaseStats(phase.name, phase.routing, instances, record.requests, record.kinds, ended - t0, fault,
                      fault_at, events, record.per_second, served, record.latency_ms), upcoming


def _served(lab: Lab) -> dict[str, int]:
    """Return how many requests the balancer has sent each instance so far (a re-added one starts again at 0)."""
    return {b.id: b.requests for b in lab.engine.backends()} if lab.engine is not None else {}


def _inject(ctx: PhaseContext, phase: Phase, served_before: dict[str, int]) -> str:
    """Apply the phase's fault (blocking until it is over) and return what was done, in words."""
    lab, started = ctx.lab, time.monotonic()
    if phase.fault == "deploy":
        count = len(lab.instances)
        ctx.progress(f"  rolling deploy of {count} instances")
        lab.deploy(batch=1, drain=True)
        return (f"rolling deploy: {count} instances drained, stopped and started again one at a time "
                f"(each on a fresh disk), {time.monotonic() - started:.1f} s")
    if phase.fault == "kill":
        # the instance that served the most of this phase so far: it holds the most users
        served = _served(lab)
        victim = max(sorted(lab.instances), key=lambda i: served.get(i, 0) - served_before.get(i, 0))
        ctx.progress(f"  SIGKILL to {victim}")
        ctx.carried[victim] = _kill_and_wait(lab, victim)
        return (f"SIGKILL to {victim} (the busiest instance); the lab restarted it (fresh disk) and it served "
                f"again after {time.monotonic() - started:.1f} s")
    if phase.fault == "scale":
        before = len(lab.instances)
        ctx.progress(f"  scale-out from {before} to {SCALE_TO} instances")
        lab.scale(SCALE_TO)
        return (f"scale-out from {before} to {SCALE_TO} instances in {time.monotonic() - started:.1f} s "
                f"(ip-hash routing: about half of the users move to a new instance)")
    raise ValueError(f"unknown fault {phase.fault!r}")


def _kill_and_wait(lab: Lab, victim: str) -> int:
    """SIGKILL one instance, wait until the lab's supervisor has it serving again, and rejoin it.

    Return how many requests the balancer had counted for it (re-adding it starts a new count).

    The balancer's active health checks ask GET /healthz, which an app under check need not have,
    so the check runs them rarely (see statelab.check.run); after a failed connection marks the
    killed instance down, re-registering it is what brings the restarted process back into rotation.
    """
    inst = lab.instances[victim]
    generation = inst.generation
    lab.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + RESTART_TIMEOUT_S
    while not (inst.generation > generation and inst.state == "ready"):
        if time.monotonic() > deadline:
            raise ServiceFailed(f"{victim} did not serve again within {RESTART_TIMEOUT_S:g} s of its SIGKILL "
                                f"(log: {inst.service.process.log_path})", log_tail(inst.service.process.log_path))
        time.sleep(POLL_S)
    engine = lab.engine
    if engine is None:
        return 0
    counted = _served(lab).get(victim, 0)
    engine.remove_backend(victim)
    engine.add_backend(victim, inst.address)
    return counted


__all__ = ["PhaseContext", "journey_run", "run_phase", "run_phases"]
