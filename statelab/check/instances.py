"""Starting one instance of the app under check: gunicorn with APP, or any command, on its own disk.

`InstanceStarter` is what `statelab.topology.Lab` calls to start an instance (its StartInstance
seam): every call is a new process, so a new generation with a fresh disk, on the port the lab
asks for. An instance is ready when its port answers HTTP (any status: a 404 for `/` is an app
answering), or, with --ready-path, when that path answers 2xx or 3xx. An accepted connection alone
is not enough: gunicorn's master listens before its worker has even imported the app.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from statelab import services
from statelab.check.disks import Disk, Disks
from statelab.check.options import CheckOptions
from statelab.errors import ServiceFailed
from statelab.procs import ManagedProcess, free_port, http_probe, log_tail


@dataclass
class CheckedInstance(services.Service):
    """A started instance that knows its disk and its own start deadline, and notes when it became ready."""

    disk: Disk | None = None
    start_timeout_s: float = services.READY_TIMEOUT_S
    probe_text: str = ""

    def wait_ready(self, timeout_s: float | None = None) -> "CheckedInstance":
        """Wait for the readiness probe (the check's --start-timeout); explain a port that never opened."""
        try:
            self.process.wait_ready(self.start_timeout_s if timeout_s is None else timeout_s)
        except ServiceFailed as exc:
            if "was not ready after" not in str(exc):  # it exited: its own message and log tail say why
                raise
            raise ServiceFailed(f"{self.name} did not become ready within {self.start_timeout_s:g} s "
                                f"({self.probe_text}; log: {self.process.log_path})", exc.log_tail) from None
        if self.disk is not None:
            self.disk.ready_at = time.time()
        return self


@dataclass
class InstanceStarter:
    """Start instances of the app under check with the same environment, each on its own disk."""

    opts: CheckOptions
    env: Mapping[str, str]  # the stores' variables and every --env
    disks: Disks
    started: list[CheckedInstance] = field(default_factory=list)

    def __call__(self, kind: str, instance_id: str, run_dir: Path, env: Mapping[str, str], *,
                 port: int | None, threads: int, workers: int = 1) -> services.Service:
        """Start instance_id's next process on port (a free one if None); the lab's LAB_* env is not passed on.

        threads and workers are the lab's gunicorn settings: a user's command sets its own."""
        port = port or free_port()
        disk = self.disks.new(instance_id)
        argv, disk_env, cwd = self.disks.wrap(disk, self.opts.command(port))
        child_env = {**os.environ, **self.env, **disk_env, "PORT": str(port), "PYTHONUNBUFFERED": "1"}
        url = f"http://127.0.0.1:{port}"
        if self.opts.ready_path:
            probe = http_probe(url + self.opts.ready_path, lambda s: 200 <= s < 400)
            text = f"GET {self.opts.ready_path} must answer 2xx or 3xx"
        else:
            probe = http_probe(url + "/", lambda s: True)
            text = f"port {port} must answer HTTP, any status"
            if self.opts.cmd is not None and "{port}" not in self.opts.cmd:
                text += "; --cmd has no {port}: does the command listen on $PORT?"
        log_path = run_dir / "logs" / f"{instance_id}.log"
        proc = ManagedProcess(instance_id, argv, log_path, probe=probe, env=child_env, cwd=cwd).start()
        instance = CheckedInstance(instance_id, proc, url, extra={"instance_id": instance_id, "port": str(port)},
                                   disk=disk, start_timeout_s=self.opts.start_timeout_s, probe_text=text)
        self.started.append(instance)
        return instance

    def log_tails(self, lines: int = 20) -> dict[str, str]:
        """Return the last lines of each instance's log (for an error message)."""
        return {i.name: log_tail(i.process.log_path, lines) for i in self.started}


__all__ = ["CheckedInstance", "InstanceStarter"]
