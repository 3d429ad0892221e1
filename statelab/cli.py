"""The `statelab` command: the only argv parser. Each subcommand is a thin call into the runtime.

Exit codes: 0 success; 1 a scenario deviated from its expectation; 2 an error (bad input, a
server that would not start, a lab that is not running): the message says what to do next.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence
from urllib.parse import urlsplit, urlunsplit

from statelab.balancer.policies import POLICY_NAMES
from statelab.check.options import DEFAULT_INSTANCES, DEFAULT_RUN_TIME_S, DEFAULT_START_TIMEOUT_S, DEFAULT_USERS
from statelab.config import APP_KINDS, default_run_root
from statelab.engines import ENGINE_NAMES
from statelab.errors import ConfigError, LabError
from statelab.loopback import LOOPBACK_HOST
from statelab.scenario import EXIT_DEVIATED, EXIT_ERROR, EXIT_OK
from statelab.seed import SEED_PRODUCTS, SEED_USERS

POLICY_HELP = ", ".join(POLICY_NAMES[:-1]) + f" or {POLICY_NAMES[-1]}"


log = logging.getLogger("statelab")


def _default_run_dir(label: str) -> Path:
    return default_run_root() / f"{time.strftime('%Y%m%d-%H%M%S')}-{label}"


def _port(text: str) -> int:
    """An argparse type: a TCP port, 0-65535 (0: pick a free one)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port: use 1-65535, or 0 for a free one")
    return port


def _positive(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is too small: at least 1")
    return value


def _add_state_file(p: argparse.ArgumentParser) -> None:
    from statelab.control import DEFAULT_STATE_FILE

    p.add_argument("--state-file", type=Path, default=DEFAULT_STATE_FILE,
                   help=f"state file of the running lab (default: {DEFAULT_STATE_FILE})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="statelab",
        description="Replay production disasters against a stateful and a stateless app, and measure what users lose.",
        epilog="Start here: `statelab list`, then `statelab run all --quick`. "
               "Run a lab by hand with `statelab up --app stateful` and break it from another shell.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the runtime does")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("list", help="list the scenarios, one line each")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("run", help="run a scenario (or all) against both apps and report what users lost",
                       description="Run scenarios against real processes. Exit 0 if every result matched its "
                                   "expectation, 1 if any deviated, 2 on errors.")
    p.add_argument("scenario", help="a scenario name from `statelab list`, or `all`")
    p.add_argument("--app", choices=(*APP_KINDS, "both"), default="both")
    p.add_argument("--quick", action="store_true", help="smaller, faster profile (the whole set in about a minute)")
    p.add_argument("--seed", type=int, default=1, help="seed for the simulated users (default: 1)")
    p.add_argument("--users", type=_positive, default=None, help="override the number of simulated users")
    p.add_argument("--lb", choices=ENGINE_NAMES, default="builtin", help="balancer engine")
    p.add_argument("--json", type=Path, dest="json_path", help="write the JSON journal here")
    p.add_argument("--junit", type=Path, help="write JUnit XML here (one case per scenario x app)")
    p.add_argument("--html", type=Path, help="write a self-contained HTML report with charts here")
    p.add_argument("--run-dir", type=Path, help="where logs and data go (default: .statelab/runs/...)")
    p.add_argument("--target", help="run against an already-running deployment: its balancer URL")
    p.add_argument("--target-admin", help="with --target: the balancer's admin URL or HAProxy socket")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("up", help="start a whole lab and keep it up until Ctrl-C",
                       description="Start PostgreSQL (+ Redis and S3 for the stateless app), seed, start N "
                                   "instances and a balancer, print what runs where, and stay up until Ctrl-C.")
    p.add_argument("--app", choices=APP_KINDS, required=True)
    p.add_argument("--instances", type=_positive, default=3, help="number of app instances (default: 3)")
    p.add_argument("--policy", default="round-robin", help=f"balancing policy: {POLICY_HELP}")
    p.add_argument("--lb", choices=ENGINE_NAMES, default="builtin", help="balancer engine")
    p.add_argument("--port", type=_port, default=8000, help="balancer port (default: 8000; 0 picks a free one)")
    p.add_argument("--auth-mode", choices=("session", "jwt"), default="session", help="stateless app only")
    p.add_argument("--threads", type=_positive, default=8, help="gunicorn threads per instance (default: 8)")
    p.add_argument("--no-restart", action="store_true", help="do not restart crashed instances")
    p.add_argument("--no-dashboard", action="store_true", help="do not serve the live dashboard")
    p.add_argument("--run-dir", type=Path)
    _add_state_file(p)
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("deploy", help="rolling restart of a running lab, one instance at a time")
    p.add_argument("--batch", type=int, default=1, help="instances restarted together (default: 1)")
    p.add_argument("--no-drain", action="store_true", help="restart without draining, as a naive deploy script would")
    _add_state_file(p)
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser("kill", help="send a signal to one instance of a running lab")
    p.add_argument("id", help="instance id, e.g. app-2")
    p.add_argument("--signal", default="TERM", choices=("TERM", "KILL", "INT", "STOP", "CONT"))
    _add_state_file(p)
    p.set_defaults(func=cmd_kill)

    p = sub.add_parser("scale", help="start or stop instances of a running lab")
    p.add_argument("count", type=int)
    _add_state_file(p)
    p.set_defaults(func=cmd_scale)

    p = sub.add_parser("policy", help="switch the balancing policy of a running lab")
    p.add_argument("name", help=POLICY_HELP)
    _add_state_file(p)
    p.set_defaults(func=cmd_policy)

    p = sub.add_parser("status", help="show what a running lab is doing")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_state_file(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("lb", help="run only the load balancer in front of any HTTP backends")
    p.add_argument("--port", type=_port, required=True)
    p.add_argument("--backend", action="append", default=[], metavar="[ID=]HOST:PORT",
                   help="a backend; repeat for more (none: add them through the admin API)")
    p.add_argument("--policy", default="round-robin", help=POLICY_HELP)
    p.add_argument("--admin-port", type=_port, help="serve the JSON admin API on this loopback port")
    p.add_argument("--health-interval", type=float, default=1.0, help="seconds between health checks")
    p.add_argument("--health-path", default="/healthz", help="the path health checks GET (e.g. /readyz)")
    p.add_argument("--trust-forwarded-for", action="store_true", help="ip-hash on X-Forwarded-For")
    p.add_argument("--no-uvloop", action="store_true", help="use plain asyncio")
    p.set_defaults(func=cmd_lb)

    p = sub.add_parser("seed", help="create the schema and seed data in a PostgreSQL database (compose uses it)")
    p.add_argument("--database-url", required=True)
    p.add_argument("--users", type=int, default=SEED_USERS)
    p.add_argument("--products", type=int, default=SEED_PRODUCTS)
    p.set_defaults(func=cmd_seed)

    p = sub.add_parser("load", help="drive load with Locust against a running lab (web UI on 127.0.0.1:8089)")
    p.add_argument("--users", type=int, default=50)
    p.add_argument("--spawn-rate", type=float, default=10)
    p.add_argument("--web", action="store_true", help="open the Locust web UI instead of running headless")
    p.add_argument("--run-time", default="30s", help="headless run time (default: 30s)")
    p.add_argument("--users-per-address", type=int, default=1, help="users sharing one source address (NAT)")
    p.add_argument("--shape", choices=("warm-up", "steady", "spike", "phases"),
                   help="a load shape instead of a flat --users (loadtests/shapes.py)")
    p.add_argument("--host", help="target URL (default: the running lab's balancer)")
    _add_state_file(p)
    p.set_defaults(func=cmd_load)

    p = sub.add_parser("lint", help="find the state anti-patterns of the scenarios in deployment files",
                       description="Read Kubernetes manifests, compose files and HAProxy configs and report what "
                                   "the lab's scenarios show breaking: per-replica disks, client-IP affinity, "
                                   "sticky cookies with an autoscaler, missing readiness checks, preStop pauses "
                                   "that use up the grace period, rollouts that take half the replicas, "
                                   "PodDisruptionBudgets relied on for rollouts. Exit 0 when clean, 1 when a "
                                   "finding reaches --fail-on, 2 when an input cannot be read.")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="a file, a directory (each kustomization in it is rendered with kustomize or kubectl), "
                        "or - for standard input")
    p.add_argument("--format", choices=("text", "json", "sarif"), default="text", dest="output_format")
    p.add_argument("--fail-on", choices=("warning", "error"), default="warning",
                   help="exit 1 when a finding is at least this bad (default: warning)")
    p.set_defaults(func=cmd_lint)

    p = sub.add_parser("clean", help="delete old run directories (logs and data of past runs and labs)",
                       description="Delete the run directories under the run root (LAB_RUN_ROOT, default "
                                   ".statelab/runs), newest N kept; never the running lab's, never one a process "
                                   "still uses, never anything outside the run root.")
    p.add_argument("--keep", type=int, default=0, metavar="N", help="keep the N newest run directories (default: 0)")
    p.add_argument("--dry-run", action="store_true", help="only say what would go and how many MB")
    _add_state_file(p)
    p.set_defaults(func=cmd_clean)

    p = sub.add_parser("faults", help="run a fault proxy (latency, bandwidth, resets, down) in front of TCP services",
                       description="A user-space TCP fault proxy with Toxiproxy's vocabulary and routes: add "
                                   "toxics with its JSON API (e.g. curl -d '{\"type\":\"latency\",\"attributes\":"
                                   "{\"latency\":50}}' API/proxies/NAME/toxics) while traffic flows.")
    p.add_argument("--api-port", type=int, default=0, help="loopback port of the JSON API (default: a free one)")
    p.add_argument("--proxy", action="append", default=[], metavar="NAME=LISTEN=UPSTREAM",
                   help="a proxy to create at start, e.g. s3=127.0.0.1:18333=127.0.0.1:8333; repeat for more")
    p.add_argument("--no-uvloop", action="store_true", help="use plain asyncio")
    p.set_defaults(func=cmd_faults)

    p = sub.add_parser("check", help="check whether YOUR service keeps its users' state when it scales out",
                       description="Run your app as several instances behind a balancer, each with its own disk, "
                                   "with Redis, PostgreSQL and S3 started for it; run your Locust journey through a "
                                   "pinned baseline, round-robin, a rolling deploy, a SIGKILL and a scale-out from 2 "
                                   "to 4; compare the failures your journey marks with the baseline; list what each "
                                   "instance wrote to its local disk. Exit 0 when no check found lost state, 1 when "
                                   "some did, 2 when the check could not run. See docs/check.md.",
                       epilog="Start with `statelab check --init-journey journey.py`.")
    p.add_argument("app", nargs="?", metavar="APP",
                   help="your app as gunicorn takes it (module:app, module:create_app()), importable from here")
    p.add_argument("--cmd", help="start each instance with this command instead (any language); {port} is replaced "
                                 "by its port, also given as $PORT")
    p.add_argument("--journey", type=Path, metavar="LOCUSTFILE", help="a Locust file: one user of your app, marking "
                   "lost state with catch_response and r.failure(\"...\")")
    p.add_argument("--init-journey", type=Path, metavar="FILE", help="write a commented example journey to FILE")
    p.add_argument("--instances", type=int, default=DEFAULT_INSTANCES,
                   help=f"instances behind the balancer (default: {DEFAULT_INSTANCES})")
    p.add_argument("--users", type=int, default=DEFAULT_USERS, help=f"simulated users (default: {DEFAULT_USERS})")
    p.add_argument("--run-time", default=f"{DEFAULT_RUN_TIME_S:g}", metavar="S",
                   help=f"seconds of traffic per phase (default: {DEFAULT_RUN_TIME_S:g})")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="also set this for every instance; repeat for more")
    p.add_argument("--ready-path", metavar="PATH", help="an instance is ready when PATH answers 2xx/3xx "
                                                        "(default: when its port answers HTTP at all)")
    p.add_argument("--start-timeout", type=float, default=DEFAULT_START_TIMEOUT_S, metavar="S",
                   help=f"seconds an instance may take to become ready (default: {DEFAULT_START_TIMEOUT_S:g})")
    p.add_argument("--json", type=Path, dest="json_path", help="write the report as JSON here")
    p.add_argument("--junit", type=Path, help="write JUnit XML here (one test case per check)")
    p.add_argument("--html", type=Path, help="write a self-contained HTML report here")
    p.add_argument("--run-dir", type=Path, help="where logs go (default: .statelab/runs/...)")
    p.set_defaults(func=cmd_check)
    return parser


# --- subcommands ------------------------------------------------------------------------------

def cmd_list(args: argparse.Namespace) -> int:
    from scenarios import REGISTRY
    from statelab.report import scenarios as report

    report.scenario_list(REGISTRY)
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from statelab.runner import RunOptions, find_scenarios, run_from_cli

    find_scenarios(args.scenario)  # an unknown name fails here, before anything is created
    if args.target:
        _check_target(args.target)
    for flag, path in (("--json", args.json_path), ("--junit", args.junit), ("--html", args.html)):
        _check_writable(flag, path)
    run_dir = _make_run_dir(args.run_dir or _default_run_dir(f"run-{args.scenario}"))
    opts = RunOptions(scenario=args.scenario, app=args.app, quick=args.quick, seed=args.seed, users=args.users,
                      lb=args.lb, json_path=args.json_path, junit_path=args.junit, html_path=args.html,
                      run_dir=run_dir, target=args.target, target_admin=args.target_admin)
    return run_from_cli(opts)


def _make_run_dir(path: Path) -> Path:
    """Create a run directory, or fail with a message naming the flag that picks another."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the run directory {path}: {exc.strerror or exc}; "
                          "pick another with --run-dir (or set LAB_RUN_ROOT)") from None
    if not os.access(path, os.W_OK):
        raise ConfigError(f"cannot write to the run directory {path}: pick another with --run-dir") from None
    return path


def _check_writable(flag: str, path: Path | None) -> None:
    """Fail before a run starts when its report could not be written at the end."""
    if path is None:
        return
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot write {flag} {path}: {exc.strerror or exc} ({parent})") from None
    if path.is_dir() or not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(f"cannot write {flag} {path}: "
                          + ("it is a directory" if path.is_dir() else "permission denied")) from None


def _check_target(url: str) -> None:
    """Fail early unless --target is an http(s)://HOST:PORT URL.

    One that does not answer is left to the run: its cases end as `error` results in the journal,
    each saying the users got no answer (what CI reads).
    """
    parts = urlsplit(url)
    try:
        port_ok = parts.port is not None or parts.scheme in ("http", "https")
    except ValueError:
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise ConfigError(f"--target must be the balancer's URL, like http://127.0.0.1:8000, not {url!r}")


def _port_busy(port: int, host: str = LOOPBACK_HOST) -> bool:
    """Return whether binding host:port fails (something listens there), as a server would bind it."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def _check_port(port: int, what: str) -> None:
    """Fail before anything starts when a fixed port is taken, and name the way out."""
    if port and _port_busy(port):
        raise ConfigError(f"port {port} is busy: something already listens on {LOOPBACK_HOST}:{port} (another lab?). "
                          f"Start {what} on another port with `--port {port + 1 if port < 65535 else 8000}`, or on a "
                          "free one with `--port 0`. Nothing was started.")


def cmd_up(args: argparse.Namespace) -> int:
    from statelab.control import ControlServer, write_state_file
    from statelab.report import lab as report
    from statelab.topology import Lab, LabSpec

    if TYPE_CHECKING:
        from statelab.dashboard import Dashboard

    spec = LabSpec(app=args.app, instances=args.instances, policy=args.policy, lb=args.lb,
                   port=args.port or None, run_dir=args.run_dir or _default_run_dir(f"up-{args.app}"),
                   auth_mode=args.auth_mode, threads=args.threads, restart_crashed=not args.no_restart)
    spec.validate()
    _check_port(args.port, "the lab")
    _make_run_dir(spec.run_dir)
    stop = threading.Event()
    _on_signals(lambda: stop.set())
    lab = Lab(spec)
    control: ControlServer | None = None
    dashboard: Dashboard | None = None
    try:
        lab.start(progress=report.progress)
        control = ControlServer(lab).start()
        dashboard_url = None
        if not args.no_dashboard:
            from statelab.dashboard import Dashboard  # here: importing it costs the lab's start a tenth of a second

            dashboard = Dashboard(lab, control.url).start()
            dashboard_url = dashboard.url
        write_state_file(args.state_file, lab, control.url, dashboard_url)
        status = lab.status().to_json()
        status.update(control_url=control.url, dashboard_url=dashboard_url)
        report.lab_table(status, str(args.state_file))
        report.line("Up. Break it from another shell: `statelab deploy`, `statelab kill app-1`, "
                    "`statelab scale 5`, `statelab policy ip-hash`. Ctrl-C stops everything.")
        while not stop.wait(1.0):
            write_state_file(args.state_file, lab, control.url, dashboard_url)
    finally:
        report.progress("stopping the lab")
        if dashboard:
            dashboard.stop()
        if control:
            control.stop()
        lab.stop()
        args.state_file.unlink(missing_ok=True)
    return EXIT_OK


def _control(args: argparse.Namespace, method: str, path: str, body: dict[str, object] | None = None) -> int:
    from statelab.control import ControlClient
    from statelab.report import lab as report

    status = ControlClient(args.state_file).call(method, path, body)
    report.lab_table(status)
    report.events(status)
    return EXIT_OK


def cmd_deploy(args: argparse.Namespace) -> int:
    from statelab.report import lab as report

    report.progress("rolling restart: drain, stop, start, wait until ready, put back, one batch at a time")
    return _control(args, "POST", "/deploy", {"batch": args.batch, "drain": not args.no_drain})


def cmd_kill(args: argparse.Namespace) -> int:
    return _control(args, "POST", "/kill", {"id": args.id, "signal": args.signal})


def cmd_scale(args: argparse.Namespace) -> int:
    return _control(args, "POST", "/scale", {"count": args.count})


def cmd_policy(args: argparse.Namespace) -> int:
    return _control(args, "POST", "/policy", {"policy": args.name})


def cmd_status(args: argparse.Namespace) -> int:
    from statelab.control import ControlClient
    from statelab.report import lab as report

    client = ControlClient(args.state_file)
    status = client.call("GET", "/status")
    # the lab knows its processes; where its control API and dashboard listen is in the state file
    status.update({k: client.state.get(k) for k in ("control_url", "dashboard_url")})
    if args.json:
        report.raw(json.dumps(status, indent=2))
    else:
        report.lab_table(status)
        report.events(status)
    return EXIT_OK


def cmd_lb(args: argparse.Namespace) -> int:
    from statelab.balancer.options import BalancerOptions
    from statelab.balancer.server import serve_forever

    backends = parse_backends(args.backend)
    if not backends and not args.admin_port:
        raise ConfigError("give at least one --backend ID=HOST:PORT, or --admin-port to add backends while it runs")
    if args.policy not in POLICY_NAMES:
        raise ConfigError(f"unknown policy {args.policy!r}: choose one of {', '.join(POLICY_NAMES)}")
    if args.health_interval <= 0:
        raise ConfigError("--health-interval must be above 0 seconds")
    if not args.health_path.startswith("/") or any(c.isspace() for c in args.health_path):
        raise ConfigError(f"--health-path must be a path such as /readyz, not {args.health_path!r}")
    _check_port(args.port, "the balancer")
    if args.admin_port:
        _check_port(args.admin_port, "the admin API")
    try:
        serve_forever(BalancerOptions(port=args.port, backends=tuple(backends), policy=args.policy,
                                      admin_port=args.admin_port, health_interval_s=args.health_interval,
                                      health_path=args.health_path, trust_forwarded_for=args.trust_forwarded_for,
                                      use_uvloop=not args.no_uvloop))
    except OSError as exc:  # a port taken between the check and the bind
        raise ConfigError(f"the balancer could not listen: {exc.strerror or exc}") from None
    except ValueError as exc:  # what the balancer itself refuses (its own checks)
        raise ConfigError(str(exc)) from None
    return EXIT_OK


def parse_backends(specs: Sequence[str]) -> list[tuple[str, str]]:
    """Read `--backend [ID=]HOST:PORT` values: (id, "host:port"); ConfigError naming the bad one."""
    backends: list[tuple[str, str]] = []
    for n, spec in enumerate(specs, 1):
        bid, sep, addr = spec.rpartition("=")
        if sep and not bid.strip():
            raise ConfigError(f"--backend {spec!r}: the id before '=' is empty; write ID=HOST:PORT or HOST:PORT")
        host, colon, port = addr.rpartition(":")
        if not colon or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ConfigError(f"--backend {spec!r}: expected [ID=]HOST:PORT with a port 1-65535, "
                              "e.g. app-1=127.0.0.1:9001")
        bid = bid.strip() or f"backend-{n}"
        if bid in {b for b, _ in backends}:
            raise ConfigError(f"--backend {spec!r}: the id {bid!r} is used twice; give each backend its own id")
        backends.append((bid, f"{host}:{int(port)}"))
    return backends


def cmd_seed(args: argparse.Namespace) -> int:
    from statelab import seed
    from statelab.report import lab as report

    import psycopg

    url = _masked(args.database_url)
    try:
        summary = seed.seed(args.database_url, users=args.users, products=args.products)
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot reach the database at {url}: {reason}. Is PostgreSQL running there, and are "
                          "the host, port, user and password right?") from None
    except psycopg.Error as exc:
        raise ConfigError(f"cannot seed {url}: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc}; "
                          "expected a URL like postgresql://USER:PASSWORD@HOST:5432/DBNAME") from None
    report.line(str(summary))
    return EXIT_OK


def _masked(url: str) -> str:
    """Return a database URL with its password hidden (it goes into an error message)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":****@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def cmd_load(args: argparse.Namespace) -> int:
    """Run Locust against the running lab (or --host): exit 0 if users saw no failure, 1 if they did."""
    from statelab import loadgen
    from statelab.report import lab as report

    if args.host:
        host, lab_run_dir = args.host, default_run_root()
    else:
        host, lab_run_dir = loadgen.lab_target(args.state_file)
    loadgen.check_answers(host)
    opts = loadgen.LoadOptions(host=host, run_dir=lab_run_dir / f"load-{time.strftime('%Y%m%d-%H%M%S')}",
                               users=args.users, spawn_rate=args.spawn_rate,
                               run_time=None if args.web else args.run_time, web=args.web,
                               users_per_address=args.users_per_address, shape=args.shape)
    report.progress(f"Locust against {host}: {opts.users} users, {opts.users_per_address} per source address "
                    f"(log: {opts.log_path})")
    proc = loadgen.start_locust(opts)
    try:
        if opts.web:
            report.line(f"Locust web UI: http://{loadgen.WEB_HOST}:{opts.web_port}  (press Start there; Ctrl-C "
                        "stops it). Break the lab from another shell: `statelab deploy`.")
        run = loadgen.finish(proc, opts)
    finally:
        proc.stop()
    if run.summary is not None:
        report.load_summary(run.summary, opts.csv_prefix)
    return run.code


def cmd_lint(args: argparse.Namespace) -> int:
    from statelab.lint import lint_paths
    from statelab.report import lint as report

    result = lint_paths(args.paths)
    report.show(result, args.output_format)
    return EXIT_DEVIATED if result.reaches(args.fail_on) else EXIT_OK


def cmd_clean(args: argparse.Namespace) -> int:
    """Delete old run directories, newest --keep kept, never one in use; --dry-run only says what would go."""
    from statelab import runs
    from statelab.report import lab as report

    if args.keep < 0:
        raise ConfigError("--keep must be 0 or more")
    plan = runs.plan_clean(default_run_root(), args.keep, args.state_file)
    if not args.dry_run:
        runs.clean(plan)
    report.clean_summary(plan, dry_run=args.dry_run)
    return EXIT_OK


def cmd_faults(args: argparse.Namespace) -> int:
    from statelab.faults.api import FaultServer, ProxySpec, serve_forever
    from statelab.faults.toxics import ToxicError
    from statelab.report import lab as report

    try:
        specs = [ProxySpec.parse(text) for text in args.proxy]
    except ToxicError as exc:
        report.error(str(exc))
        return EXIT_ERROR

    def ready(url: str, faults: FaultServer) -> None:
        report.line(f"fault proxy API on {url}")
        for proxy in faults.proxies.values():
            report.line(f"  {proxy.name}: {proxy.to_json()['listen']} -> {proxy.to_json()['upstream']}")
        report.flush()

    try:
        serve_forever("127.0.0.1", args.api_port, specs, use_uvloop=not args.no_uvloop, ready=ready)
    except ToxicError as exc:
        report.error(str(exc))
        return EXIT_ERROR
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from statelab.check.journey import write_example
    from statelab.check.options import CheckOptions, parse_env, parse_run_time
    from statelab.check.run import run_check
    from statelab.errors import ConfigError
    from statelab.report import check as report
    from statelab.report.lab import progress

    if args.init_journey is not None:
        write_example(args.init_journey)
        report.wrote_example(args.init_journey)
        return EXIT_OK
    if args.journey is None:
        raise ConfigError("--journey LOCUSTFILE is required (write an example with --init-journey FILE)")
    opts = CheckOptions(journey=args.journey, run_dir=args.run_dir or _default_run_dir("check"), app=args.app,
                        cmd=args.cmd, instances=args.instances, users=args.users,
                        run_time_s=parse_run_time(args.run_time), env=parse_env(args.env), ready_path=args.ready_path,
                        start_timeout_s=args.start_timeout, project_dir=Path.cwd(), json_path=args.json_path,
                        junit_path=args.junit, html_path=args.html)
    result = run_check(opts, progress=progress)
    report.show(result)
    for path, write, label in ((opts.json_path, report.write_json, "JSON report"),
                               (opts.junit_path, report.write_junit, "JUnit XML"),
                               (opts.html_path, report.write_html, "HTML report")):
        if path is not None:
            write(result, path)
            report.wrote(label, path)
    return result.exit_code


# --- entry point ------------------------------------------------------------------------------

def _on_signals(handler: Callable[[], None]) -> None:
    """Route SIGINT and SIGTERM to handler (so cleanup runs in the main thread's finally)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: handler())


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C is a KeyboardInterrupt from here on
    try:
        args = build_parser().parse_args(argv)
    except KeyboardInterrupt:  # nothing has started yet
        return 130
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # SIGTERM behaves like Ctrl-C: every `finally` runs and every child is stopped.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    from statelab.report import lab as report

    try:
        return int(args.func(args))
    except LabError as exc:
        report.error(str(exc))
        return EXIT_ERROR
    except KeyboardInterrupt:
        report.error("interrupted: everything the lab started has been stopped")
        return 130
    except OSError as exc:  # the machine said no (a disk, a permission, a port): a message, not a traceback
        log.debug("%s failed", args.command, exc_info=True)
        where = f" ({exc.filename})" if exc.filename else ""
        report.error(f"{exc.strerror or exc}{where}; run with -v for details")
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
