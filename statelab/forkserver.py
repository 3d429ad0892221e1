"""A fork server for app instances: one process imports gunicorn and the app once, then forks every instance.

`python -m gunicorn ...` costs an instance 0.7 s of CPU before it answers, nearly all of it spent
importing gunicorn, Flask and the app's clients (minio, psycopg, redis), and a scenario starts up
to ten instances at once on two cores. The fork server pays the imports once per lab: each
instance the lab starts with is a fork of it that runs the same command line (`gunicorn ARGS`),
so it is still a gunicorn master with its own worker, port, session, environment and log file,
started in a tenth of the time. It is what gunicorn's `--preload` does for one master's workers,
across instances. (Instances started while users are there, in a deploy or a scale-out, are new
interpreters, as new containers would be: their start time is part of what scenarios measure.)

`ForkServer.popen` stands in for `subprocess.Popen` as `ManagedProcess`'s process constructor,
so an instance's pid, exit code, signals and stop behave as for any child. The server reaps its
children and reports their exit codes; an instance dies with the server (PR_SET_PDEATHSIG), which
dies with the lab.
"""

from __future__ import annotations

import importlib
import io
import json
import logging
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import IO, Any, Sequence

from statelab.errors import ServiceFailed
from statelab.procs import ManagedProcess, owned_tempdir

log = logging.getLogger(__name__)

START_TIMEOUT_S = 30.0
REPLY_TIMEOUT_S = 10.0
GUNICORN = ("-m", "gunicorn")  # the command lines it forks: `python -m gunicorn ARGS`
PRELOAD = ("gunicorn.app.wsgiapp", "gunicorn.arbiter", "gunicorn.glogging", "gunicorn.workers.gthread")
_PR_SET_PDEATHSIG = 1


class ForkServer:
    """The lab's side: start the server, fork instances through it, learn how they ended."""

    def __init__(self, run_dir: Path, modules: Sequence[str], name: str = "forkserver") -> None:
        self.run_dir = run_dir
        self.modules = tuple(modules)
        self.name = name
        self._dir = owned_tempdir("statelab-fork-", Path(tempfile.gettempdir()))  # a unix socket path must stay short
        self.sock_path = self._dir / "fork.sock"
        self.process: ManagedProcess | None = None
        self._conn: socket.socket | None = None
        self._send_lock = threading.Lock()
        self._cv = threading.Condition()
        self._replies: dict[int, dict[str, Any]] = {}
        self._codes: dict[int, int] = {}
        self._next_id = 0
        self._gone = False

    def start(self, timeout_s: float = START_TIMEOUT_S) -> "ForkServer":
        """Start the server and wait until it has imported everything and listens."""
        argv = [sys.executable, "-m", "statelab.forkserver", str(self.sock_path), *self.modules]
        self.process = ManagedProcess(self.name, argv, self.run_dir / "logs" / f"{self.name}.log",
                                      probe=self.sock_path.exists, cwd=Path(__file__).resolve().parent.parent,
                                      env={**os.environ, "PYTHONUNBUFFERED": "1"}, stop_grace_s=1.0).start()
        self.process.wait_ready(timeout_s)
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(str(self.sock_path))
        self._conn = conn
        threading.Thread(target=self._read, name=f"statelab-{self.name}", daemon=True).start()
        return self

    def popen(self, argv: Sequence[str], *, stdout: IO[Any] | None = None, env: dict[str, str] | None = None,
              cwd: Path | str | None = None, **ignored: object) -> "ForkedChild":
        """Fork `python -m gunicorn ARGS` from the server: what subprocess.Popen(argv, ...) would have run."""
        if list(argv[1:3]) != list(GUNICORN):
            raise ValueError(f"the fork server runs `python -m gunicorn ...` only, not {argv[:3]}")
        log_path = getattr(stdout, "name", None)
        if not isinstance(log_path, str):
            raise ValueError("the fork server needs stdout to be a log file")
        with self._send_lock:
            self._next_id += 1
            rid = self._next_id
            request = {"id": rid, "args": list(argv[3:]), "env": dict(env if env is not None else os.environ),
                       "cwd": str(cwd or os.getcwd()), "log": log_path}
            if self._conn is None:
                raise ServiceFailed(f"{self.name} is not running")
            try:
                self._conn.sendall(json.dumps(request).encode() + b"\n")
            except OSError as exc:
                raise ServiceFailed(f"{self.name} is gone: {exc}") from None
        with self._cv:
            if not self._cv.wait_for(lambda: rid in self._replies or self._gone, REPLY_TIMEOUT_S):
                raise ServiceFailed(f"{self.name} did not fork within {REPLY_TIMEOUT_S:.0f} s")
            reply = self._replies.pop(rid, None)
        if reply is None or "pid" not in reply:
            raise ServiceFailed(f"{self.name} could not fork: {reply.get('error') if reply else 'it is gone'}")
        return ForkedChild(self, int(reply["pid"]), list(argv))

    def exit_code(self, pid: int) -> int | None:
        """Return how the forked pid ended, None while it runs."""
        with self._cv:
            if pid in self._codes:
                return self._codes[pid]
            if not self._gone:
                return None
        try:  # the server is gone, and with it the news: its children died with it (PR_SET_PDEATHSIG)
            os.kill(pid, 0)
            return None
        except ProcessLookupError:
            return -signal.SIGKILL

    def wait(self, pid: int, timeout_s: float | None) -> int | None:
        """Wait until the forked pid ends (at most timeout_s); return its exit code, None on timeout."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            code = self.exit_code(pid)
            if code is not None:
                return code
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            with self._cv:
                self._cv.wait(0.05 if left is None else min(0.05, left))

    def stop(self) -> None:
        """Stop the server (its remaining children die with it) and remove its socket."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self.process is not None:
            self.process.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def _read(self) -> None:
        """Take the server's replies (pids of forks) and news (exit codes), until it is gone."""
        buf = b""
        conn = self._conn
        while conn is not None:
            try:
                data = conn.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            buf += data
            *lines, buf = buf.split(b"\n")
            with self._cv:
                for line in lines:
                    msg = json.loads(line)
                    if "exited" in msg:
                        self._codes[int(msg["exited"])] = int(msg["code"])
                    else:
                        self._replies[int(msg["id"])] = msg
                self._cv.notify_all()
        with self._cv:
            self._gone = True
            self._cv.notify_all()


class ForkedChild:
    """What subprocess.Popen returns, for a process the fork server forked (pid, poll, wait, returncode)."""

    def __init__(self, server: ForkServer, pid: int, args: list[str]) -> None:
        self._server = server
        self.pid = pid
        self.args = args
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._server.exit_code(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = self._server.wait(self.pid, timeout)
        if self.returncode is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        return self.returncode


# --- the server process -----------------------------------------------------------------------

def serve(sock_path: str, modules: Sequence[str]) -> None:
    """Import gunicorn and the apps, then fork an instance for each request until the lab hangs up."""
    for name in (*PRELOAD, *modules):
        importlib.import_module(name)
    wake_r, wake_w = os.pipe()
    for fd in (wake_r, wake_w):
        os.set_blocking(fd, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # wakes the loop to reap
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock_path + ".tmp")
    os.chmod(sock_path + ".tmp", 0o600)
    listener.listen(8)
    os.rename(sock_path + ".tmp", sock_path)  # it exists only once it accepts: the lab's readiness probe
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    sel.register(wake_r, selectors.EVENT_READ)
    conns: dict[socket.socket, bytes] = {}
    served = False
    while conns or not served:
        for key, _ in sel.select(timeout=1.0):
            if key.fileobj is listener:
                conn, _ = listener.accept()
                conns[conn], served = b"", True
                sel.register(conn, selectors.EVENT_READ)
            elif key.fileobj == wake_r:
                try:
                    while os.read(wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
            else:
                conn = key.fileobj  # type: ignore[assignment]
                data = conn.recv(65536)
                if not data:
                    sel.unregister(conn)
                    conn.close()
                    del conns[conn]
                    continue
                *lines, conns[conn] = (conns[conn] + data).split(b"\n")
                for line in lines:
                    _send(conn, _fork(json.loads(line)))
        _reap(conns)


def _send(conn: socket.socket, msg: dict[str, Any]) -> None:
    try:
        conn.sendall(json.dumps(msg).encode() + b"\n")
    except OSError:  # the lab is gone: so are we, soon
        pass


def _reap(conns: dict[socket.socket, bytes]) -> None:
    """Collect every child that ended and tell the lab its exit code."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        for conn in conns:
            _send(conn, {"exited": pid, "code": os.waitstatus_to_exitcode(status)})


def _fork(request: dict[str, Any]) -> dict[str, Any]:
    """Fork one instance for request; return the reply for the lab."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        pid = os.fork()
    except OSError as exc:
        return {"id": request["id"], "error": str(exc)}
    if pid == 0:  # the instance: never returns into the server's loop
        code = 1
        try:
            code = _become_instance(request)
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    return {"id": request["id"], "pid": pid}


def _become_instance(request: dict[str, Any]) -> int:
    """In the forked child: become `gunicorn ARGS` in its own session, with its own log and environment."""
    import ctypes

    os.setsid()
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    logf = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(logf, 1)
    os.dup2(logf, 2)
    os.closerange(3, 65536)  # the server's socket, its connections and its wake-up pipe stay with it
    for stream in (sys.stdout, sys.stderr):  # line by line, as PYTHONUNBUFFERED would have it
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(line_buffering=True)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = ["gunicorn", *request["args"]]
    from gunicorn.app.wsgiapp import run

    try:
        run(prog="gunicorn")
    except SystemExit as exc:  # how gunicorn ends, in the master and in each worker it forks
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return 0


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2:])
