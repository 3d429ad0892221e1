"""A whole running lab: backing stores, N app instances, job workers and a balancer, supervised.

`Lab` is what `statelab up` keeps alive and what scenarios drive: it deploys (rolling restart),
kills, scales and re-routes while traffic flows, and keeps a timeline of what it did so reports
can draw the events on their charts. It can also run its stores differently (Redis with AOF, or
with a replica and Sentinel; a fault proxy in front of S3), kill and restart a store or a job
worker, run several gunicorn workers per instance, and run without a balancer. Everything it
starts is stopped by `stop()`, in reverse order.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Protocol, Sequence

from statelab import seed, services
from statelab.balancer.policies import POLICY_NAMES
from statelab.config import APP_KINDS, BackingUrls, Secret
from statelab.engines import ENGINE_NAMES, HEALTH_PATH, BalancerEngine, make_engine
from statelab.errors import ConfigError, ControlError, ServiceFailed
from statelab.events import Event
from statelab.faults import FaultClient
from statelab.forkserver import ForkServer
from statelab.stores import STORE_NAMES, SharedStores, Tenancy

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 10.0
TEARDOWN_GRACE_S = 0.1  # SIGTERM to SIGKILL when a lab stops for good (its processes' state is thrown away)
SUPERVISE_INTERVAL_S = 0.2
START_RETRIES = 3
# How the lab runs Redis for the stateless app: without persistence, with an append-only file
# (fsync every second), or as a master (AOF) with a replica and a Sentinel that fails over.
REDIS_MODES = ("plain", "aof", "sentinel")


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
    # At least this many accounts and products: a lab asking for no more than the default seed gets
    # the default one, copied from a cached cluster (services.postgres_template).
    seed_users: int = seed.SEED_USERS
    seed_products: int = seed.SEED_PRODUCTS
    app_env: tuple[tuple[str, str], ...] = ()
    workers: int = 1  # gunicorn worker processes per instance: more than one splits a stateful instance's memory
    balancer: bool = True  # False: no balancer at all; users reach the first instance directly
    health_path: str = HEALTH_PATH  # what the balancer's health checks GET (`/readyz`: readiness)
    redis: str = "plain"  # one of REDIS_MODES (stateless app only)
    s3_faults: bool = False  # a fault proxy between the apps and S3 (`Lab.faults` drives it)
    # Instances next to the lab, not behind its balancer: (id, extra LAB_* settings), e.g. a JWT-mode probe.
    side_instances: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()
    # Stores this lab runs itself even when the run shares its stores: those its scenario kills,
    # restarts or reads process-wide figures of. A fault proxy (s3_faults) or a Redis other than
    # plain implies its own.
    own_stores: tuple[str, ...] = ()

    def stores(self) -> tuple[str, ...]:
        """Return the backing stores this lab's app needs."""
        return STORE_NAMES if self.app == "stateless" else ("postgres",)

    def shareable_stores(self) -> tuple[str, ...]:
        """Return the stores this lab may take from the run's shared ones: all but those it must run itself.

        A lab runs its own store when its scenario kills, restarts or reads process-wide figures
        of it (own_stores), when the store is not a plain one (Redis with AOF or Sentinel), and
        when a fault proxy stands in front of it (s3_faults).
        """
        own = set(self.own_stores) | ({"redis"} if self.redis != "plain" else set()) | ({"s3"} if self.s3_faults else set())
        return tuple(n for n in self.stores() if n not in own)

    def validate(self, any_app: bool = False) -> None:
        """Raise a ConfigError for a setting no lab can run; any_app: `app` is only a label (own instance starter)."""
        if not any_app and self.app not in APP_KINDS:
            raise ConfigError(f"unknown app {self.app!r}: choose one of {', '.join(APP_KINDS)}")
        if self.policy not in POLICY_NAMES:
            raise ConfigError(f"unknown policy {self.policy!r}: choose one of {', '.join(POLICY_NAMES)}")
        if self.lb not in ENGINE_NAMES:
            raise ConfigError(f"unknown balancer engine {self.lb!r}: choose one of {', '.join(ENGINE_NAMES)}")
        if not 1 <= self.instances <= 32:
            raise ConfigError("--instances must be between 1 and 32")
        if not 1 <= self.workers <= 16:
            raise ConfigError("workers per instance must be between 1 and 16")
        if self.redis not in REDIS_MODES:
            raise ConfigError(f"unknown redis mode {self.redis!r}: choose one of {', '.join(REDIS_MODES)}")
        if set(self.own_stores) - set(STORE_NAMES):
            raise ConfigError(f"own_stores takes store names: {', '.join(STORE_NAMES)}")


class StartInstance(Protocol):
    """Start one app instance's process (not yet ready): `services.start_app`, or a fake in tests."""

    def __call__(self, kind: str, instance_id: str, run_dir: Path, env: Mapping[str, str], *,
                 port: int | None, threads: int, workers: int) -> services.Service: ...


class MakeEngine(Protocol):
    """Return an unstarted balancer engine by name: `statelab.engines.make_engine`, or a fake in tests."""

    def __call__(self, name: str, *, health_interval_s: float, health_path: str) -> BalancerEngine: ...


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
        spec.validate(any_app=start_instance is not services.start_app)
        self.spec = spec
        self.run_dir = spec.run_dir.resolve()
        self._clock = clock
        # The lab's own instances that start with it fork from a server that imported gunicorn and
        # the app once (a tenth of the CPU of a new interpreter each). An instance started while
        # users are there (a deploy's new generation, a scale-out, a crash restart) is a new
        # process, as a new container would be: its start time is part of what scenarios measure.
        # Another starter is used as it is.
        self._start_instance = self._start_forked if start_instance is services.start_app else start_instance
        self._forking = False  # true while start() runs
        self._forks: ForkServer | None = None
        self._forks_started = False
        self._forks_ready = threading.Event()
        self._engine_factory = engine_factory
        self._t0 = clock()
        self._stack = ExitStack()
        self._lock = threading.RLock()
        self._stop_supervisor = threading.Event()
        self.events: list[Event] = []
        self.instances: dict[str, Instance] = {}
        self.stores: dict[str, services.Service] = {}
        self.workers: list[services.Service] = []
        self.side: dict[str, services.Service] = {}  # side instances by id (not behind the balancer)
        self.backing: BackingUrls | None = None
        self.store_env: dict[str, str] = {}  # LAB_* settings the stores add (Sentinel addresses)
        self._restarts: dict[str, Callable[[], services.Service]] = {}  # store -> start it again where it was
        self.engine: BalancerEngine | None = None
        self.secret_key = Secret.random()
        self._next_id = 1
        self.policy = spec.policy
        self.timeline: list[tuple[float, str]] = []  # (seconds since start() was called, step): where start's time went
        self._t_start = clock()
        self.shared_stores: tuple[str, ...] = ()  # stores this lab uses on the run's SharedStores
        self.tenancy: Tenancy | None = None
        self._shared: SharedStores | None = None
        self._spawned: list[services.Service] = []  # every instance process started, until it is registered
        self._db_url: str | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self, progress: Callable[[str], None] = lambda msg: None, backing: BackingUrls | None = None,
              shared: SharedStores | None = None) -> "Lab":
        """Start stores, instances, job workers and the balancer side by side; on any failure, stop what started.

        Nothing waits for what it does not need: the instances and the balancer start while the
        stores do (the apps connect to their stores lazily, and their addresses are chosen before
        any of them starts). An instance joins the balancer once the stores are ready and the lab's
        own probe saw it answer with its own id; the balancer admits it at once, without waiting
        for its health checks to rise. The instances fork from a server that imported the app once
        (statelab.forkserver). With `backing`, the stores already run elsewhere (already
        seeded): only the app tier starts. With `shared`, the lab takes a tenancy on the run's
        stores instead of starting its own, except those in `LabSpec.own_stores`.
        """
        self._t_start = self._clock()
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with ThreadPoolExecutor(max_workers=self.spec.instances + len(self.spec.side_instances) + 4,
                                    thread_name_prefix="statelab-start") as pool:
                if self._start_instance == self._start_forked:
                    self._forking = True
                    pool.submit(self._start_forks)  # its imports overlap everything else
                if backing is None:
                    planned, launch_stores, stores_ready = self._begin_stores(pool, shared)
                else:
                    planned, launch_stores, stores_ready = backing, lambda: None, lambda: backing
                self.backing = planned
                progress(f"starting {self.spec.instances} {self.spec.app} instances, "
                         + (f"the {self.spec.lb} balancer ({self.policy}) " if self.spec.balancer else "")
                         + "and the backing stores")
                ids = self._new_ids(self.spec.instances)
                started = [pool.submit(self._spawn, iid, None) for iid in ids]  # first: they take longest
                side = [(sid, pool.submit(self._spawn, sid, None, dict(env))) for sid, env in self.spec.side_instances]
                engine = pool.submit(self._start_engine) if self.spec.balancer else None
                self._step("instances and balancer starting")
                launch_stores()
                self.backing = stores_ready()
                self._step("stores ready")
                for sid, future in side:
                    self.side[sid] = future.result()
                self._add_instances(ids, [f.result() for f in started])
                self._step("instances ready")
                if self.backing != planned:  # a store had to move: the apps were told the old address
                    log.warning("a store moved while the lab started: restarting the instances with its new address")
                    self._respawn_all()
                if engine is not None:
                    engine.result()
                    self._step("balancer ready")
            self._forking = False
            if self.engine is not None:
                for inst in self.instances.values():
                    self.engine.add_backend(inst.id, inst.address)
                self._step("instances in rotation")
            for i in range(self.spec.job_workers if self.spec.app == "stateless" else 0):
                self.workers.append(services.start_worker(f"worker-{i + 1}", self.run_dir, self.app_env()))
            if self.engine is not None:
                self._event("started", "lab", f"{self.spec.app} x{self.spec.instances} behind {self.spec.lb}/{self.policy}")
            else:
                self._event("started", "lab", f"{self.spec.app} x{self.spec.instances}, no balancer")
            threading.Thread(target=self._supervise, name="statelab-supervisor", daemon=True).start()
        except BaseException:
            self.stop()
            raise
        return self

    def _step(self, what: str) -> None:
        """Note one step of the start in the timeline (seconds since start() was called)."""
        t = round(self._clock() - self._t_start, 3)
        self.timeline.append((t, what))
        log.info("lab %s start %6.3fs %s", self.run_dir.name, t, what)

    def _begin_stores(self, pool: ThreadPoolExecutor, shared: SharedStores | None
                      ) -> tuple[BackingUrls, Callable[[], object], Callable[[], BackingUrls]]:
        """Plan this lab's stores: return where they will be, how to start them and how to wait for them.

        Every address, password and key is chosen before anything starts, so that the instances,
        which take longest to start, can start first.
        """
        spec, stateless = self.spec, self.spec.app == "stateless"
        share = spec.shareable_stores() if shared is not None else ()
        self.shared_stores = share
        own = [n for n in spec.stores() if n not in share]
        self._event("stores", "lab", "; ".join(f"{what}: {', '.join(names)}" for what, names in
                                               (("its own", own), ("shared with the run", share)) if names))
        if shared is not None and share:
            self.tenancy = shared.lease(self.run_dir.name, share, spec.seed_users, spec.seed_products)
            self._shared = shared
        for old in ("redis", "redis-replica"):  # a fresh lab starts empty, even in a reused run directory
            shutil.rmtree(self.run_dir / old, ignore_errors=True)
        launches: list[Callable[[], object]] = []
        waits: list[Callable[[], None]] = []
        redis_url = None
        if stateless and "redis" not in share:
            redis_url = self._plan_redis(pool, launches, waits)
        db_url = None
        if "postgres" not in share:
            db_url = self._plan_postgres(pool, launches, waits)
        s3_plan: tuple[str, str, Secret] | None = None
        if stateless and "s3" not in share:  # last: the slowest to be ready (about a second)
            s3_plan = self._plan_s3(launches, waits)
        planned = self._backing(db_url, redis_url, s3_plan)

        def launch() -> None:
            for start in launches:
                start()
            self._step("stores starting" + (f" (shared: {', '.join(share)})" if share else ""))

        def ready() -> BackingUrls:
            for wait in waits:
                wait()
            if self.tenancy is not None and self._shared is not None:
                self._shared.wait(self.tenancy)
                with self._lock:
                    for name, svc in self.tenancy.services.items():
                        self.stores.setdefault(name, _tenant_view(svc, self.tenancy))
            redis = self.stores.get("redis") if "redis" not in share and not self.store_env else None
            s3 = self.stores.get("s3") if s3_plan is not None else None
            faults = self.stores.get("faults")
            s3_now = None
            if s3 is not None and s3_plan is not None:
                s3_now = ("http://" + faults.extra["s3"] if faults else s3.url, s3_plan[1], s3_plan[2])
            return self._backing(self._db_url, redis.url if redis else None, s3_now)

        return planned, launch, ready

    def _backing(self, db_url: str | None, redis_url: str | None, s3: tuple[str, str, Secret] | None) -> BackingUrls:
        """Return where the apps find the stores: this lab's own ones and its tenancy on the shared ones."""
        t, share = self.tenancy, self.shared_stores
        if t is not None and "postgres" in share:
            db_url = t.database_url
        if t is not None and "redis" in share:
            redis_url = t.redis_url
        if t is not None and "s3" in share:
            assert t.s3_endpoint is not None and t.s3_access_key is not None
            s3 = (t.s3_endpoint, t.s3_access_key, t.s3_secret_key or Secret(""))
        assert db_url is not None
        if s3 is None:
            return BackingUrls(db_url, redis_url)
        bucket = t.s3_bucket if t is not None and "s3" in share else BackingUrls.s3_bucket
        return BackingUrls(db_url, redis_url, s3[0], s3[1], s3[2], bucket)

    def _keep(self, svc: services.Service, name: str | None = None) -> services.Service:
        """Register a store this lab started (so that stop() stops it) and return it."""
        with self._lock:
            self.stores[name or svc.name] = svc
        return svc

    def _wait_store(self, name: str) -> None:
        self.stores[name].wait_ready()
        self._step(f"{name} ready")

    def _plan_redis(self, pool: ThreadPoolExecutor, launches: list[Callable[[], object]],
                    waits: list[Callable[[], None]]) -> str | None:
        """Plan this lab's own Redis (plain, AOF, or a master with a replica and a Sentinel); return its URL."""
        appendonly = self.spec.redis in ("aof", "sentinel")
        if self.spec.redis == "sentinel":  # the apps find the master through the Sentinel
            sentinel_port = services.free_port()
            self.store_env = {"LAB_REDIS_SENTINELS": f"127.0.0.1:{sentinel_port}",
                              "LAB_REDIS_MASTER": services.SENTINEL_MASTER}
            ha: list[Future[None]] = []

            def wait_ha() -> None:
                ha[0].result()
                self._step("redis master, replica and sentinel ready")

            launches.append(lambda: ha.append(pool.submit(self._start_redis_ha, sentinel_port)))
            waits.append(wait_ha)
            return None
        port = services.free_port()

        def launch() -> None:
            self._keep(services.start_redis(self.run_dir, port, appendonly=appendonly))
            self._remember_redis("redis", appendonly=appendonly)

        def wait() -> None:
            self._wait_store("redis")
            self._remember_redis("redis", appendonly=appendonly)  # its port, should it have moved

        launches.append(launch)
        waits.append(wait)
        return services.redis_url(port)

    def _start_redis_ha(self, sentinel_port: int) -> None:
        """Start a Redis master (AOF), its replica and a Sentinel; the apps find the master through it."""
        ha = services.start_redis_ha(self.run_dir, sentinels=1, appendonly=True, sentinel_ports=(sentinel_port,))
        with self._lock:
            self.stores.update({"redis": ha.master, "redis-replica": ha.replica, **{s.name: s for s in ha.sentinels}})
        self.store_env = ha.app_env()
        self._remember_redis("redis", appendonly=True)

    def _plan_s3(self, launches: list[Callable[[], object]], waits: list[Callable[[], None]]) -> tuple[str, str, Secret]:
        """Plan this lab's own S3 (and the fault proxy in front of it); return (endpoint, access key, secret)."""
        ports = {name: services.free_port() for name in services.S3_PORT_NAMES}
        access_key, secret = services.S3_ACCESS_KEY, Secret.random(18)
        launches.append(lambda: self._keep(services.start_s3(self.run_dir, access_key, secret, ports=ports)))
        waits.append(lambda: self._wait_store("s3"))
        endpoint = f"http://127.0.0.1:{ports['s3.port']}"
        if self.spec.s3_faults:  # the apps reach S3 through the fault proxy, where it will listen
            listen = f"127.0.0.1:{services.free_port()}"
            upstream = endpoint.removeprefix("http://")
            launches.append(lambda: self._keep(services.start_faults(self.run_dir, {"s3": upstream},
                                                                     listens={"s3": listen}), "faults"))
            waits.append(lambda: self._wait_faults(listen, upstream))
            endpoint = "http://" + listen
        return endpoint, access_key, secret

    def _plan_postgres(self, pool: ThreadPoolExecutor, launches: list[Callable[[], object]],
                       waits: list[Callable[[], None]]) -> str:
        """Plan this lab's own PostgreSQL (a copy of the seeded template when the seed fits in it); return its URL."""
        template = None
        if self.spec.seed_users <= seed.SEED_USERS and self.spec.seed_products <= seed.SEED_PRODUCTS:
            template = services.postgres_template(seed.SEED_USERS, seed.SEED_PRODUCTS)
        port, password = services.free_port(), Secret.random(18)
        # The apps are told the password it will have (a copy of the template has the template's until rotated).
        self._db_url = (f"postgresql://{services.POSTGRES_USER}:{password.value}@127.0.0.1:{port}/"
                        f"{services.POSTGRES_DB}")
        started: list[Future[services.Service]] = []
        launches.append(lambda: started.append(pool.submit(
            lambda: self._keep(services.start_postgres(self.run_dir, port, template=template)))))

        def wait() -> None:
            pg = started[0].result()
            self._step("postgres copied and started")
            pg.wait_ready()
            self._step("postgres ready")
            services.rotate_password(pg, password)  # the one the apps were told
            self._db_url = services.create_database(pg.url)  # a template's copy has it, seeded
            if template is None:
                seed.seed(self._db_url, users=self.spec.seed_users, products=self.spec.seed_products)

        waits.append(wait)
        return self._db_url

    def _wait_faults(self, listen: str, upstream: str) -> None:
        """Wait for the fault proxy, started beside S3; start it again if S3 had to move to other ports."""
        self._wait_store("s3")
        moved = self.stores["s3"].url.removeprefix("http://")
        if moved != upstream:
            self.stores["faults"].stop()
            self._keep(services.start_faults(self.run_dir, {"s3": moved}, listens={"s3": listen}), "faults")
        self._wait_store("faults")

    def _remember_redis(self, name: str, appendonly: bool) -> None:
        """Remember how to start a Redis store again on its port, with its data directory (for restart_store)."""
        port = int(self.stores[name].extra["port"])
        self._restarts[name] = lambda: services.start_redis(self.run_dir, port, name=name, appendonly=appendonly)

    def _start_engine(self) -> None:
        """Start the balancer with no backend yet: each instance joins it once the lab saw it ready."""
        self.engine = engine = self._engine_factory(self.spec.lb, health_interval_s=self.spec.health_interval_s,
                                                    health_path=self.spec.health_path)
        engine.start(self.run_dir, self.spec.port or services.free_port(), services.free_port(), self.policy, [])

    def _respawn_all(self) -> None:
        """Start every instance again (on its address), for instances told a store address that changed."""
        for inst in [*self.instances.values()]:
            inst.service.stop()
            inst.service = self._spawn(inst.id, inst.port)
            inst.port = int(inst.service.extra["port"])
        for sid, svc in list(self.side.items()):
            svc.stop()
            self.side[sid] = self._spawn(sid, None, dict(dict(self.spec.side_instances)[sid]))

    def stop(self) -> None:
        """Stop everything this lab started: the balancer, then instances, workers and stores at once.

        Shared stores are not this lab's to stop: its tenancy on them is given back (its database
        dropped, its Redis index flushed, its bucket deleted).
        """
        self._stop_supervisor.set()
        with self._lock:
            engine, self.engine = self.engine, None
        if engine is not None:
            try:
                engine.stop()
            except Exception:  # keep stopping the rest
                log.exception("stopping the balancer failed")
        with self._lock:
            doomed = [i.service for i in self.instances.values()] + self.workers + list(self.side.values())
            doomed += [s for s in self._spawned if all(s is not d for d in doomed)]
            self.instances.clear()
            self.workers = []
            self.side = {}
            self._spawned = []
            own = [svc for name, svc in self.stores.items() if name not in self.shared_stores]
        # Traffic is over and everything the processes held is thrown away: no grace to wait out
        # (a deploy's restart, which users see, stops an instance gracefully instead).
        with ThreadPoolExecutor(max_workers=8) as pool:
            stopped = [pool.submit(s.stop, TEARDOWN_GRACE_S) for s in doomed]
            stopped += [pool.submit(s.stop) for s in own]  # each its own way (PostgreSQL: a fast shutdown)
            for future in stopped:
                future.result()
        if self._forks is not None:  # after its instances: what it still has dies with it
            self._forks.stop()
            self._forks = None
        if self.tenancy is not None and self._shared is not None:
            self._shared.release(self.tenancy)
            self.tenancy = None
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
        env.update(self.store_env)
        env.update({
            "LAB_SECRET_KEY": self.secret_key.value,
            "LAB_AUTH_MODE": self.spec.auth_mode,
        })
        env.update(dict(self.spec.app_env))
        return env

    def _start_forks(self) -> None:
        """Start the fork server the lab's instances are forked from (once; on failure they start as new processes)."""
        with self._lock:
            if self._forks_started:
                return
            self._forks_started = True
        try:
            self._forks = ForkServer(self.run_dir, [services.APP_MODULES[self.spec.app]])
            self._forks.start()
            self._step("fork server ready")
        except Exception as exc:  # slower, not broken: each instance is then a new interpreter
            log.warning("the fork server did not start (%s): instances start as new processes", exc)
            if self._forks is not None:
                self._forks.stop()
            self._forks = None
        finally:
            self._forks_ready.set()

    def _start_forked(self, kind: str, instance_id: str, run_dir: Path, env: Mapping[str, str], *,
                      port: int | None, threads: int, workers: int) -> services.Service:
        """Start one of the lab's own instances: while the lab starts, forked from its fork server."""
        forks = None
        if self._forking:
            self._start_forks()  # started by start() already: this only waits for it
            self._forks_ready.wait()
            forks = self._forks
        return services.start_app(kind, instance_id, run_dir, env, port=port, threads=threads, workers=workers,
                                  forks=forks)

    def _spawn(self, instance_id: str, port: int | None, extra_env: Mapping[str, str] | None = None) -> services.Service:
        """Start an instance process and wait until it answers with its own id; retry on a new port if taken."""
        # Each instance has its own "local disk", as separate machines or containers would.
        env = {"LAB_UPLOAD_DIR": str(self.run_dir / "uploads" / instance_id), **self.app_env(), **(extra_env or {})}
        for attempt in range(START_RETRIES):
            svc = self._start_instance(self.spec.app, instance_id, self.run_dir, env, port=port,
                                       threads=self.spec.threads, workers=self.spec.workers)
            with self._lock:
                self._spawned.append(svc)  # stop() stops it even if the start fails on another thread
            try:
                svc.wait_ready()
                self._step(f"{instance_id} ready")
                return svc
            except ServiceFailed as exc:
                if "in use" not in exc.log_tail or attempt == START_RETRIES - 1:
                    raise
                port = None
        raise AssertionError("unreachable")

    def _new_ids(self, count: int) -> list[str]:
        ids = [f"app-{self._next_id + i}" for i in range(count)]
        self._next_id += count
        return ids

    def _add_instances(self, ids: Sequence[str], started: Sequence[services.Service]) -> list[Instance]:
        """Register started instance processes as the lab's instances."""
        new = []
        with self._lock:
            for iid, svc in zip(ids, started):
                inst = Instance(iid, int(svc.extra["port"]), svc)
                self.instances[iid] = inst
                new.append(inst)
            self._spawned = [s for s in self._spawned if all(s is not i.service for i in new)]
        return new

    def _start_instances(self, count: int) -> list[Instance]:
        ids = self._new_ids(count)
        with ThreadPoolExecutor(max_workers=max(1, count)) as pool:
            started = list(pool.map(lambda i: self._spawn(i, None), ids))
        return self._add_instances(ids, started)

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
        if self.engine is None and not self.spec.balancer:
            return
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

    def kill_store(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send sig to a backing store (`redis`, `s3`, ...); nothing restarts it unless `restart_store` is called."""
        if name not in self.stores:
            raise ControlError(f"no store {name!r}: running are {', '.join(self.stores)}")
        self._refuse_shared(name)
        self._event("killed", name, signal.Signals(sig).name)
        self.stores[name].process.signal(sig)

    def restart_store(self, name: str) -> None:
        """Start a (killed or stopped) Redis store again on its own port, with its own data directory.

        A port taken meanwhile is an error, never a move to another port: the apps would not find it.
        """
        self._refuse_shared(name)
        if name not in self._restarts:
            raise ControlError(f"the lab cannot restart store {name!r} (only {', '.join(self._restarts) or 'none'})")
        self.stores[name].stop()
        fresh = self._restarts[name]()
        fresh.respawn = None
        self.stores[name] = fresh.wait_ready()
        self._event("restarted", name)

    def kill_worker(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send sig to a job worker (`worker-1`, ...); it is not restarted."""
        worker = next((w for w in self.workers if w.name == name), None)
        if worker is None:
            raise ControlError(f"no job worker {name!r}: running are {', '.join(w.name for w in self.workers)}")
        self._event("killed", name, signal.Signals(sig).name)
        worker.process.signal(sig)

    def _refuse_shared(self, name: str) -> None:
        if name in self.shared_stores:
            raise ControlError(f"store {name!r} is shared with the run's other labs: a lab that kills or restarts a "
                               f"store must run its own (LabSpec.own_stores=({name!r},))")

    @property
    def faults(self) -> FaultClient:
        """The fault proxy in front of S3 (LabSpec.s3_faults); its proxy is named `s3`."""
        if "faults" not in self.stores:
            raise ControlError("this lab runs no fault proxy (LabSpec.s3_faults)")
        return FaultClient(self.stores["faults"].url)
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

    @property
    def entry_url(self) -> str:
        """Where users reach the lab: its balancer, or without one its first instance."""
        if self.engine is not None or self.spec.balancer:
            return self.balancer_url
        first = next(iter(self.instances.values()), None)
        return first.url if first is not None else ""

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
                        if self.engine is not None:
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


def _tenant_view(shared: services.Service, t: Tenancy) -> services.Service:
    """Return a lab's view of a shared store: the shared process, at the URL of the lab's tenancy."""
    url = {"postgres": t.database_url, "redis": t.redis_url}.get(shared.name) or shared.url
    extra = dict(shared.extra)
    if shared.name == "s3":
        extra["bucket"] = t.s3_bucket
    return services.Service(shared.name, shared.process, url, extra=extra)


def _public_url(url: str) -> str:
    """Return url with any password masked (for status tables and state files)."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        return f"{scheme}://{cred.split(':', 1)[0]}:****@{host}"
    return url


__all__ = ["InstanceStatus", "Lab", "LabSpec", "LabStatus", "MakeEngine", "StartInstance"]
