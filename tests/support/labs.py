"""Fakes for `Lab`'s seams: instance processes and a balancer engine that write what they are asked to a journal.

`Lab(spec, start_instance=fakes.start_instance, engine_factory=fakes.engine_factory)` then
`lab.start(backing=...)` runs a whole lab's choreography (deploys, scaling, crash restarts) with no
process at all, in milliseconds; the test reads `fakes.journal`, one line per step, in order:
`start app-1`, `state app-1 drain`, `poll app-1=2`, `stop app-1`, `add app-3`, `remove app-3`...
"""

from __future__ import annotations

import itertools
import signal
import threading
from pathlib import Path
from typing import Mapping, Sequence

from statelab.config import BackingUrls
from statelab.engines import BackendStatus, BalancerEngine, Record
from statelab.errors import ServiceFailed
from statelab.services import Service

FAKE_BACKING = BackingUrls(database_url="postgresql://lab@127.0.0.1:9/statelab")


class Journal:
    """The steps the fakes were asked to take, in order (thread-safe: a deploy batch runs in threads)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._lock = threading.Lock()

    def add(self, line: str) -> None:
        with self._lock:
            self.lines.append(line)

    def of(self, target: str) -> list[str]:
        """Return the steps that concern one instance, without its id: ['state drain', 'stop', ...]."""
        return [" ".join(w for w in line.split() if w != target).replace(f"{target}=", "")
                for line in self.lines if target in line.split() or line.split()[-1].startswith(f"{target}=")]

    def index(self, line: str) -> int:
        return self.lines.index(line)


class FakeProcess:
    """An instance's process: alive until stopped, killed by a signal, or crashed."""

    _pids = itertools.count(1000)

    def __init__(self, instance_id: str, journal: Journal, fail_start: str = "") -> None:
        self.instance_id = instance_id
        self.journal = journal
        self.pid = next(self._pids)
        self.log_path = Path(f"/nonexistent/{instance_id}.log")
        self.code: int | None = None
        self.fail_start = fail_start  # a log tail: wait_ready fails with it (e.g. "address already in use")

    def wait_ready(self, timeout_s: float | None = None) -> "FakeProcess":
        if self.fail_start:
            self.code = 1
            raise ServiceFailed(f"{self.instance_id} exited with code 1 while starting", self.fail_start)
        return self

    def alive(self) -> bool:
        return self.code is None

    def poll(self) -> int | None:
        return self.code

    def signal(self, sig: int) -> None:
        self.journal.add(f"signal {self.instance_id} {signal.Signals(sig).name}")
        if sig in (signal.SIGTERM, signal.SIGKILL):
            self.code = -sig

    def stop(self, grace_s: float | None = None) -> int | None:
        if self.code is None:
            self.code = 0
        self.journal.add(f"stop {self.instance_id}")
        return self.code


class FakeEngine:
    """A balancer in memory: backends with states, and scripted requests in flight per backend."""

    name = "fake"

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.policy = ""
        self.states: dict[str, str] = {}
        self.addresses: dict[str, str] = {}
        self.in_flight: dict[str, list[int]] = {}  # id -> what each poll reports, then one poll of 0
        self.stopped = False

    def start(self, run_dir: Path, port: int, admin_port: int, policy: str,
              backends: Sequence[tuple[str, str]]) -> None:
        self.policy = policy
        for bid, address in backends:
            self.addresses[bid], self.states[bid] = address, "ready"
        self.journal.add(f"balancer {' '.join(bid for bid, _ in backends)}")

    @property
    def url(self) -> str:
        return "http://127.0.0.1:9"

    def add_backend(self, backend_id: str, address: str) -> None:
        self.addresses[backend_id], self.states[backend_id] = address, "ready"
        self.journal.add(f"add {backend_id}")

    def remove_backend(self, backend_id: str) -> None:
        del self.addresses[backend_id], self.states[backend_id]
        self.journal.add(f"remove {backend_id}")

    def set_state(self, backend_id: str, state: str) -> None:
        self.states[backend_id] = state
        self.journal.add(f"state {backend_id} {state}")

    def set_policy(self, name: str) -> None:
        self.policy = name

    def backends(self) -> list[BackendStatus]:
        rows = []
        for bid, address in self.addresses.items():
            script = self.in_flight.get(bid)
            active = script.pop(0) if script else 0
            if script is not None:
                self.journal.add(f"poll {bid}={active}")
                if active == 0:
                    del self.in_flight[bid]  # drained: later polls are not part of the script
            rows.append(BackendStatus(bid, address, self.states[bid], True, active, 0, 0, None, None))
        return rows

    def records(self, since: int) -> tuple[int, list[Record]]:
        return since, []

    def stop(self) -> None:
        self.stopped = True


class LabFakes:
    """The seams of one `Lab`: its instance starter and its engine factory, sharing one journal."""

    def __init__(self) -> None:
        self.journal = Journal()
        self.engine = FakeEngine(self.journal)
        self.processes: dict[str, FakeProcess] = {}  # the live process of each instance id
        self.fail_next_start: dict[str, str] = {}  # instance id -> log tail of one failed start
        self.started_with: dict[str, dict[str, object]] = {}  # instance id -> its workers and extra env
        self.health_paths: list[str] = []  # what each engine was told to check
        self._ports = itertools.count(20001)

    def start_instance(self, kind: str, instance_id: str, run_dir: Path, env: Mapping[str, str], *,
                       port: int | None, threads: int, workers: int = 1) -> Service:
        port = port or next(self._ports)
        proc = FakeProcess(instance_id, self.journal, self.fail_next_start.pop(instance_id, ""))
        self.processes[instance_id] = proc
        self.started_with[instance_id] = {"workers": workers, "env": dict(env)}
        self.journal.add(f"start {instance_id}")
        return Service(f"app-{instance_id}", proc, f"http://127.0.0.1:{port}",  # type: ignore[arg-type]
                       extra={"instance_id": instance_id, "port": str(port)})

    def engine_factory(self, name: str, *, health_interval_s: float, health_path: str = "/healthz") -> BalancerEngine:
        self.health_paths.append(health_path)
        return self.engine
