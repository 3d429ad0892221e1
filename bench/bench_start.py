"""Print the time to a verdict, before and after: `statelab up` to its first 200, and `statelab run` walls.

Each column is a checkout with its own virtualenv (`CHECKOUT/.venv/bin/python`), e.g. `main` in a
detached worktree as "before" and this branch as "after"; runs alternate between the columns so
that both see the same noise. Targets (issue 14 / issue 11): `up` (3 stateless instances) at most
2.5 s to the first 200 through the balancer; `run all --quick` at most 45 s; each costs scenario's
quick profile at most 12 s.

    git worktree add --detach ../speed-before main   # and give it a .venv
    python bench/bench_start.py --before ../speed-before --after . --up 5
    python bench/bench_start.py --before ../speed-before --after . --up 0 --run all --runs 2
    python bench/bench_start.py --after . --up 0 --run costs --runs 1
    python bench/bench_start.py --timeline --up 0      # where one lab's start goes, step by step

"The first 200" is a GET of a product page (a database read) through the balancer, polled every
10 ms from the moment the `statelab up` process is spawned. The balancer port is picked free by
the script and passed with `--port` (`--port 0` picks one the script could not know in advance).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import requests

UP_TIMEOUT_S = 60.0
POLL_INTERVAL_S = 0.01


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def python_of(checkout: Path) -> str:
    python = checkout / ".venv" / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"{python} not found: give {checkout} its own venv (python3 -m venv .venv && "
                         f".venv/bin/pip install -e '.[test]')")
    return str(python)


def time_up(checkout: Path, tmp: Path, instances: int) -> dict[str, float]:
    """Start `statelab up --app stateless` once; return seconds to the first 200, to `up` ready, and to stop."""
    port = free_port()
    state = tmp / f"lab-{port}.json"
    log = tmp / f"up-{port}.log"
    argv = [python_of(checkout), "-m", "statelab", "up", "--app", "stateless", "--instances", str(instances),
            "--port", str(port), "--state-file", str(state), "--run-dir", str(tmp / f"run-{port}")]
    url = f"http://127.0.0.1:{port}/products/1"
    session = requests.Session()
    with open(log, "w") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=checkout, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    figures: dict[str, float] = {}
    try:
        deadline = t0 + UP_TIMEOUT_S
        while "first_200" not in figures or "state_file" not in figures:
            now = time.perf_counter()
            if proc.poll() is not None or now > deadline:
                raise SystemExit(f"statelab up ({checkout}) did not come up: see {log}")
            if "first_200" not in figures:
                try:
                    if session.get(url, timeout=1.0).status_code == 200:
                        figures["first_200"] = time.perf_counter() - t0
                except requests.RequestException:
                    pass
            if "state_file" not in figures and state.exists():
                figures["state_file"] = time.perf_counter() - t0
            time.sleep(POLL_INTERVAL_S)
        session.close()  # an idle keep-alive connection would hold the balancer's drain
        t_stop = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
        figures["stop"] = time.perf_counter() - t_stop
    finally:
        session.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return figures


def time_run(checkout: Path, tmp: Path, name: str, keep: Path | None = None, column: str = "") -> dict[str, object]:
    """Run `statelab run NAME --quick` once; return its wall, per-scenario walls and outcomes."""
    journal = (keep or tmp) / f"{column}-{name}-{time.strftime('%H%M%S')}.json"
    journal.parent.mkdir(parents=True, exist_ok=True)
    argv = [python_of(checkout), "-m", "statelab", "run", name, "--quick", "--json", str(journal),
            "--run-dir", str(tmp / f"runs-{time.monotonic_ns()}")]
    t0 = time.perf_counter()
    done = subprocess.run(argv, cwd=checkout, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=900)
    wall = time.perf_counter() - t0
    if not journal.exists():
        raise SystemExit(f"statelab run {name} ({checkout}) wrote no journal:\n{done.stdout[-3000:]}")
    doc = json.loads(journal.read_text())
    outcomes = {f"{r['scenario']}/{r['app']}" + (f"-{r['variant']}" if r["variant"] else ""):
                r["outcome"] + ("" if r["matched"] else " (DEVIATED)") for r in doc["results"]}
    return {"wall": wall, "scenarios": dict(doc.get("scenario_wall_s", {})), "outcomes": outcomes,
            "exit": done.returncode}


def timeline(app: str, instances: int) -> None:
    """Start one lab in this process and print where its start went, step by step (Lab.timeline)."""
    import threading

    from statelab.procs import free_port as lab_port
    from statelab.topology import Lab, LabSpec

    port = lab_port()
    first: list[float] = []
    done = threading.Event()

    def poll() -> None:
        with requests.Session() as s:
            while not done.is_set() and not first:
                try:
                    if s.get(f"http://127.0.0.1:{port}/products/1", timeout=1.0).status_code == 200:
                        first.append(time.perf_counter() - t0)
                except requests.RequestException:
                    time.sleep(POLL_INTERVAL_S)

    with tempfile.TemporaryDirectory(prefix="statelab-bench-timeline-") as tmp:
        lab = Lab(LabSpec(app=app, instances=instances, port=port, run_dir=Path(tmp) / "lab"))
        t0 = time.perf_counter()
        threading.Thread(target=poll, daemon=True).start()
        try:
            lab.start()
            returned = time.perf_counter() - t0
            deadline = time.monotonic() + 5
            while not first and time.monotonic() < deadline:
                time.sleep(POLL_INTERVAL_S)
        finally:
            done.set()
            t_stop = time.perf_counter()
            lab.stop()
    print(f"\nLab.start of {instances} {app} instances, step by step (seconds since start)")
    for t, what in lab.timeline:
        print(f"  {t:6.3f}  {what}")
    print(f"  {returned:6.3f}  start returned; first 200 through the balancer at "
          f"{first[0] if first else float('nan'):.3f}; stop took {time.perf_counter() - t_stop:.3f}")


def spread(values: list[float]) -> str:
    if not values:
        return f"{'-':>8}{'-':>8}{'-':>8}"
    return f"{statistics.median(values):8.2f}{min(values):8.2f}{max(values):8.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, help="checkout measured as 'before' (with its own .venv)")
    parser.add_argument("--after", type=Path, default=Path("."), help="checkout measured as 'after' (default: .)")
    parser.add_argument("--up", type=int, default=5, help="runs of `statelab up` per column (0: skip)")
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--run", action="append", default=[], help="time `statelab run NAME --quick` (repeatable)")
    parser.add_argument("--runs", type=int, default=1, help="runs of each `statelab run` per column")
    parser.add_argument("--journals", type=Path, help="keep each run's JSON journal in this directory")
    parser.add_argument("--timeline", action="store_true",
                        help="first, start one lab in this process (this checkout) and print its start's timeline")
    args = parser.parse_args()
    columns = [("before", args.before.resolve())] if args.before else []
    columns.append(("after", args.after.resolve()))
    print(f"load average at start: {Path('/proc/loadavg').read_text().strip()}")
    if args.timeline:
        timeline("stateless", args.instances)
    with tempfile.TemporaryDirectory(prefix="statelab-bench-start-") as tmp_name:
        tmp = Path(tmp_name)
        if args.up:
            ups: dict[str, list[dict[str, float]]] = {name: [] for name, _ in columns}
            for _, checkout in columns:  # not counted: builds the database template a first start may need
                time_up(checkout, tmp, args.instances)
            for _ in range(args.up):
                for name, checkout in columns:  # alternate: both columns see the same noise
                    ups[name].append(time_up(checkout, tmp, args.instances))
            print(f"\nstatelab up --app stateless --instances {args.instances}: seconds from spawn, "
                  f"{args.up} runs per column")
            print(f"{'':22}{'median':>8}{'min':>8}{'max':>8}")
            for name, _ in columns:
                for key, label in (("first_200", "first 200"), ("state_file", "state file"), ("stop", "stop (Ctrl-C)")):
                    print(f"{name + ' ' + label:22}{spread([r[key] for r in ups[name]])}")
        for scenario in args.run:
            runs: dict[str, list[dict[str, object]]] = {name: [] for name, _ in columns}
            for _ in range(args.runs):
                for name, checkout in columns:
                    runs[name].append(time_run(checkout, tmp, scenario, args.journals, name))
            print(f"\nstatelab run {scenario} --quick: wall seconds, {args.runs} runs per column")
            print(f"{'':34}{'median':>8}{'min':>8}{'max':>8}")
            for name, _ in columns:
                print(f"{name + ' total':34}{spread([float(r['wall']) for r in runs[name]])}")  # type: ignore[arg-type]
                first = runs[name][0]["scenarios"]
                assert isinstance(first, dict)
                for sc in first:
                    vals = [float(r["scenarios"][sc]) for r in runs[name]]  # type: ignore[index]
                    print(f"{'  ' + name + ' ' + sc:34}{spread(vals)}")
                for r in runs[name]:
                    outcomes = r["outcomes"]
                    assert isinstance(outcomes, dict)
                    print(f"  {name} exit {r['exit']}: " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
    print(f"\nload average at end: {Path('/proc/loadavg').read_text().strip()}")
    print("targets: up first 200 <= 2.5 s; run all --quick <= 45 s; each costs scenario (quick) <= 12 s")


if __name__ == "__main__":
    main()
