"""Managed processes: readiness, fail-fast, clean stop, and no orphans when the parent dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

from statelab.errors import ServiceFailed
from statelab.procs import ManagedProcess, free_port, tcp_probe

PY = sys.executable


def _gone(pids: list[int], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return True
        time.sleep(0.05)
    return False


def test_ready_then_stopped(tmp_path: Path) -> None:
    port = free_port()
    server = [PY, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    p = ManagedProcess("web", server, tmp_path / "web.log", probe=tcp_probe("127.0.0.1", port)).start()
    try:
        p.wait_ready(10)
        assert p.alive()
    finally:
        code = p.stop(grace_s=2)
    assert code is not None and not p.alive()


def test_exit_while_starting_fails_fast_with_log_tail(tmp_path: Path) -> None:
    p = ManagedProcess("broken", [PY, "-c", "print('boom: bad config'); raise SystemExit(3)"],
                       tmp_path / "broken.log", probe=lambda: False).start()
    started = time.monotonic()
    with pytest.raises(ServiceFailed) as exc:
        p.wait_ready(30)
    assert time.monotonic() - started < 5
    assert "code 3" in str(exc.value) and "boom: bad config" in exc.value.log_tail


def test_not_ready_by_deadline_is_stopped(tmp_path: Path) -> None:
    p = ManagedProcess("slow", [PY, "-c", "import time; time.sleep(60)"], tmp_path / "slow.log",
                       probe=lambda: False).start()
    with pytest.raises(ServiceFailed, match="not ready after"):
        p.wait_ready(0.3)
    assert not p.alive()


def test_stop_kills_a_child_that_ignores_term(tmp_path: Path) -> None:
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    p = ManagedProcess("stubborn", [PY, "-c", code], tmp_path / "s.log").start()
    time.sleep(0.3)
    started = time.monotonic()
    assert p.stop(grace_s=0.5) == -signal.SIGKILL
    assert time.monotonic() - started < 3


def test_stop_reaches_grandchildren(tmp_path: Path) -> None:
    code = "import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); print(c.pid, flush=True); time.sleep(60)"
    log = tmp_path / "g.log"
    p = ManagedProcess("parent", [PY, "-c", code], log).start()
    deadline = time.monotonic() + 10
    while not log.read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchild = int(log.read_text().split()[0])
    p.stop(grace_s=2)
    assert _gone([grandchild])


def test_child_spawned_from_a_short_lived_thread_survives_the_thread(tmp_path: Path) -> None:
    """PR_SET_PDEATHSIG follows the forking thread: the spawner thread must be the one that forks."""
    holder: list[ManagedProcess] = []
    t = threading.Thread(target=lambda: holder.append(
        ManagedProcess("sleeper", [PY, "-c", "import time; time.sleep(60)"], tmp_path / "t.log").start()))
    t.start()
    t.join()
    time.sleep(0.5)
    try:
        assert holder[0].alive()
    finally:
        holder[0].stop(grace_s=1)


PARENT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from statelab import services
    from statelab.procs import ManagedProcess
    run = Path(sys.argv[1])
    redis = services.start_redis(run).wait_ready()
    sleeper = ManagedProcess("sleeper", [sys.executable, "-c", "import time; time.sleep(120)"], run / "s.log").start()
    (run / "pids").write_text(f"{redis.process.pid} {sleeper.pid}")
    if sys.argv[2] == "crash":
        raise RuntimeError("the parent crashed")
    time.sleep(120)
""")


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM", "crash"])
def test_no_orphans_when_the_parent_dies(tmp_path: Path, how: str) -> None:
    parent = subprocess.Popen([PY, "-c", PARENT, str(tmp_path), how], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        pid_file = tmp_path / "pids"
        deadline = time.monotonic() + 20
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        pids = [int(x) for x in pid_file.read_text().split()]
        assert all(psutil.pid_exists(p) for p in pids) or how == "crash"
        if how == "SIGKILL":
            parent.kill()
        elif how == "SIGTERM":
            parent.terminate()
        parent.wait(20)
        assert _gone(pids), f"children outlived a parent that died by {how}"
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
            parent.wait()


def test_free_ports_are_outside_the_ephemeral_range_and_not_repeated() -> None:
    """Listeners' ports come from below the range outgoing connections take source ports from."""
    import socket

    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(p < ephemeral_low for p in ports), [p for p in ports if p >= ephemeral_low]
    # A port some client's connection holds as its source port is not handed out.
    with socket.socket() as server, socket.socket() as client:
        server.bind(("127.0.0.1", 0))
        server.listen()
        client.connect(server.getsockname())
        held = client.getsockname()[1]
        from statelab import procs
        assert not procs._bindable("127.0.0.1", held)
