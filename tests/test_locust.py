"""Locust as the lab drives it: its own process, one source address per user, failures that tell the story.

Locust is never imported here (it would gevent-patch the test process): everything runs it as a
child through statelab.loadgen, or inspects the locustfile's modules in a subprocess.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator

import pytest

from statelab.errors import ConfigError, ControlError, ServiceFailed
from statelab.loadgen import (LOCUSTFILE, LoadOptions, LoadSummary, lab_target, locust_argv, parse_duration_s,
                              read_summary, start_locust, wait_finished)

WARM_TIMEOUT_S = 20.0


# --- pure --------------------------------------------------------------------------------------

def test_durations_use_locusts_syntax() -> None:
    assert parse_duration_s("30s") == 30 and parse_duration_s("2m") == 120 and parse_duration_s("1h30m") == 5400
    assert parse_duration_s("45") == 45
    with pytest.raises(ConfigError, match="duration"):
        parse_duration_s("soon")


def test_headless_and_web_command_lines(tmp_path: Path) -> None:
    headless = locust_argv(LoadOptions(host="http://127.0.0.1:8000", run_dir=tmp_path, users=7, run_time="5s"))
    assert headless[:3] == [sys.executable, "-m", "locust"] and "--headless" in headless
    assert headless[headless.index("--csv") + 1] == str(tmp_path / "locust")
    assert headless[headless.index("--users") + 1] == "7"
    web = locust_argv(LoadOptions(host="http://127.0.0.1:8000", run_dir=tmp_path, web=True, run_time=None))
    assert "--headless" not in web and "--run-time" not in web
    assert web[web.index("--web-host") + 1] == "127.0.0.1" and web[web.index("--web-port") + 1] == "8089"


def test_summary_reads_locusts_csv_and_unwraps_failure_messages(tmp_path: Path) -> None:
    header = ("Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,"
              "Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,"
              "90%,95%,98%,99%,99.9%,99.99%,100%")
    (tmp_path / "locust_stats.csv").write_text(
        header + "\nGET,/cart,10,4,5,6,1,9,30,2.5,1.0,5,5,6,6,7,8,9,9,9,9,9"
                 "\n,Aggregated,25,4,3,4,1,9,30,5.0,1.0,3,4,5,6,7,8,9,9,9,9,9\n")
    (tmp_path / "locust_failures.csv").write_text(
        "Method,Name,Error,Occurrences\nGET,/cart,CatchResponseError('cart lost'),3\n"
        "GET,/me,CatchResponseError('logged out'),1\n")
    summary = read_summary(tmp_path / "locust")
    assert summary.total.requests == 25 and summary.total.failures == 4 and summary.total.p95_ms == 8
    assert [r.name for r in summary.requests] == ["/cart"]
    assert summary.failures_matching("cart lost") == 3 and summary.failures_matching("logged out") == 1


def test_no_running_lab_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ControlError, match="statelab up"):
        lab_target(tmp_path / "missing.json")


def test_statelab_load_without_a_lab_says_what_to_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from statelab.cli import main

    assert main(["load", "--state-file", str(tmp_path / "lab.json")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "no running lab found" in err and "statelab up" in err and "--host" in err


def test_load_shapes_scale_with_the_base_user_count() -> None:
    """Evaluate the shapes' phases in a subprocess (importing locust here would patch this process)."""
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import shapes\n"
        "out = {}\n"
        "for name, cls in shapes.SHAPES.items():\n"
        "    ends = [p.until_s for p in cls.phases]\n"
        "    assert ends == sorted(ends), name\n"
        "    out[name] = [(p.name, p.users_factor) for p in cls.phases]\n"
        "print(json.dumps(out))\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(LOCUSTFILE.parent)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    shapes = json.loads(result.stdout)
    assert set(shapes) == {"warm-up", "steady", "spike", "phases"}
    assert shapes["warm-up"][0][1] < 0.5 and shapes["warm-up"][-1] == ["steady", 1.0]
    assert max(f for _, f in shapes["spike"]) == 4.0
    assert [n for n, _ in shapes["phases"]][-3:] == ["steady", "spike", "after"]


# --- Locust against a recording server -----------------------------------------------------------

class _Recorder(BaseHTTPRequestHandler):
    """A shop that keeps nothing: every cart is empty (so every cart check is a "cart lost")."""

    protocol_version = "HTTP/1.1"
    clients: dict[str, int] = {}
    lock = threading.Lock()

    def _reply(self, status: int, body: dict[str, object]) -> None:
        with self.lock:
            self.clients[self.client_address[0]] = self.clients.get(self.client_address[0], 0) + 1
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._reply(200, {"items": []} if self.path == "/cart" else {"status": "done"})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/uploads":
            self._reply(201, {"key": "k"})
        elif self.path.endswith("/process"):
            self._reply(202, {"job_id": "j"})
        else:
            self._reply(201 if self.path == "/cart/items" else 200, {})

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[tuple[str, dict[str, int]]]:
    _Recorder.clients = {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", _Recorder.clients
    finally:
        server.shutdown()
        server.server_close()


def _run(opts: LoadOptions) -> tuple[int, LoadSummary]:
    proc = start_locust(opts)
    try:
        code = wait_finished(proc, opts.run_time or "0s")
    finally:
        proc.stop()
    return code, read_summary(opts.csv_prefix)


@pytest.mark.live
def test_users_share_source_addresses_as_configured_and_report_lost_carts(
        recorder: tuple[str, dict[str, int]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url, clients = recorder
    monkeypatch.setenv("LAB_LOCUST_THINK_S", "0.1")
    code, summary = _run(LoadOptions(host=url, run_dir=tmp_path, users=12, spawn_rate=50, run_time="6s",
                                     users_per_address=3))
    addresses = set(clients)
    assert len(addresses) == 12 // 3, addresses
    assert all(a.startswith("127.") and a.endswith(".1") and a != "127.0.0.1" for a in addresses)
    assert len({a.rsplit(".", 1)[0] for a in addresses}) == 4, "each address in its own /24 (nginx ip_hash)"
    assert summary.total.requests > 20
    assert code == 1 and summary.failures_matching("cart lost") > 0  # this shop forgets every cart


@pytest.mark.live
def test_a_load_shape_runs_and_stops_at_the_run_time(recorder: tuple[str, dict[str, int]], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    url, _ = recorder
    monkeypatch.setenv("LAB_LOCUST_SHAPE", "spike")
    started = time.monotonic()
    code, summary = _run(LoadOptions(host=url, run_dir=tmp_path, users=4, spawn_rate=20, run_time="3s"))
    assert time.monotonic() - started < 15, "Locust ignores --run-time while a shape runs unless the shape stops"
    assert summary.total.requests > 0 and code in (0, 1)


# --- Locust against real labs, during a rolling deploy -------------------------------------------

def _wait_for(opts: LoadOptions, what: str, done: Callable[[LoadSummary], bool]) -> LoadSummary:
    """Poll Locust's CSV files (flushed every second) until done(summary), within WARM_TIMEOUT_S."""
    deadline = time.monotonic() + WARM_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            summary = read_summary(opts.csv_prefix)
        except (ServiceFailed, ValueError, KeyError):  # not written yet, or caught mid-write
            summary = None
        if summary is not None and done(summary):
            return summary
        time.sleep(0.2)
    raise AssertionError(f"Locust never showed {what} within {WARM_TIMEOUT_S} s: {opts.log_path}")


def _logins(summary: LoadSummary) -> int:
    return sum(r.requests - r.failures for r in summary.requests if r.name == "/login")


@pytest.mark.live
@pytest.mark.parametrize("app", ["stateless", "stateful"])
def test_locust_sees_what_a_rolling_deploy_does_to_users(app: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from statelab.topology import Lab, LabSpec

    monkeypatch.setenv("LAB_LOCUST_THINK_S", "0.2")
    # The stateful app needs cookie stickiness to keep a session at all (as in rolling-deploy), so
    # every "logged out" below is the deploy's doing.
    policy = "cookie" if app == "stateful" else "round-robin"
    lab = Lab(LabSpec(app=app, instances=3, policy=policy, run_dir=tmp_path / "lab", seed_users=100))
    try:
        lab.start()
        opts = LoadOptions(host=lab.balancer_url, run_dir=tmp_path / "locust", users=20, spawn_rate=40,
                           run_time="90s", accounts=100)
        proc = start_locust(opts)
        try:
            before_deploy = _wait_for(opts, "8 logins", lambda s: _logins(s) >= 8)
            lab.deploy()
            deployed = read_summary(opts.csv_prefix).total.requests
            # Users' next steps after the last restart are what reveals (or not) the loss.
            _wait_for(opts, "100 requests after the deploy", lambda s: s.total.requests >= deployed + 100)
        finally:
            code = proc.stop()  # SIGTERM: Locust writes its CSV files and exits 1 if users saw failures
    finally:
        lab.stop()
    summary = read_summary(opts.csv_prefix)
    assert summary.total.requests > 100
    if app == "stateless":
        # What a deploy does to state: nobody logged out, no cart or upload lost, no refresh refused.
        for kind in ("logged out", "cart lost", "missing", "refresh refused"):
            assert summary.failures_matching(kind) == 0, summary.failures
        # Anything else is not the deploy's doing but must stay rare, and names who answered
        # ("HTTP 503 from app-2: s3 unreachable", "... from balancer: no backend available").
        assert summary.total.failures <= summary.total.requests // 200, summary.failures
        assert all(" from " in f.error for f in summary.failures), summary.failures
        if summary.total.failures:
            print(f"rare failures beside the deploy: {summary.failures}")
    else:
        assert before_deploy.failures_matching("logged out") == 0, before_deploy.failures
        assert code == 1
        assert summary.failures_matching("logged out") > 0, summary.failures
