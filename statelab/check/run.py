"""One whole check: stores, instances behind the balancer, every phase, the disks; then the verdicts.

Everything it starts is stopped in `finally` order (ExitStack), also on Ctrl-C or an error, and
an error (bad input, an app that will not start, a journey that sends nothing) is raised as a
LabError for the CLI to show with exit code 2: a check that could not run is never a finding.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from typing import Callable

from statelab.check import compare, journey
from statelab.check.disks import prepare
from statelab.check.instances import InstanceStarter
from statelab.check.options import CheckOptions, phases
from statelab.check.phases import PhaseContext, journey_run, run_phases
from statelab.check.result import CheckReport
from statelab.check.stores import start_stores
from statelab.config import BackingUrls
from statelab.procs import free_port
from statelab.topology import Lab, LabSpec

# The balancer's active health checks ask GET /healthz, which the app under check need not serve
# (a 404 would take every instance out of rotation). One check at start (one failure is below the
# balancer's fall threshold) and then, in effect, only passive checks: a failed connection marks
# an instance down, and the check itself puts a restarted instance back (statelab.check.phases).
HEALTH_INTERVAL_S = 3600.0
LAB_LABEL = "app under check"
BASELINE_NOISY = 0.5  # warn when the journey fails this often in the baseline


def run_check(opts: CheckOptions, progress: Callable[[str], None] = lambda message: None) -> CheckReport:
    """Run every phase against the app under check and return the report (LabError if it cannot run)."""
    opts.validate()
    journey.validate(opts.journey)
    started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    t_start = time.monotonic()
    timings: list[tuple[str, float]] = []
    run_dir = opts.run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    plan = phases(opts.instances)
    with ExitStack() as stack:
        disks = prepare(opts.project_dir)
        stack.callback(disks.remove)
        # The balancer's port is chosen now so that the first phase's Locust can load (and so check)
        # the journey while the stores start.
        port = free_port()
        host = f"http://127.0.0.1:{port}"
        first = journey_run(opts, host, run_dir, plan[0]).start()
        stack.callback(first.proc.stop)
        progress("starting Redis, PostgreSQL and S3; loading the journey")
        stores = start_stores(run_dir, stack)
        first.check_loaded()
        spec = LabSpec(app=LAB_LABEL, instances=opts.instances, policy=plan[0].routing, port=port, run_dir=run_dir,
                       threads=opts.threads, job_workers=0, health_interval_s=HEALTH_INTERVAL_S)
        lab = Lab(spec, start_instance=InstanceStarter(opts, {**stores.env(), **dict(opts.env)}, disks))
        stack.callback(lab.stop)
        lab.start(progress, backing=BackingUrls(database_url=stores.database_url))
        timings.append(("start", time.monotonic() - t_start))
        ctx = PhaseContext(lab, opts, run_dir, host, progress)
        stats = run_phases(ctx, plan, first)
        timings += ctx.timings
        t = time.monotonic()
        lab.stop()  # before the scan: what an instance writes while it stops counts too
        files = disks.scan()
        timings.append(("stop and scan", time.monotonic() - t))
    baseline = stats["baseline"]
    checks = [compare.judge_phase(p.name, p.title, baseline, stats[p.name]) for p in plan[1:]]
    checks.append(compare.judge_disk(files))
    warnings = list(ctx.warnings)
    if baseline.failed_requests > BASELINE_NOISY * baseline.requests:
        warnings.append(f"the journey failed on its own in {baseline.failed_requests} of {baseline.requests} baseline "
                        "requests: a check can only see failure kinds that rise clearly above that")
    return CheckReport(opts.target, str(opts.journey), opts.instances, opts.users, opts.run_time_s, disks.mode,
                       disks.note, baseline, tuple(checks), started_at, time.monotonic() - t_start, str(run_dir),
                       tuple(timings), tuple(warnings))


__all__ = ["run_check"]
