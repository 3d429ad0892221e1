"""Benchmark statelab's balancer against HAProxy on the same backends, side by side (prints, never asserts).

Mode (b), the default, is balancer-bound: trivial backends (nginx `return 200`, or a tiny asyncio
server without nginx) and the load generator share one core, the balancer under test has the
other one to itself. Mode (a) (`--backend URL`, repeatable) puts the balancers in front of real
app instances instead. Load comes from wrk when installed, else a built-in closed-loop client.

    python bench/bench_balancer.py                      # ~50 s
    python bench/bench_balancer.py --duration 3 --rounds 1 --profile
    python bench/bench_balancer.py --calls --no-haproxy --rounds 1   # also count calls per request
    python bench/bench_balancer.py --backend http://127.0.0.1:8001 --backend http://127.0.0.1:8002 --path /healthz
    python bench/bench_balancer.py --backend URL1 --backend URL2 --connections 8 --path /cart --login user0001
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import pstats
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from statelab.balancer.options import BalancerOptions
from statelab.balancer.server import Balancer
from statelab.engines.haproxy import render_config
from statelab.procs import ManagedProcess, free_port, http_probe, tcp_probe
from statelab.seed import SEED_PASSWORD

TINY_BACKEND = r'''
import asyncio, sys
R = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n"
class P(asyncio.Protocol):
    def connection_made(self, t): self.t = t
    def data_received(self, d): self.t.write(R * d.count(b"\r\n\r\n"))
async def main():
    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(P, "127.0.0.1", int(p)) for p in sys.argv[1:]]
    await asyncio.gather(*(s.serve_forever() for s in servers))
try:
    import uvloop; uvloop.run(main())
except ImportError:
    asyncio.run(main())
'''


@dataclass(frozen=True)
class Result:
    target: str
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int
    cpu_us_per_req: float | None = None
    lb_util: float | None = None  # share of its core the balancer used: near 1.0 means balancer-bound


def pinned(argv: list[str], cpu: int | None) -> list[str]:
    """Prefix argv with taskset so the child runs on one core (if there is more than one)."""
    if cpu is None or shutil.which("taskset") is None:
        return argv
    return ["taskset", "-c", str(cpu), *argv]


def cpu_seconds(pid: int | None) -> float:
    """Return user+system CPU time of a process so far (0.0 if unknown)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def measure(url: str, pid: int | None, duration_s: float, connections: int, cpu: int | None) -> Result:
    """Run the load once; also charge the balancer's CPU time per request (robust to a busy machine)."""
    c0, t0 = cpu_seconds(pid), time.monotonic()
    r = run_load(url, duration_s, connections, cpu)
    if pid is None or not r.requests:
        return r
    used, elapsed = cpu_seconds(pid) - c0, time.monotonic() - t0
    return Result(r.target, r.rps, r.p50_ms, r.p99_ms, r.errors, r.requests, used * 1e6 / r.requests, used / elapsed)


def start(stack: ExitStack, name: str, argv: list[str], run_dir: Path, probe: object) -> ManagedProcess:
    proc = ManagedProcess(name, argv, run_dir / f"{name}.log", probe=probe)  # type: ignore[arg-type]
    stack.callback(proc.stop)
    return proc.start().wait_ready(20)


def start_backends(stack: ExitStack, run_dir: Path, cpu: int | None, n: int = 2) -> tuple[str, list[str]]:
    """Start n trivial backends; return (kind, [host:port])."""
    ports = [free_port() for _ in range(n)]
    nginx = shutil.which("nginx")
    if nginx:
        servers = "\n".join(f'  server {{ listen 127.0.0.1:{p}; location / {{ return 200 "ok\\n"; }} }}' for p in ports)
        conf = run_dir / "nginx.conf"
        conf.write_text(f"""worker_processes 1;
daemon off;
pid {run_dir}/nginx.pid;
error_log {run_dir}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
{servers}
}}
""")
        start(stack, "nginx", pinned([nginx, "-c", str(conf), "-p", str(run_dir)], cpu), run_dir,
              tcp_probe("127.0.0.1", ports[-1]))
        kind = "nginx return 200"
    else:
        start(stack, "tiny-backend", pinned([sys.executable, "-c", TINY_BACKEND, *map(str, ports)], cpu), run_dir,
              tcp_probe("127.0.0.1", ports[-1]))
        kind = "asyncio tiny server"
    return kind, [f"127.0.0.1:{p}" for p in ports]


def start_builtin(stack: ExitStack, run_dir: Path, backends: list[str], cpu: int | None, uvloop: bool,
                  profile: Path | None = None) -> tuple[str, int | None]:
    port, admin = free_port(), free_port()
    argv = [sys.executable]
    if profile is not None:
        argv += ["-m", "cProfile", "-o", str(profile)]
    argv += ["-m", "statelab", "lb", "--port", str(port), "--admin-port", str(admin), "--policy", "round-robin"]
    for i, addr in enumerate(backends, 1):
        argv += ["--backend", f"app-{i}={addr}"]
    if not uvloop:
        argv.append("--no-uvloop")
    name = f"builtin-{'uvloop' if uvloop else 'asyncio'}{'-profiled' if profile else ''}"
    proc = start(stack, name, pinned(argv, cpu), run_dir,
                 http_probe(f"http://127.0.0.1:{admin}/healthz", lambda s: s == 200))
    return f"http://127.0.0.1:{port}/", proc.pid


def start_haproxy(stack: ExitStack, run_dir: Path, backends: list[str], cpu: int | None
                  ) -> tuple[str, int | None] | None:
    binary = shutil.which("haproxy")
    if binary is None:
        print("haproxy not installed (apt-get install haproxy): skipping it")
        return None
    port = free_port()
    cfg = run_dir / "haproxy.cfg"
    cfg.write_text(render_config(bind=f"127.0.0.1:{port}", backends=[(f"app-{i}", a) for i, a in enumerate(backends, 1)],
                                 policy="round-robin", stats_socket=str(run_dir / "haproxy.sock")))
    proc = start(stack, "haproxy", pinned([binary, "-db", "-f", str(cfg)], cpu), run_dir, tcp_probe("127.0.0.1", port))
    return f"http://127.0.0.1:{port}/", proc.pid


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}
EXTRA_HEADERS: list[str] = []  # e.g. a session cookie, sent with every request (--login)


def run_wrk(url: str, duration_s: float, connections: int, cpu: int | None) -> Result:
    headers = [arg for h in EXTRA_HEADERS for arg in ("-H", h)]
    out = subprocess.run(pinned(["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration_s))}s", "--latency",
                                 *headers, url], cpu), capture_output=True, text=True, timeout=duration_s + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = {q: float(v) * _UNITS[u] for q, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)}
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    e = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(m.group(1)) if m else 0) + (sum(map(int, e.groups())) if e else 0)
    total = re.search(r"(\d+) requests in", out)
    return Result("", rps, lat.get("50", 0.0), lat.get("99", 0.0), errors, int(total.group(1)) if total else 0)


async def _closed_loop(url: str, duration_s: float, connections: int) -> Result:
    """A keep-alive closed-loop client: each connection sends the next request when the last one ends."""
    u = urlsplit(url)
    extra = "".join(h + "\r\n" for h in EXTRA_HEADERS)
    req = f"GET {u.path or '/'} HTTP/1.1\r\nHost: {u.netloc}\r\n{extra}\r\n".encode()
    lat: list[float] = []
    errors = 0
    deadline = time.monotonic() + duration_s

    async def one() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(u.hostname, u.port)
        try:
            while time.monotonic() < deadline:
                t0 = time.perf_counter()
                writer.write(req)
                head = await reader.readuntil(b"\r\n\r\n")
                n = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
                await reader.readexactly(n)
                lat.append((time.perf_counter() - t0) * 1000)
                if not head.startswith(b"HTTP/1.1 2"):
                    errors += 1
        finally:
            writer.close()

    t0 = time.monotonic()
    await asyncio.gather(*(one() for _ in range(connections)))
    elapsed = time.monotonic() - t0
    lat.sort()
    return Result("", len(lat) / elapsed, lat[len(lat) // 2], lat[int(len(lat) * 0.99)], errors, len(lat))


def run_load(url: str, duration_s: float, connections: int, cpu: int | None) -> Result:
    if shutil.which("wrk"):
        return run_wrk(url, duration_s, connections, cpu)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    return asyncio.run(_closed_loop(url, duration_s, connections))


def print_profile(path: Path, top: int = 18) -> None:
    print(f"\n--- cProfile of the builtin balancer (top {top} by own time) ---")
    stats = pstats.Stats(str(path))
    stats.sort_stats("tottime").print_stats(top)


def count_calls(backends: list[str], n: int = 2000) -> tuple[float, float]:
    """Count the calls the balancer makes per keep-alive GET: (all calls, Python functions among them).

    Deterministic where req/s on a shared machine is not: the balancer runs in a thread of this
    process under sys.setprofile, a blocking client sends n sequential GETs over one connection.
    Counts Python functions and builtins; methods of Cython types (llhttp, uvloop) are not seen.
    """
    import uvloop

    port = free_port()
    opts = BalancerOptions(port=port, backends=tuple((f"app-{i}", a) for i, a in enumerate(backends, 1)),
                           policy="round-robin", admin_port=None, health_interval_s=60.0)
    counts: collections.Counter[str] = collections.Counter()
    counting, ready = threading.Event(), threading.Event()

    def profile(frame: object, event: str, arg: object) -> None:
        if counting.is_set() and event in ("call", "c_call"):
            counts[event] += 1

    loop = uvloop.new_event_loop()

    def serve() -> None:
        bal = Balancer(opts)
        loop.run_until_complete(bal.start())
        ready.set()
        sys.setprofile(profile)
        loop.run_forever()
        sys.setprofile(None)
        loop.run_until_complete(bal.shutdown())
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ready.wait(10)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        def get() -> None:
            s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: bench\r\n\r\n")
            got = b""
            while b"\r\n\r\n" not in got or not got.endswith(b"\n"):
                got += s.recv(65536)

        for _ in range(100):
            get()
        counting.set()
        for _ in range(n):
            get()
        counting.clear()
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    return (counts["call"] + counts["c_call"]) / n, counts["call"] / n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=2.0, help="seconds per measurement (default 2)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians are reported (default 5)")
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--backend", action="append", default=[], metavar="URL",
                    help="mode (a): balance over these app instances instead of trivial backends")
    ap.add_argument("--path", default="/", help="request path (mode (a): e.g. /healthz, or /cart with --login)")
    ap.add_argument("--login", metavar="USER", help=f"mode (a): log USER in (password {SEED_PASSWORD}) on the first "
                    "backend and send its session cookie with every request (a session-backed route needs "
                    "the stateless app, whose sessions every instance can read)")
    ap.add_argument("--no-haproxy", action="store_true")
    ap.add_argument("--profile", action="store_true", help="also run the builtin balancer under cProfile")
    ap.add_argument("--calls", action="store_true", help="also count the builtin balancer's calls per request")
    args = ap.parse_args()
    if args.login:
        if not args.backend:
            ap.error("--login needs --backend (mode (a): real app instances)")
        import requests

        resp = requests.post(args.backend[0].rstrip("/") + "/login", json={"username": args.login,
                             "password": SEED_PASSWORD}, timeout=5)
        resp.raise_for_status()
        EXTRA_HEADERS.append(f"Cookie: lab_session={resp.cookies['lab_session']}")

    cpus = sorted(os.sched_getaffinity(0))
    lb_cpu, load_cpu = (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)
    load = "wrk" if shutil.which("wrk") else "built-in closed-loop client"
    with ExitStack() as stack:
        run_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-lb-")))
        if args.backend:
            backends = [urlsplit(u).netloc for u in args.backend]
            kind = "given app instances"
        else:
            kind, backends = start_backends(stack, run_dir, load_cpu)
        targets: dict[str, tuple[str, int | None]] = {"direct": (f"http://{backends[0]}/", None)}
        targets["statelab (uvloop)"] = start_builtin(stack, run_dir, backends, lb_cpu, uvloop=True)
        targets["statelab (asyncio)"] = start_builtin(stack, run_dir, backends, lb_cpu, uvloop=False)
        if not args.no_haproxy:
            hap = start_haproxy(stack, run_dir, backends, lb_cpu)
            if hap:
                targets["haproxy"] = hap
        targets = {name: (url.rstrip("/") + args.path, pid) for name, (url, pid) in targets.items()}
        print(f"path: {args.path}{' with a session cookie' if EXTRA_HEADERS else ''}")
        print(f"backends: {len(backends)} x {kind}; load: {load}, {args.connections} connections, "
              f"{args.duration:g} s x {args.rounds} rounds; balancer on cpu {lb_cpu}, load+backends on cpu {load_cpu}")
        for url, _ in targets.values():  # warm up every path (connections, pools, caches)
            run_load(url, 1.0, args.connections, load_cpu)
        runs: dict[str, list[Result]] = {t: [] for t in targets}
        for _ in range(args.rounds):  # interleaved, so a busy moment hits every target alike
            for name, (url, pid) in targets.items():
                runs[name].append(measure(url, pid, args.duration, args.connections, load_cpu))
        print(f"\n{'target':<20} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} {'cpu us/req':>10} "
              f"{'lb util':>7}   runs (req/s)")
        med: dict[str, float] = {}
        cpu: dict[str, float] = {}
        for name, rs in runs.items():
            med[name] = statistics.median(r.rps for r in rs)
            mid = sorted(rs, key=lambda r: r.rps)[len(rs) // 2]
            costs = [r.cpu_us_per_req for r in rs if r.cpu_us_per_req]
            cpu_text = "-"
            util = "-" if mid.lb_util is None else f"{mid.lb_util:.2f}"
            if costs:
                cpu[name] = statistics.median(costs)
                cpu_text = f"{cpu[name]:.1f}"
            print(f"{name:<20} {med[name]:>9.0f} {mid.p50_ms:>7.2f} {mid.p99_ms:>7.2f} {sum(r.errors for r in rs):>6} "
                  f"{cpu_text:>10} {util:>7}   " + " ".join(f"{r.rps:.0f}" for r in rs))
        if "haproxy" in med:
            print("\nratios to haproxy (throughput: median req/s; efficiency: haproxy cpu/req over ours, which is\n"
                  "the balancer-bound figure when 'lb util' is below 1.0, i.e. the load side or a busy machine limits)")
            for name in ("statelab (uvloop)", "statelab (asyncio)"):
                eff = f"{cpu['haproxy'] / cpu[name]:.2f}x" if name in cpu and "haproxy" in cpu else "-"
                print(f"  {name:<20} throughput {med[name] / med['haproxy']:.2f}x   efficiency {eff}")
        if args.calls:
            calls, functions = count_calls(backends)
            print(f"\ncalls per keep-alive GET in the builtin balancer: {calls:.1f} ({functions:.1f} of them Python "
                  f"functions; sys.setprofile, llhttp and uvloop methods not seen)")
        if args.profile:
            prof = run_dir / "builtin.prof"
            with ExitStack() as pstack:
                url, _ = start_builtin(pstack, run_dir, backends, lb_cpu, uvloop=True, profile=prof)
                r = run_load(url, args.duration, args.connections, load_cpu)
                print(f"\nprofiled run: {r.rps:.0f} req/s (cProfile overhead included)")
            print_profile(prof)
    return 0


if __name__ == "__main__":
    sys.exit(main())
