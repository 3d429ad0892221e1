"""`statelab up` end to end: a real lab in a child process, driven by the CLI from "another shell".

Also the promise that matters most in a classroom: however `up` ends (Ctrl-C, SIGTERM, an internal
error, SIGKILL), no process it started is left running and no port stays bound.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests

from statelab.procs import free_port
from statelab.seed import SEED_PASSWORD, username

pytestmark = pytest.mark.live


def _statelab(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "statelab", *args], capture_output=True, text=True, timeout=timeout)


class Up:
    def __init__(self, tmp: Path, *extra: str) -> None:
        self.state = tmp / "lab.json"
        self.port = free_port()
        with open(tmp / "up.out", "w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "statelab", "up", "--port", str(self.port), "--state-file", str(self.state),
                 "--run-dir", str(tmp / "run"), "--no-dashboard", *extra],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while not self.state.exists():
            assert self.proc.poll() is None, (tmp / "up.out").read_text()
            assert time.monotonic() < deadline, "statelab up did not come up in 60 s"
            time.sleep(0.1)
        self.status = json.loads(self.state.read_text())

    def descendants(self) -> list[int]:
        return [p.pid for p in psutil.Process(self.proc.pid).children(recursive=True)]

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def _all_gone(pids: list[int], timeout_s: float = 15) -> list[int]:
    deadline = time.monotonic() + timeout_s
    alive = pids
    while time.monotonic() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return []
        time.sleep(0.1)
    return alive


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def test_up_serves_and_obeys_the_control_commands(tmp_path: Path) -> None:
    up = Up(tmp_path, "--app", "stateless", "--instances", "2")
    try:
        base = up.status["balancer_url"]
        served = {requests.get(base + "/healthz", timeout=5).headers["X-Served-By"] for _ in range(8)}
        assert served == {"app-1", "app-2"}
        sf = ["--state-file", str(up.state)]
        status = _statelab("status", "--json", *sf)
        assert status.returncode == 0, status.stderr
        assert [i["id"] for i in json.loads(status.stdout)["instances"]] == ["app-1", "app-2"]
        before = {i["id"]: i["pid"] for i in json.loads(status.stdout)["instances"]}

        deploy = _statelab("deploy", *sf)
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        after = {i["id"]: i["pid"] for i in json.loads(_statelab("status", "--json", *sf).stdout)["instances"]}
        assert set(after) == set(before) and all(after[k] != before[k] for k in before), "deploy replaced no process"

        assert _statelab("scale", "3", *sf).returncode == 0
        served = {requests.get(base + "/healthz", timeout=5).headers["X-Served-By"] for _ in range(12)}
        assert served == {"app-1", "app-2", "app-3"}

        killed = _statelab("kill", "app-1", "--signal", "KILL", *sf)
        assert killed.returncode == 0, killed.stderr
        deadline = time.monotonic() + 30
        while True:
            now = json.loads(_statelab("status", "--json", *sf).stdout)
            kinds = [(e["kind"], e["target"]) for e in now["events"]]
            if ("restarted", "app-1") in kinds:
                break
            assert time.monotonic() < deadline, f"app-1 was not restarted after a crash: {kinds}"
            time.sleep(0.3)
        assert ("crashed", "app-1") in kinds
        app1 = next(i for i in now["instances"] if i["id"] == "app-1")
        assert app1["state"] == "ready" and app1["pid"] != after["app-1"]

        bad = _statelab("policy", "bogus", *sf)
        assert bad.returncode == 2 and "unknown policy" in bad.stderr
        assert _statelab("policy", "least-connections", *sf).returncode == 0
    finally:
        up.proc.send_signal(signal.SIGINT)
        up.proc.wait(30)
        up.close()
    assert not up.state.exists()


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "SIGKILL"])
def test_no_orphans_and_no_bound_port_however_up_ends(tmp_path: Path, how: str) -> None:
    up = Up(tmp_path, "--app", "stateless", "--instances", "2")
    try:
        pids = up.descendants()
        assert len(pids) >= 6, "expected postgres, redis, s3, 2 instances, a worker and a balancer"
        up.proc.send_signal(getattr(signal, how))
        up.proc.wait(30)
        left = _all_gone(pids)
        assert not left, f"after {how}, still running: {[psutil.Process(p).cmdline() for p in left if psutil.pid_exists(p)]}"
        assert _port_free(up.port), f"balancer port {up.port} still bound after {how}"
    finally:
        up.close()


def test_up_reports_a_bad_option_without_a_traceback(tmp_path: Path) -> None:
    result = _statelab("up", "--app", "stateful", "--policy", "nope", "--state-file", str(tmp_path / "s.json"),
                       "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "unknown policy 'nope'" in result.stderr and "Traceback" not in result.stderr


def test_control_commands_without_a_lab_say_what_to_do(tmp_path: Path) -> None:
    result = _statelab("status", "--state-file", str(tmp_path / "missing.json"))
    assert result.returncode == 2 and "statelab up" in result.stderr


@pytest.mark.haproxy
@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed: apt-get install haproxy")
def test_the_same_operations_drive_haproxy(tmp_path: Path) -> None:
    """--lb haproxy: deploy, scale and crash-restart go through HAProxy's runtime API."""
    from statelab.topology import Lab, LabSpec

    with Lab(LabSpec(app="stateless", instances=2, lb="haproxy", run_dir=tmp_path / "run", seed_users=200,
                     seed_products=50, health_interval_s=0.2)) as lab:
        lab.start()
        base = lab.balancer_url
        assert {requests.get(base + "/healthz", timeout=5).headers["X-Served-By"] for _ in range(8)} == {"app-1", "app-2"}
        with requests.Session() as s:
            assert s.post(base + "/login", json={"username": username(1), "password": SEED_PASSWORD}, timeout=5).ok
            before = {i.id: i.pid for i in lab.status().instances}
            lab.deploy()
            assert all(i.pid != before[i.id] for i in lab.status().instances)
            assert s.get(base + "/me", timeout=5).status_code == 200, "the session did not survive the deploy"
        lab.scale(3)
        deadline = time.monotonic() + 15
        seen: set[str] = set()
        while seen != {"app-1", "app-2", "app-3"} and time.monotonic() < deadline:
            seen.add(requests.get(base + "/healthz", timeout=5).headers["X-Served-By"])
        assert seen == {"app-1", "app-2", "app-3"}
        lab.scale(2)
        assert [i.id for i in lab.status().instances] == ["app-1", "app-2"]
