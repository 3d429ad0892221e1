"""One managed child process: its own session, a log file, a readiness probe, a clean stop.

Children die with the lab in every case: stop() sends TERM to the process group, waits a grace
period, then KILLs it; a registry stops whatever is still alive at interpreter exit; and each child
is started with PR_SET_PDEATHSIG so the kernel kills it if the lab is killed with SIGKILL.
"""

from __future__ import annotations

import atexit
import collections
import ctypes
import logging
import os
import queue
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Mapping, Protocol, Sequence

import requests

from statelab.errors import ServiceFailed

log = logging.getLogger(__name__)

Probe = Callable[[], bool]


class Child(Protocol):
    """What a managed process is to its owner: subprocess.Popen, or a fork server's child (statelab.forkserver)."""

    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

STOP_GRACE_S = 5.0
PROBE_INTERVAL_S = 0.05
_PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    """Return a port that was free on host a moment ago (callers retry on 'address in use').

    The port comes from below the kernel's ephemeral range, which every outgoing connection takes
    its source port from: under load (thousands of balancer and Locust connections a second) a port
    picked there is often taken by some client's connection before the server binds it, and a server
    such as SeaweedFS then fails to start. A port handed out recently in this process is not handed
    out again, and a random start keeps parallel labs apart.
    """
    low, high = _LISTEN_RANGE
    with _recent_lock:
        for _ in range(64):
            port = _random.randrange(low, high)
            if port in _recent or not _bindable(host, port):
                continue
            _recent.append(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # a crowded range: let the kernel pick
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _bindable(host: str, port: int) -> bool:
    """Can a listener bind host:port now (no SO_REUSEADDR: a port in TIME_WAIT counts as taken)?"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _listen_range() -> tuple[int, int]:
    """Return the ports to pick listeners from: 20000 up to the start of the ephemeral range."""
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    low = 20000 if ephemeral_low > 24000 else 10000
    return low, max(low + 1000, ephemeral_low)


_LISTEN_RANGE = _listen_range()
_random = random.SystemRandom()  # not the global generator, which a scenario seeds
_recent: collections.deque[int] = collections.deque(maxlen=512)
_recent_lock = threading.Lock()


def tcp_probe(host: str, port: int) -> Probe:
    """Return a probe that is true once host:port accepts a connection."""

    def probe() -> bool:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            return False

    return probe


def http_probe(url: str, ok: Callable[[int], bool] = lambda s: s < 500) -> Probe:
    """Return a probe that is true once url answers with a status ok() accepts."""

    def probe() -> bool:
        try:
            return ok(requests.get(url, timeout=0.5).status_code)
        except requests.RequestException:
            return False

    return probe


def _die_with_parent() -> None:
    """In the child, before exec: ask the kernel to SIGKILL us when our parent thread dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class _Spawner:
    """A thread that outlives every caller, so PR_SET_PDEATHSIG fires only when the lab dies.

    The parent-death signal follows the *thread* that forked the child: a child spawned from a
    short-lived thread (a control-API request, a parallel start) would be killed when that thread
    ends. Every spawn therefore goes through this one long-lived daemon thread.
    """

    def __init__(self) -> None:
        self._jobs: queue.Queue[tuple[Callable[[], Child], queue.Queue[object]]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def spawn(self, make: Callable[[], Child]) -> Child:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="statelab-spawner", daemon=True)
                self._thread.start()
        reply: queue.Queue[object] = queue.Queue(maxsize=1)
        self._jobs.put((make, reply))
        result = reply.get()
        if isinstance(result, BaseException):
            raise result
        return result  # type: ignore[return-value]  # make()'s Child (an exception was raised above)

    def _run(self) -> None:
        while True:
            make, reply = self._jobs.get()
            try:
                reply.put(make())
            except BaseException as exc:  # handed back to the caller, raised there
                reply.put(exc)


_spawner = _Spawner()
_live: set["ManagedProcess"] = set()
_live_lock = threading.Lock()


def stop_all(grace_s: float | None = 2.0) -> None:
    """Stop every managed process still alive (the interpreter-exit safety net)."""
    with _live_lock:
        procs = list(_live)
    for p in procs:
        p.stop(grace_s)


atexit.register(stop_all)


OWNER_FILE = "statelab-owner"  # in a temporary directory: the pid of the process that made it


def owned_tempdir(prefix: str, root: Path) -> Path:
    """Make a temporary directory under root that names its owner (this process), first removing orphans.

    A lab killed with SIGKILL cannot tidy what it made outside its run directory (a PostgreSQL
    data directory in /dev/shm, a fork server's socket): the next lab removes those whose owner is
    gone. Directories without an owner file (older labs', other programs') are left alone.
    """
    remove_orphaned(root, prefix)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    (path / OWNER_FILE).write_text(str(os.getpid()))
    return path


def remove_orphaned(root: Path, prefix: str) -> list[Path]:
    """Remove the directories under root named prefix* whose owner process has exited; return them."""
    removed = []
    for path in root.glob(prefix + "*"):
        try:
            owner = int((path / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        try:
            os.kill(owner, 0)
            continue  # still running (or a pid reused since: kept, which is harmless)
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def log_tail(path: Path, lines: int = 30) -> str:
    """Return the last lines of a log file, or '' if there is none."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            return "\n".join(f.read().decode(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class ManagedProcess:
    """A child process the lab owns from start to stop."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        probe: Probe | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        user: int | None = None,
        group: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        popen: Callable[..., Child] = subprocess.Popen,
        stop_grace_s: float = STOP_GRACE_S,
        stop_signal: int = signal.SIGTERM,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.probe = probe
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.user = user
        self.group = group
        self._clock = clock
        self._popen = popen
        self.stop_grace_s = stop_grace_s
        self.stop_signal = stop_signal  # what asks it to stop before the grace runs out (then SIGKILL)
        self.proc: Child | None = None

    def __repr__(self) -> str:
        return f"ManagedProcess({self.name!r}, pid={self.pid})"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> "ManagedProcess":
        """Start the child in its own session, output appended to its log file."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        logf = open(self.log_path, "ab")
        try:
            self.proc = _spawner.spawn(
                lambda: self._popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    cwd=self.cwd,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                    user=self.user,
                    group=self.group,
                )
            )
        except FileNotFoundError as exc:
            raise ServiceFailed(f"{self.name}: cannot run {self.argv[0]}: {exc.strerror}") from None
        finally:
            logf.close()
        with _live_lock:
            _live.add(self)
        log.debug("started %s pid=%s: %s", self.name, self.pid, " ".join(self.argv))
        return self

    def poll(self) -> int | None:
        """Return the exit code if the child has exited, else None."""
        return self.proc.poll() if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout_s: float) -> "ManagedProcess":
        """Poll the probe until it passes; fail fast, with the log tail, if the child exits."""
        deadline = self._clock() + timeout_s
        while True:
            code = self.poll()
            if code is not None:
                raise ServiceFailed(f"{self.name} exited with code {code} while starting (log: {self.log_path})",
                                    log_tail(self.log_path))
            if self.probe is None or self.probe():
                return self
            if self._clock() >= deadline:
                self.stop()
                raise ServiceFailed(f"{self.name} was not ready after {timeout_s:.1f} s (log: {self.log_path})",
                                    log_tail(self.log_path))
            time.sleep(PROBE_INTERVAL_S)

    def signal(self, sig: int) -> None:
        """Send sig to the child's whole process group."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, grace_s: float | None = None) -> int | None:
        """Stop the child: its stop signal (TERM) to its group, wait up to grace_s, then KILL; return the exit code."""
        grace_s = self.stop_grace_s if grace_s is None else grace_s
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.signal(self.stop_signal)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                log.info("%s still running %.1f s after SIGTERM: killing it", self.name, grace_s)
        # KILL the group even after a clean exit: grandchildren may linger in it.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        code = self.proc.wait()
        with _live_lock:
            _live.discard(self)
        return code
