"""Backing stores that a run's labs share: started once per run, each lab on a clean tenancy of its own.

Starting a PostgreSQL, a Redis and an S3 for every lab costs about two seconds per scenario and
as many processes as labs. `SharedStores` starts each store once, on first use, and gives each lab
a `Tenancy`: a database copied from the seeded one (`CREATE DATABASE ... TEMPLATE`, tens of ms), a
Redis database index of its own (flushed) and a bucket of its own. Releasing a tenancy drops the
database, flushes the index and deletes the bucket with what the lab uploaded, so no lab sees
another's data. A lab whose scenario kills, restarts or faults a store, or reads figures that a
store keeps for its whole process, keeps its own store (`LabSpec.own_stores`).
"""

from __future__ import annotations

import collections
import itertools
import logging
import shutil
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from statelab import seed, services
from statelab.config import Secret
from statelab.errors import ServiceFailed
from statelab.procs import free_port

if TYPE_CHECKING:  # importing minio costs 0.1 s that a lab without S3 need not pay
    from minio import Minio

log = logging.getLogger(__name__)

STORE_NAMES = ("postgres", "redis", "s3")
REDIS_DATABASES = 64  # index 0 stays unused: each tenancy gets one of 1..63
# More than one lab's instances hold connections at once (up to five labs side by side, each
# gunicorn worker with a pool of up to 10).
SHARED_MAX_CONNECTIONS = 800
SEEDED_DB = services.POSTGRES_DB  # the seeded database in a copy of the template cluster
Ready = Callable[[], services.Service]  # wait until a store started in the background is ready; return it


@dataclass
class Tenancy:
    """One lab's share of the run's stores: where its apps find them, known before they are ready."""

    key: str
    stores: tuple[str, ...]  # which of the lab's stores are shared ones
    database: str = ""
    database_url: str | None = None
    redis_db: int | None = None
    redis_url: str | None = None
    s3_endpoint: str | None = None
    s3_access_key: str | None = None
    s3_secret_key: Secret | None = None
    s3_bucket: str = ""
    seed_users: int = seed.SEED_USERS
    seed_products: int = seed.SEED_PRODUCTS
    ready: bool = False
    services: dict[str, services.Service] = field(default_factory=dict)  # the shared servers, once ready


class SharedStores:
    """The stores of one run, started on first use and stopped with the run."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir.resolve()
        self.starts: collections.Counter[str] = collections.Counter()  # servers started, by store (tests)
        self._lock = threading.RLock()  # lease() starts stores while holding it
        self._create_lock = threading.Lock()
        self._futures: dict[str, Future[services.Service]] = {}
        self._started: dict[str, services.Service] = {}  # each store's server from the moment it is spawned
        self._planned: dict[str, dict[str, str]] = {}
        self._free_dbs = list(range(1, REDIS_DATABASES))
        self._numbers = itertools.count(1)
        self._stopped = False

    def lease(self, owner: str, stores: Iterable[str], seed_users: int = seed.SEED_USERS,
              seed_products: int = seed.SEED_PRODUCTS) -> Tenancy:
        """Return a tenancy on these stores for one lab, starting any not yet running (without waiting).

        Its addresses are the planned ones: `wait` makes it ready and says where the stores really
        are (a store that had to move off a port taken meanwhile is somewhere else).
        """
        names = tuple(n for n in STORE_NAMES if n in set(stores))
        with self._lock:
            if self._stopped:
                raise ServiceFailed("the run's shared stores were stopped")
            n = next(self._numbers)
            t = Tenancy(owner, names, seed_users=seed_users, seed_products=seed_products)
            for name in names:
                self._ensure(name)
            if "postgres" in names:
                t.database = f"lab_{n}"
                t.database_url = services.database_url(self._planned["postgres"]["url"], t.database)
            if "redis" in names:
                if not self._free_dbs:
                    raise ServiceFailed(f"no free Redis database index for {owner}: "
                                        f"{REDIS_DATABASES - 1} labs hold one already")
                t.redis_db = self._free_dbs.pop(0)
                t.redis_url = f"{self._planned['redis']['url']}{t.redis_db}"
            if "s3" in names:
                s3 = self._planned["s3"]
                t.s3_endpoint, t.s3_access_key = s3["url"], s3["access_key"]
                t.s3_secret_key, t.s3_bucket = Secret(s3["secret_key"]), f"lab-{n}"
        return t

    def wait(self, t: Tenancy) -> Tenancy:
        """Wait until the tenancy's stores are ready and its database, Redis index and bucket are clean."""
        for name in t.stores:
            t.services[name] = self._futures[name].result()
        if "postgres" in t.stores:
            server = t.services["postgres"].url
            with self._create_lock:  # one copy of the seeded database at a time
                if t.seed_users <= seed.SEED_USERS and t.seed_products <= seed.SEED_PRODUCTS:
                    t.database_url = services.create_database(server, t.database, template=SEEDED_DB)
                else:  # more than the template holds: seed a database of its own
                    t.database_url = services.create_database(server, t.database)
            if t.seed_users > seed.SEED_USERS or t.seed_products > seed.SEED_PRODUCTS:
                seed.seed(t.database_url, users=t.seed_users, products=t.seed_products)
        if "redis" in t.stores:
            t.redis_url = t.services["redis"].url.rsplit("/", 1)[0] + f"/{t.redis_db}"
            _flush(t.redis_url)
        if "s3" in t.stores:
            s3 = t.services["s3"]
            t.s3_endpoint = s3.url
            _make_bucket(_s3_client(s3), t.s3_bucket)
        t.ready = True
        return t

    def release(self, t: Tenancy) -> None:
        """Give a tenancy back: drop its database, flush its Redis index, delete its bucket and objects."""
        for name, undo in (("postgres", self._drop_database), ("redis", self._flush_index), ("s3", self._drop_bucket)):
            if name not in t.stores:
                continue
            future = self._futures.get(name)
            if future is None or not future.done() or future.exception() is not None:
                continue
            try:
                undo(t, future.result())
            except Exception as exc:  # a store that died meanwhile keeps nothing worth cleaning
                log.warning("releasing %s's %s failed: %s", t.key, name, exc)
        if t.redis_db is not None:
            with self._lock:
                self._free_dbs.append(t.redis_db)
            t.redis_db = None

    def stop(self) -> None:
        """Stop every store this run started and delete their data (their logs stay)."""
        with self._lock:
            self._stopped = True
            futures = dict(self._futures)
        with self._lock:
            started = dict(self._started)
        for name, future in futures.items():
            # A store still starting (a Ctrl-C during the first lab's start) is stopped where it is:
            # its starter then fails, and nobody waits for it any more.
            svc = future.result() if future.done() and future.exception() is None else started.get(name)
            if svc is not None:
                svc.stop()
        for name in ("s3", "redis", "postgres"):
            shutil.rmtree(self.run_dir / name, ignore_errors=True)

    # --- starting a store ---------------------------------------------------------------------

    def _ensure(self, name: str) -> None:
        """Start store `name` in the background unless it runs already (with the lock held)."""
        if name in self._futures:
            return
        future: Future[services.Service] = Future()
        self._futures[name] = future
        self.starts[name] += 1
        starter = {"postgres": self._start_postgres, "redis": self._start_redis, "s3": self._start_s3}[name]
        ready = starter()
        threading.Thread(target=_resolve, args=(future, ready), name=f"statelab-shared-{name}", daemon=True).start()

    def _start_postgres(self) -> Ready:
        port, password = free_port(), Secret.random(18)
        self._planned["postgres"] = {"url": f"postgresql://{services.POSTGRES_USER}:{password.value}@127.0.0.1:"
                                            f"{port}/postgres"}

        def ready() -> services.Service:
            template = services.postgres_template(seed.SEED_USERS, seed.SEED_PRODUCTS)
            pg = self._keep(services.start_postgres(self.run_dir, port, template=template,
                                                    max_connections=SHARED_MAX_CONNECTIONS)).wait_ready()
            services.rotate_password(pg, password)
            return pg

        return ready

    def _start_redis(self) -> Ready:
        redis = self._keep(services.start_redis(self.run_dir, free_port(), databases=REDIS_DATABASES))
        self._planned["redis"] = {"url": redis.url.rsplit("/", 1)[0] + "/"}
        return redis.wait_ready

    def _start_s3(self) -> Ready:
        s3 = self._keep(services.start_s3(self.run_dir))
        self._planned["s3"] = {"url": s3.url, "access_key": s3.extra["access_key"],
                               "secret_key": s3.extra["secret_key"]}
        return s3.wait_ready

    def _keep(self, svc: services.Service) -> services.Service:
        with self._lock:
            self._started[svc.name] = svc
        return svc

    # --- releasing ----------------------------------------------------------------------------

    def _drop_database(self, t: Tenancy, pg: services.Service) -> None:
        services.drop_database(pg.url, t.database)

    def _flush_index(self, t: Tenancy, redis_server: services.Service) -> None:
        _flush(redis_server.url.rsplit("/", 1)[0] + f"/{t.redis_db}")

    def _drop_bucket(self, t: Tenancy, s3: services.Service) -> None:
        from minio.deleteobjects import DeleteObject

        client = _s3_client(s3)
        if not client.bucket_exists(t.s3_bucket):
            return
        doomed = [DeleteObject(o.object_name) for o in client.list_objects(t.s3_bucket, recursive=True)
                  if o.object_name]
        for error in client.remove_objects(t.s3_bucket, doomed):
            log.warning("deleting %s from bucket %s failed: %s", error.name, t.s3_bucket, error.message)
        client.remove_bucket(t.s3_bucket)


def _resolve(future: Future[services.Service], ready: Ready) -> None:
    try:
        future.set_result(ready())
    except BaseException as exc:  # handed to every lab that waits for this store
        future.set_exception(exc)


def _flush(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=5.0)
    try:
        client.flushdb()
    finally:
        client.close()


def _make_bucket(client: "Minio", bucket: str) -> None:
    """Create a bucket unless the lab's own instances did already (each tries at its start)."""
    from minio.error import S3Error

    try:
        client.make_bucket(bucket)
    except S3Error as exc:
        if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise


def _s3_client(s3: services.Service) -> "Minio":
    from minio import Minio

    return Minio(s3.url.removeprefix("http://"), access_key=s3.extra["access_key"],
                 secret_key=s3.extra["secret_key"], secure=False, region="us-east-1")

__all__ = ["REDIS_DATABASES", "STORE_NAMES", "SharedStores", "Tenancy"]
