"""A whole running lab: backing stores, N app instances, job workers and a balancer, supervised.

`Lab` is what `statelab up` keeps alive and what scenarios drive: it deploys (rolling restart),
kills, scales and re-routes while traffic flows, and keeps a timeline of what it did so reports
can draw the events on their charts. Everything it starts is stopped by `stop()`, in reverse order.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Protocol

from statelab import seed, services
from statelab.balancer.policies import POLICY_NAMES
from statelab.config import APP_KINDS, BackingUrls, Secret
from statelab.engines import ENGINE_NAMES, BalancerEngine, make_engine
from statelab.errors import ConfigError, ControlError, ServiceFailed
from statelab.events import Event

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 10.0
SUPERVISE_INTERVAL_S = 0.2
START_RETRIES = 3


@dataclass(frozen=True)
class LabSpec:
    """What to run: which app, how many instances, behind which balancer and policy."""

    app: str
    instances: int = 3
    policy: str = "round-robin"
    lb: str = "builtin"
    port: int | None = None
    run_dir: Path = Path(".statelab/runs/lab")
    auth_mode: str = "session"
    threads: int = 8
    job_workers: int = 1
    restart_crashed: bool = True
    health_interval_s: float = 0.5
    seed_users: int = seed.SEED_USERS
    seed_products: int = seed.SEED_PRODUCTS
    app_env: tuple[tuple[str, str], ...] = ()

    def validate(self) -> None:
        if self.app not in APP_KINDS:
            raise ConfigError(f"unknown app {self.app!r}: choose one of {', '.join(APP_KINDS)}")
        if self.policy not in POLICY_NAMES:
            raise ConfigError(f"unknown policy {self.policy!r}: choose one of {', '.join(POLICY_NAMES)}")
        if self.lb not in ENGINE_NAMES:
            raise ConfigError(f"unknown balancer engine {self.lb!r}: choose one of {', '.join(ENGINE_NAMES)}")
        if not 1 <= self.instances <= 32:
            raise ConfigError("--instances must be between 1 and 32")


class StartInstance(Protocol):
    """Start one app instance's process (not yet ready): `services.start_app`, or a fake in tests."""

    def __call__(self, kind: str, instance_id: str, run_dir: Path, env: Mapping[str, str], *,
                 port: int | None, threads: int) -> services.Service: ...


class MakeEngine(Protocol):
    """Return an unstarted balancer engine by name: `statelab.engines.make_engine`, or a fake in tests."""

    def __call__(self, name: str, *, health_interval_s: float) -> BalancerEngine: ...


@dataclass
class Instance:
    """One app instance: a stable id and address; the process behind it changes on each deploy."""

    id: str
    port: int
    service: services.Service
    generation: int = 1
    state: str = "ready"  # ready, draining, restarting, crashed, stopped

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"


@dataclass(frozen=True)
class InstanceStatus:
    id: str
    url: str
    pid: int | None
    state: str
    generation: int
    log: str
    active: int = 0
    requests: int = 0
    errors: int = 0


@dataclass(frozen=True)
class LabStatus:
    app: str
    policy: str
    lb: str
    balancer_url: str
    admin_url: str | None
    run_dir: str
    instances: tuple[InstanceStatus, ...]
    stores: tuple[tuple[str, str], ...]
    events: tuple[Event, ...] = field(default=())

    def to_json(self) -> dict[str, object]:
        return asdict(self)


class Lab:
    """A lab's processes and the operations a person or a scenario performs on them.

    How an instance is started and which balancer engine runs are seams (honcho's `Manager` takes
    its process constructor the same way): tests pass fakes and check deploy and scale
    choreography in milliseconds.
    """

    def __init__(self, spec: LabSpec, clock: Callable[[], float] = time.monotonic, *,
                 start_instance: StartInstance = services.start_app, engine_factory: MakeEngine = make_engine) -> None:
        spec.validate()
        self.spec = spec
        self.run_dir = spec.run_dir.resolve()
        self._clock = clock
        self._start_instance = start_instance
        self._engine_factory = engine_factory
        self._t0 = clock()
        self._stack = ExitStack()
        self._lock = threading.RLock()
        self._stop_supervisor = threading.Event()
        self.events: list[Event] = []
        self.instances: dict[str, Instance] = {}
        self.stores: dict[str, services.Service] = {}
        self.workers: list[services.Service] = []
        self.backing: BackingUrls | None = None
        self.engine: BalancerEngine | None = None
        self.secret_key = Secret.random()
        self._next_id = 1
        self.policy = spec.policy

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self, progress: Callable[[str], None] = lambda msg: None, backing: BackingUrls | None = None) -> "Lab":
        """Start stores, seed, instances, workers and the balancer; on any failure, stop what started.

        With `backing`, the stores already run elsewhere (already seeded): only the app tier starts.
        """
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.backing = backing or self._start_stores(progress)
            self._start_app_tier(progress)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_stores(self, progress: Callable[[str], None]) -> BackingUrls:
        """Start this lab's stores (in parallel), seed the database; return where the apps find them."""
        progress("starting backing stores")
        wanted: list[tuple[str, Callable[[Path], services.Service]]] = [("postgres", services.start_postgres)]
        if self.spec.app == "stateless":
            wanted += [("redis", services.start_redis), ("s3", services.start_s3)]
        for name, start in wanted:
            self.stores[name] = start(self.run_dir)
        for svc in self.stores.values():
            svc.wait_ready()
        progress("seeding the database")
        db_url = services.create_database(self.stores["postgres"].url)
        seed.seed(db_url, users=self.spec.seed_users, products=self.spec.seed_products)
        s3 = self.stores.get("s3")
        return BackingUrls(
            database_url=db_url,
            redis_url=self.stores["redis"].url if "redis" in self.stores else None,
            s3_endpoint=s3.url if s3 else None,
            s3_access_key=s3.extra["access_key"] if s3 else None,
            s3_secret_key=Secret(s3.extra["secret_key"]) if s3 else None,
        )

    def _start_app_tier(self, progress: Callable[[str], None]) -> None:
        """Start the instances, the job workers and the balancer in front of the instances."""
        progress(f"starting {self.spec.instances} {self.spec.app} instances")
        self._start_instances(self.spec.instances)
        for i in range(self.spec.job_workers if self.spec.app == "stateless" else 0):
            self.workers.append(services.start_worker(f"worker-{i + 1}", self.run_dir, self.app_env()))
        progress(f"starting the {self.spec.lb} balancer ({self.policy})")
        self.engine = engine = self._engine_factory(self.spec.lb, health_interval_s=self.spec.health_interval_s)
        engine.start(self.run_dir, self.spec.port or services.free_port(), services.free_port(), self.policy,
                          [(i.id, i.address) for i in self.instances.values()])
        self._event("started", "lab", f"{self.spec.app} x{self.spec.instances} behind {self.spec.lb}/{self.policy}")
        threading.Thread(target=self._supervise, name="statelab-supervisor", daemon=True).start()

    def stop(self) -> None:
        """Stop everything this lab started: balancer, instances, workers, then stores (in parallel)."""
        self._stop_supervisor.set()
        with self._lock:
            if self.engine is not None:
                try:
                    self.engine.stop()
                except Exception:  # keep stopping the rest
                    log.exception("stopping the balancer failed")
                self.engine = None
            doomed = [i.service for i in self.instances.values()] + self.workers
            self.instances.clear()
            self.workers = []
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda s: s.stop(), doomed))
            list(pool.map(lambda s: s.stop(), list(self.stores.values())))
        self.stores.clear()
        self._stack.close()

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- helpers ------------------------------------------------------------------------------

    def _lb(self) -> BalancerEngine:
        if self.engine is None:
            raise ControlError("the lab's balancer is not running")
        return self.engine

    def now(self) -> float:
        return round(self._clock() - self._t0, 3)

    def _event(self, kind: str, target: str, detail: str = "") -> None:
        ev = Event(self.now(), kind, target, detail)
        self.events.append(ev)
        log.info("%6.2fs %-10s %s %s", ev.t, kind, target, detail)

    def app_env(self) -> dict[str, str]:
        """Return the LAB_* environment every app instance and worker of this lab gets."""
        assert self.backing is not None
        env = self.backing.app_env()
        env.update({
            "LAB_SECRET_KEY": self.secret_key.value,
            "LAB_AUTH_MODE": self.spec.auth_mode,
        })
        env.update(dict(self.spec.app_env))
        return env

    def _spawn(self, instance_id: str, port: int | None) -> services.Service:
        """Start an instance process, retrying on a new port if the old one is taken."""
        # Each instance has its own "local disk", as separate machines or containers would.
        env = {"LAB_UPLOAD_DIR": str(self.run_dir / "uploads" / instance_id), **self.app_env()}
        for attempt in range(START_RETRIES):
            svc = self._start_instance(self.spec.app, instance_id, self.run_dir, env, port=port,
                                       threads=self.spec.threads)
            try:
                return svc.wait_ready()
            except ServiceFailed as exc:
                if "in use" not in exc.log_tail or attempt == START_RETRIES - 1:
                    raise
                port = None
        raise AssertionError("unreachable")

    def _start_instances(self, count: int) -> list[Instance]:
        ids = []
        for _ in range(count):
            ids.append(f"app-{self._next_id}")
            self._next_id += 1
        with ThreadPoolExecutor(max_workers=max(1, count)) as pool:
            started = list(pool.map(lambda i: self._spawn(i, None), ids))
        new = []
        with self._lock:
            for iid, svc in zip(ids, started):
                inst = Instance(iid, int(svc.extra["port"]), svc)
                self.instances[iid] = inst
                new.append(inst)
        return new

    def _instance(self, instance_id: str) -> Instance:
        try:
            return self.instances[instance_id]
        except KeyError:
            raise ControlError(f"no instance {instance_id!r}: running are {', '.join(self.instances)}") from None

    def _wait_drained(self, inst: Instance, timeout_s: float) -> None:
        """Wait until the balancer has no request in flight on inst (bounded)."""
        deadline = self._clock() + timeout_s
        while self._clock() < deadline:
            active = {b.id: b.active for b in self._lb().backends()}
            if active.get(inst.id, 0) == 0:
                return
            time.sleep(0.05)
        log.warning("%s still had requests in flight after %.1f s of draining", inst.id, timeout_s)

    # --- operations ---------------------------------------------------------------------------

    def restart_instance(self, instance_id: str, drain: bool = True, drain_timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        """Replace one instance's process with a new one on the same address."""
        inst = self._instance(instance_id)
        if drain:
            inst.state = "draining"
            self._lb().set_state(inst.id, "drain")
            self._event("draining", inst.id)
            self._wait_drained(inst, drain_timeout_s)
            self._lb().set_state(inst.id, "maint")
        inst.state = "restarting"
        inst.service.stop()
        self._event("stopped", inst.id, f"generation {inst.generation}")
        self._start_again(inst, "ready")

    def _start_again(self, inst: Instance, event: str) -> None:
        """Start a stopped instance's next generation on its address and put it back in rotation.

        The one restart sequence: a deploy's restart and the supervisor's restart of a crashed
        instance both end here.
        """
        inst.service = self._spawn(inst.id, inst.port)
        inst.port = int(inst.service.extra["port"])
        inst.generation += 1
        self._readd(inst)
        inst.state = "ready"
        self._event(event, inst.id, f"generation {inst.generation}")

    def _readd(self, inst: Instance) -> None:
        """Put an instance back in rotation (re-registering it if its address changed)."""
        known = {b.id: b.address for b in self._lb().backends()}
        if known.get(inst.id) != inst.address:
            if inst.id in known:
                self._lb().remove_backend(inst.id)
            self._lb().add_backend(inst.id, inst.address)
        self._lb().set_state(inst.id, "ready")

    def deploy(self, batch: int = 1, drain: bool = True, drain_timeout_s: float = DRAIN_TIMEOUT_S,
               progress: Callable[[str], None] = lambda msg: None) -> list[Event]:
        """Rolling restart: `batch` instances at a time, drained first unless drain=False."""
        first = len(self.events)
        ids = list(self.instances)
        self._event("deploy", "lab", f"batch={batch} drain={drain}")
        for start in range(0, len(ids), max(1, batch)):
            group = ids[start:start + batch]
            progress(f"restarting {', '.join(group)}")
            with ThreadPoolExecutor(max_workers=len(group)) as pool:
                list(pool.map(lambda i: self.restart_instance(i, drain, drain_timeout_s), group))
        self._event("deployed", "lab")
        return self.events[first:]

    def kill(self, instance_id: str, sig: int = signal.SIGTERM) -> None:
        """Send sig to an instance (its supervisor notices the exit and restarts it unless told not to)."""
        inst = self._instance(instance_id)
        self._event("killed", inst.id, signal.Signals(sig).name)
        inst.service.process.signal(sig)

    def scale(self, count: int, progress: Callable[[str], None] = lambda msg: None) -> None:
        """Start or stop instances until `count` run; new ones join the balancer once ready."""
        if not 1 <= count <= 32:
            raise ControlError("scale takes a count between 1 and 32")
        current = len(self.instances)
        if count > current:
            progress(f"starting {count - current} instances")
            for inst in self._start_instances(count - current):
                self._lb().add_backend(inst.id, inst.address)
                self._event("joined", inst.id)
        elif count < current:
            for iid in list(self.instances)[count:]:
                inst = self.instances[iid]
                self._lb().set_state(iid, "drain")
                self._wait_drained(inst, DRAIN_TIMEOUT_S)
                self._lb().remove_backend(iid)
                with self._lock:
                    del self.instances[iid]
                inst.service.stop()
                self._event("removed", iid)
        self._event("scaled", "lab", f"{current} -> {count}")

    def set_policy(self, policy: str) -> None:
        """Switch the balancer's policy while traffic flows."""
        if policy not in POLICY_NAMES:
            raise ControlError(f"unknown policy {policy!r}: choose one of {', '.join(POLICY_NAMES)}")
        self._lb().set_policy(policy)
        self.policy = policy
        self._event("policy", "balancer", policy)

    def status(self) -> LabStatus:
        """Return what runs where, with the balancer's per-backend figures."""
        figures = {b.id: b for b in self.engine.backends()} if self.engine else {}
        rows = []
        for inst in list(self.instances.values()):
            b = figures.get(inst.id)
            rows.append(InstanceStatus(inst.id, inst.url, inst.service.process.pid, inst.state, inst.generation,
                                       str(inst.service.process.log_path), getattr(b, "active", 0),
                                       getattr(b, "requests", 0), getattr(b, "errors", 0)))
        stores = tuple((name, _public_url(svc.url)) for name, svc in self.stores.items())
        return LabStatus(self.spec.app, self.policy, self.spec.lb, self.balancer_url,
                         getattr(self.engine, "admin_url", None), str(self.run_dir), tuple(rows), stores,
                         tuple(self.events[-20:]))

    @property
    def balancer_url(self) -> str:
        return self.engine.url if self.engine else ""

    # --- supervision --------------------------------------------------------------------------

    def _supervise(self) -> None:
        """Notice instances that died on their own; take them out of rotation and restart them."""
        while not self._stop_supervisor.wait(SUPERVISE_INTERVAL_S):
            for inst in list(self.instances.values()):
                if inst.state != "ready" or inst.service.process.alive():
                    continue
                with self._lock:
                    if self._stop_supervisor.is_set():
                        return
                    code = inst.service.process.poll()
                    inst.state = "crashed"
                    self._event("crashed", inst.id, f"exit code {code}")
                    try:
                        self._lb().set_state(inst.id, "maint")
                    except Exception:
                        log.exception("could not take %s out of rotation", inst.id)
                if not self.spec.restart_crashed:
                    continue
                try:
                    inst.service.stop()
                    self._start_again(inst, "restarted")
                except Exception as exc:
                    log.error("restarting %s failed: %s", inst.id, exc)


def _public_url(url: str) -> str:
    """Return url with any password masked (for status tables and state files)."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        return f"{scheme}://{cred.split(':', 1)[0]}:****@{host}"
    return url


__all__ = ["InstanceStatus", "Lab", "LabSpec", "LabStatus", "MakeEngine", "StartInstance"]
