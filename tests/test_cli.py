"""The command line as a user meets it: mistakes get a message that says what to do, exit 2, never a traceback.

Each command runs as a subprocess (`python -m statelab`), as a person would type it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import psutil
import pytest

from statelab.cli import build_parser, parse_backends
from statelab.errors import ConfigError


def _statelab(*args: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "statelab", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd)


def _said(result: subprocess.CompletedProcess[str]) -> str:
    """Return what the command printed, on one line (rich wraps long messages at the terminal's width)."""
    return " ".join((result.stdout + result.stderr).split())


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port something already listens on."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize("args, message", [
    (("lb", "--port", "0", "--backend", "foo"), "--backend 'foo': expected [ID=]HOST:PORT"),
    (("lb", "--port", "0", "--backend", "=1.2.3.4:5"), "the id before '=' is empty"),
    (("lb", "--port", "0", "--backend", "a=127.0.0.1:99999"), "with a port 1-65535"),
    (("lb", "--port", "0", "--backend", "a=127.0.0.1:9", "--backend", "a=127.0.0.1:10"), "the id 'a' is used twice"),
    (("lb", "--port", "0", "--backend", "a=127.0.0.1:9", "--policy", "nope"), "unknown policy 'nope'"),
    (("lb", "--port", "70000", "--backend", "a=127.0.0.1:9"), "70000 is not a port"),
    (("seed", "--database-url", "postgresql://lab:hunter2@127.0.0.1:9/statelab"),
     "cannot reach the database at postgresql://lab:****@127.0.0.1:9/statelab"),
    (("seed", "--database-url", "foo"), "expected a URL like postgresql://"),
    (("run", "all", "--quick", "--run-dir", "/proc/statelab"), "cannot create the run directory /proc/statelab"),
    (("run", "rolling-deploy", "--quick", "--json", "/proc/statelab/run.json"), "cannot write --json"),
    (("run", "rolling-deploy", "--quick", "--html", "/tmp"), "cannot write --html /tmp: it is a directory"),
    (("run", "local-disk-upload", "--app", "stateful", "--target", "notaurl"), "--target must be the balancer's URL"),
    (("run", "all", "--users", "0"), "0 is too small"),
    (("up", "--app", "stateful", "--port", "0", "--run-dir", "/proc/statelab"), "cannot create the run directory"),
    (("up", "--app", "stateful", "--policy", "nope", "--port", "0"), "unknown policy 'nope'"),
    (("clean", "--keep", "-1"), "--keep must be 0 or more"),
])
def test_mistakes_get_a_message_and_exit_2(args: tuple[str, ...], message: str, tmp_path: Path) -> None:
    result = _statelab(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in _said(result)
    assert "Traceback" not in result.stdout + result.stderr
    assert "hunter2" not in result.stdout + result.stderr


def test_up_on_a_busy_port_names_the_way_out_and_starts_nothing(busy_port: int, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "statelab", "up", "--app", "stateless", "--port", str(busy_port),
                             "--run-dir", str(run_dir), "--state-file", str(tmp_path / "lab.json")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    children: set[int] = set()
    while proc.poll() is None:  # watch for anything it starts while it runs
        try:
            children |= {c.pid for c in psutil.Process(proc.pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            break
        time.sleep(0.02)
    out, err = proc.communicate(timeout=30)
    said = " ".join((out + err).split())
    assert proc.returncode == 2, said
    assert f"port {busy_port} is busy" in said and "--port 0" in said and f"--port {busy_port + 1}" in said
    assert "Traceback" not in out + err
    assert children == set() and not run_dir.exists()  # checked before anything started
    assert time.monotonic() - t0 < 15


def test_lb_on_a_busy_port_says_so(busy_port: int) -> None:
    result = _statelab("lb", "--port", str(busy_port), "--backend", "a=127.0.0.1:9")
    assert result.returncode == 2 and f"port {busy_port} is busy" in _said(result)
    assert "Traceback" not in result.stderr


def test_the_no_lab_hint_prints_a_command_that_works(tmp_path: Path) -> None:
    result = _statelab("status", "--state-file", str(tmp_path / "lab.json"))
    assert result.returncode == 2
    said = _said(result)
    hint = said[said.index("`") + 1:said.index("`", said.index("`") + 1)]
    assert hint == "statelab up --app stateful"
    build_parser().parse_args(hint.split()[1:])  # parses: --app is there


def test_backends_are_read_or_refused() -> None:
    assert parse_backends(["app-1=127.0.0.1:9001", "127.0.0.1:9002"]) == \
        [("app-1", "127.0.0.1:9001"), ("backend-2", "127.0.0.1:9002")]
    for bad in (["127.0.0.1"], ["a=:80"], ["a=h:0"], [" =h:1"]):
        with pytest.raises(ConfigError):
            parse_backends(bad)


@pytest.mark.live
def test_status_shows_the_dashboard_url(tmp_path: Path) -> None:
    state = tmp_path / "lab.json"
    with open(tmp_path / "up.out", "w") as out:
        up = subprocess.Popen([sys.executable, "-m", "statelab", "up", "--app", "stateful", "--instances", "1",
                               "--port", "0", "--state-file", str(state), "--run-dir", str(tmp_path / "run")],
                              stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not state.exists():
            assert up.poll() is None and time.monotonic() < deadline, (tmp_path / "up.out").read_text()
            time.sleep(0.1)
        dashboard = json.loads(state.read_text())["dashboard_url"]
        assert dashboard and dashboard.startswith("http://127.0.0.1:")
        shown = _statelab("status", "--state-file", str(state))
        assert shown.returncode == 0 and f"dashboard {dashboard}" in _said(shown)
        as_json = json.loads(_statelab("status", "--json", "--state-file", str(state)).stdout)
        assert as_json["dashboard_url"] == dashboard and as_json["control_url"]
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(30)


@pytest.mark.live
@pytest.mark.parametrize("moment", ["run dir created", "servers starting"])
def test_ctrl_c_stops_everything_without_a_traceback(moment: str, tmp_path: Path) -> None:
    """Ctrl-C once statelab's code runs (before any server), and while the lab's servers start."""
    run_dir = tmp_path / "run"
    with open(tmp_path / "out", "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "statelab", "run", "rolling-deploy", "--quick", "--app",
                                 "stateful", "--run-dir", str(run_dir)],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path)
    children: set[int] = set()
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        children |= {c.pid for c in psutil.Process(proc.pid).children(recursive=True)}
        if run_dir.exists() if moment == "run dir created" else children:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    try:
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = (tmp_path / "out").read_text()
    assert code == 130, text
    assert "Traceback" not in text and "interrupted" in text
    deadline = time.monotonic() + 10
    while (left := [p for p in children if psutil.pid_exists(p)
                    and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left == []
