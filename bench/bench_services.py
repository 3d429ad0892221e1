"""Print how long the backing stores take to become ready (PostgreSQL + Redis + S3, in parallel).

Target (issue 2): <= 2.5 s on a 2-core machine with a warm pip cache. A script, not a timed test:
the machine is shared and noisy, so it prints the median and spread of several runs.

    python bench/bench_services.py [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from statelab import services


def one_run(run_dir: Path) -> dict[str, float]:
    t0 = time.perf_counter()
    started = [services.start_postgres(run_dir), services.start_redis(run_dir), services.start_s3(run_dir)]
    ready: dict[str, float] = {}
    try:
        for svc in started:
            svc.wait_ready()
            ready[svc.name] = time.perf_counter() - t0
        ready["all"] = time.perf_counter() - t0
        t1 = time.perf_counter()
    finally:
        for svc in started:
            svc.stop()
    ready["stop"] = time.perf_counter() - t1
    return ready


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="statelab-bench-") as tmp:
        for i in range(args.runs):
            rows.append(one_run(Path(tmp) / f"run{i}"))
    print(f"backing stores ready, {args.runs} runs (seconds since start; parallel start)")
    print(f"{'':10}{'median':>8}{'min':>8}{'max':>8}")
    for key in ("postgres", "redis", "s3", "all", "stop"):
        vals = [r[key] for r in rows]
        print(f"{key:10}{statistics.median(vals):8.2f}{min(vals):8.2f}{max(vals):8.2f}")
    print(f"target: all <= 2.5 s -> {'met' if statistics.median(r['all'] for r in rows) <= 2.5 else 'NOT met'}")


if __name__ == "__main__":
    main()
