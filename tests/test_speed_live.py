"""A run's labs share its stores, live: each store starts once per run, and every lab finds its tenancy clean.

Two small scenarios run through the real runner: the first writes into each store through its
lab's tenancy, the second checks that nothing of it is left (its databases dropped, its Redis
index flushed, its buckets deleted) and that no two labs ever shared a database, an index or a
bucket. A lab forks the instances it starts with from its fork server, and starts those of a
deploy or a scale-out as new processes. `statelab up` is held to a generous ceiling to its first
200: the fine figures are bench/bench_start.py's job, on a quiet machine.
"""

from __future__ import annotations

import collections
import io
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import psutil
import psycopg
import pytest
import redis
import requests
from minio import Minio

from statelab import seed, services
from statelab.errors import ControlError
from statelab.harness import Harness
from statelab.procs import free_port
from statelab.runner import NullProgress, RunOptions, run_all
from statelab.scenario import AppCase, CaseContext, Measurements, Profile, Verdict
from statelab.topology import Lab, LabSpec
from statelab.turns import TOGETHER

pytestmark = pytest.mark.live

UP_CEILING_S = 10.0  # generous: about 2 s on a quiet machine (bench/bench_start.py)


@dataclass
class Probe:
    """A scenario whose cases look at their lab's tenancy: clean when it starts, and (writer) leave data in it."""

    name: str
    write: bool
    seen: dict[str, dict[str, Any]] = field(default_factory=dict)
    title: str = "tenancy probe"
    summary: str = "looks at a lab's share of the run's stores"
    expect: dict[str, Any] = field(default_factory=dict)
    tolerances: tuple[Any, ...] = ()
    traffic: str = TOGETHER

    def cases(self) -> tuple[AppCase, ...]:
        return (AppCase("stateless", "a"), AppCase("stateless", "b"), AppCase("stateful"))

    def profile(self, quick: bool, users: int | None) -> Profile:
        return Profile(users=1, instances=1, phase_s=0.0, seed_users=100)

    def run(self, ctx: CaseContext) -> Measurements:
        with Harness(ctx) as h:
            lab = h.start_lab(1, "round-robin", seed_users=100, job_workers=0)
            assert lab.backing is not None
            seen: dict[str, Any] = {"shared": lab.shared_stores, "database": lab.backing.database_url.rsplit("/", 1)[1],
                                    "pids": {n: s.process.pid for n, s in lab.stores.items()}}
            with psycopg.connect(lab.backing.database_url, autocommit=True, connect_timeout=5) as conn:
                seen["users"] = conn.execute("SELECT count(*) FROM users").fetchone()[0]  # type: ignore[index]
                seen["marker"] = conn.execute("SELECT to_regclass('lab_marker') IS NOT NULL").fetchone()[0]  # type: ignore[index]
                seen["databases"] = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
                if self.write:
                    conn.execute("CREATE TABLE lab_marker (id int)")
            if lab.backing.redis_url:
                client = redis.Redis.from_url(lab.backing.redis_url)
                seen["redis_db"] = client.connection_pool.connection_kwargs["db"]
                seen["keys"] = client.dbsize()
                if self.write:
                    client.set("lab-marker", ctx.app.key)
                client.close()
                try:
                    lab.kill_store("redis")
                except ControlError:
                    seen["kill_refused"] = True
            if lab.backing.s3_endpoint:
                s3 = Minio(lab.backing.s3_endpoint.removeprefix("http://"), access_key=lab.backing.s3_access_key,
                           secret_key=lab.backing.s3_secret_key.value if lab.backing.s3_secret_key else "",
                           secure=False, region="us-east-1")
                seen["bucket"] = lab.backing.s3_bucket
                seen["objects"] = len(list(s3.list_objects(lab.backing.s3_bucket)))
                seen["buckets"] = {b.name for b in s3.list_buckets()}
                if self.write:
                    s3.put_object(lab.backing.s3_bucket, "marker", io.BytesIO(b"x"), 1)
            seen["status"] = requests.get(h.base_url + "/products/1", timeout=5).status_code  # (it fills the cache)
            h.start_samplers()
            h.finish()
            self.seen[ctx.app.key] = seen
        return Measurements(())

    def verdict(self, m: Measurements) -> Verdict:
        return Verdict("survived", "looked")


def _counting(counts: collections.Counter[str], name: str, start: Callable[..., services.Service]
              ) -> Callable[..., services.Service]:
    lock = threading.Lock()

    def counted(*args: Any, **kwargs: Any) -> services.Service:
        with lock:
            counts[name] += 1
        return start(*args, **kwargs)

    return counted


def test_a_run_starts_each_store_once_and_gives_every_lab_a_clean_tenancy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    services.postgres_template(seed.SEED_USERS, seed.SEED_PRODUCTS)  # a first build would start a server of its own
    starts: collections.Counter[str] = collections.Counter()
    for name in ("start_postgres", "start_redis", "start_s3"):
        monkeypatch.setattr(services, name, _counting(starts, name, getattr(services, name)))
    writer, checker = Probe("tenancy-writer", write=True), Probe("tenancy-checker", write=False)
    report = run_all(RunOptions(scenario="probe", quick=True, run_dir=tmp_path / "run"), NullProgress(),
                     scenarios=[writer, checker])  # type: ignore[list-item]
    assert [r.outcome for r in report.results] == ["survived"] * 6, [r.verdict.explanation for r in report.results]
    assert starts == {"start_postgres": 1, "start_redis": 1, "start_s3": 1}  # once per run, for six labs

    labs = [*writer.seen.values(), *checker.seen.values()]
    assert all(s["status"] == 200 and s["users"] >= 100 for s in labs)
    assert writer.seen["stateful"]["shared"] == ("postgres",)
    assert writer.seen["stateless-a"]["shared"] == ("postgres", "redis", "s3")
    assert all(s.get("kill_refused") for s in labs if "redis_db" in s)
    # no two labs side by side ever share a database, an index or a bucket
    for probe in (writer, checker):
        stateless = [probe.seen["stateless-a"], probe.seen["stateless-b"]]
        assert stateless[0]["redis_db"] != stateless[1]["redis_db"]
        assert stateless[0]["bucket"] != stateless[1]["bucket"]
        assert len({s["database"] for s in probe.seen.values()}) == 3
    # each lab found its share clean, the checkers too: what the writers left was dropped, flushed, deleted
    assert not any(s["marker"] for s in labs)
    assert all(s["keys"] == 0 and s["objects"] == 0 for s in labs if "redis_db" in s)
    written = {s["database"] for s in writer.seen.values()}
    assert not written & checker.seen["stateful"]["databases"]
    assert not {s["bucket"] for s in writer.seen.values() if "bucket" in s} & checker.seen["stateless-a"]["buckets"]
    # the shared servers stopped with the run, and their data went with them
    pids = {pid for s in labs for pid in s["pids"].values() if pid}
    assert pids and not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not any((tmp_path / "run" / "stores" / d).exists() for d in ("s3", "redis", "postgres"))


def test_up_answers_through_its_balancer_within_a_generous_ceiling(tmp_path: Path) -> None:
    port = free_port()
    argv = [sys.executable, "-m", "statelab", "up", "--app", "stateless", "--port", str(port), "--no-dashboard",
            "--state-file", str(tmp_path / "lab.json"), "--run-dir", str(tmp_path / "run")]
    services.postgres_template(seed.SEED_USERS, seed.SEED_PRODUCTS)  # built once per machine: not part of `up`
    with open(tmp_path / "up.log", "w") as out:
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        first = None
        while first is None and time.monotonic() - t0 < 60:
            assert proc.poll() is None, (tmp_path / "up.log").read_text()
            try:
                if requests.get(f"http://127.0.0.1:{port}/products/1", timeout=1).status_code == 200:
                    first = time.monotonic() - t0
            except requests.RequestException:
                time.sleep(0.02)
        assert first is not None and first < UP_CEILING_S, f"first 200 after {first} s"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert proc.returncode == 0, (tmp_path / "up.log").read_text()


def test_a_lab_forks_the_instances_it_starts_with_and_starts_later_ones_as_new_processes(tmp_path: Path) -> None:
    lab = Lab(LabSpec(app="stateful", instances=2, run_dir=tmp_path / "lab", health_interval_s=0.25))
    try:
        lab.start()
        forks = lab._forks
        assert forks is not None and forks.process is not None and forks.process.pid is not None
        server = forks.process.pid
        assert "fork server ready" in [what for _, what in lab.timeline]
        first = {i.id: i.service.process.pid for i in lab.instances.values()}
        assert all(psutil.Process(pid).ppid() == server for pid in first.values() if pid)  # forked
        assert requests.get(lab.balancer_url + "/healthz", timeout=5).status_code == 200
        # users are there from now on: what starts now starts as a new process, as a new container would
        lab.scale(3)
        lab.restart_instance("app-1")
        later = [lab.instances["app-3"].service.process.pid, lab.instances["app-1"].service.process.pid]
        assert all(pid and psutil.Process(pid).ppid() == os.getpid() for pid in later)
        # a forked instance's death is seen as any child's, with its exit code
        victim = lab.instances["app-2"].service.process
        victim.signal(signal.SIGKILL)
        deadline = time.monotonic() + 10
        while victim.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert victim.poll() == -signal.SIGKILL
        with pytest.raises(ValueError, match="gunicorn"):
            forks.popen(["python", "-c", "pass"])
    finally:
        lab.stop()
    pids = [server, *first.values(), *later]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_running(p) for p in pids):
        time.sleep(0.05)
    assert not [p for p in pids if _running(p)]


def _running(pid: int | None) -> bool:
    try:
        return pid is not None and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
