"""Redis as a dependency: what survives a kill -9 with persistence off or AOF everysec, how long a
Sentinel failover takes, and the stateless app riding through one (sessions kept, brief 503s).
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pytest
import redis
import requests
from redis.sentinel import Sentinel

from statelab import services
from statelab.config import BackingUrls
from tests.support.apps import app_test_config, login, make_app

pytestmark = pytest.mark.live
WRITE_TIMEOUT_S = 0.5


@dataclass
class Writer:
    """INCR a counter as fast as possible in a thread, counting acknowledged writes over time."""

    connect: Callable[[], redis.Redis]
    acked: int = 0
    errors: int = 0
    first_error: float | None = None
    recovered: float | None = None
    history: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> "Writer":
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        client = self.connect()
        while not self._stop.is_set():
            try:
                client.incr("counter")
            except redis.RedisError:
                self.errors += 1
                self.first_error = self.first_error or time.monotonic()
                time.sleep(0.01)
                continue
            self.acked += 1
            if self.first_error is not None and self.recovered is None:
                self.recovered = time.monotonic()
            self.history.append((time.monotonic(), self.acked))

    def acked_before(self, t: float) -> int:
        return max((n for at, n in self.history if at <= t), default=0)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)


def _kill_and_restart(run_dir: Path, name: str, appendonly: bool) -> tuple[Writer, int, float]:
    """Write, kill -9 Redis mid-stream, start it again on the same port and data dir; return (writer, survived, killed_at)."""
    server = services.start_redis(run_dir, name=name, appendonly=appendonly).wait_ready()
    port = int(server.extra["port"])
    writer = Writer(lambda: redis.Redis(port=port, socket_timeout=WRITE_TIMEOUT_S)).start()
    try:
        _until(lambda: writer.acked > 2000, 20)
        server.process.signal(signal.SIGKILL)
        killed_at = time.monotonic()
        server.stop()
        writer.stop()
        server = services.start_redis(run_dir, port=port, name=name, appendonly=appendonly).wait_ready()
        survived = int(redis.Redis(port=port, socket_timeout=2).get("counter") or 0)
    finally:
        writer.stop()
        server.stop()
    return writer, survived, killed_at


def _until(check: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_without_persistence_a_restart_forgets_everything(tmp_path: Path) -> None:
    writer, survived, _ = _kill_and_restart(tmp_path, "redis-plain", appendonly=False)
    assert writer.acked > 2000 and survived == 0


def test_aof_everysec_keeps_what_was_acknowledged_across_a_kill(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """A process kill loses at most the last second or two of writes (the fsync period; in practice none,
    since acknowledged writes are already in the OS page cache: only a machine crash loses them)."""
    writer, survived, killed_at = _kill_and_restart(tmp_path, "redis-aof", appendonly=True)
    lost = writer.acked - survived
    assert survived >= writer.acked_before(killed_at - 2.0) and lost <= writer.acked
    with capsys.disabled():
        print(f"\nAOF everysec, kill -9: acknowledged {writer.acked}, survived {survived}, lost {max(lost, 0)}")


@pytest.fixture
def redis_ha(tmp_path: Path) -> Iterator[services.RedisHA]:
    ha = services.start_redis_ha(tmp_path, sentinels=1)
    try:
        yield ha
    finally:
        ha.stop()


def test_sentinel_fails_over_to_the_replica_within_seconds(redis_ha: services.RedisHA,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    sentinel = Sentinel([("127.0.0.1", int(s.extra["port"])) for s in redis_ha.sentinels], socket_timeout=1)
    writer = Writer(lambda: sentinel.master_for(redis_ha.master_name, socket_timeout=WRITE_TIMEOUT_S,
                                                socket_connect_timeout=WRITE_TIMEOUT_S)).start()
    try:
        _until(lambda: writer.acked > 1000, 20)
        redis_ha.master.process.signal(signal.SIGKILL)
        killed_at = time.monotonic()
        _until(lambda: writer.recovered is not None, 30)
        writer.stop()
    finally:
        writer.stop()
    assert writer.recovered is not None
    failover_s = writer.recovered - killed_at
    new_master = sentinel.discover_master(redis_ha.master_name)
    assert new_master[1] == int(redis_ha.replica.extra["port"])
    survived = int(sentinel.master_for(redis_ha.master_name, socket_timeout=2).get("counter") or 0)
    assert survived >= writer.acked_before(killed_at - 1.0)  # asynchronous replication: at most a moment lost
    assert failover_s < 15, failover_s
    with capsys.disabled():
        print(f"\nSentinel failover (down-after 1 s): writes back after {failover_s:.2f} s, "
              f"{writer.errors} failed tries, acknowledged {writer.acked}, survived {survived}")


def test_the_stateless_app_finds_the_new_master_through_sentinel(redis_ha: services.RedisHA, backing: BackingUrls,
                                                                 tmp_path: Path, username: str) -> None:
    config = app_test_config("stateless", backing, tmp_path / "uploads", LAB_REDIS_URL="", **redis_ha.app_env())
    app = make_app("stateless", config)
    try:
        client = app.test_client()
        login(client, username)
        assert client.post("/cart/items", json={"product_id": 3, "qty": 2}).status_code == 201
        redis_ha.master.process.signal(signal.SIGKILL)
        killed_at = time.monotonic()
        statuses: list[int] = []
        slowest_s = 0.0
        while 503 not in statuses or statuses[-1] != 200:
            started = time.monotonic()
            statuses.append((response := client.get("/me")).status_code)
            slowest_s = max(slowest_s, time.monotonic() - started)
            assert time.monotonic() - killed_at < 20, statuses[-5:]
            time.sleep(0.05)
        assert set(statuses) == {200, 503} and slowest_s < 3.0  # brief errors, answered fast, no 500, no hang
        assert response.get_json()["user"]["username"] == username  # the session survived the failover
        assert client.get("/cart").get_json()["items"] == [{"product_id": 3, "qty": 2}]
        assert client.get("/readyz").status_code == 200
    finally:
        app.extensions["lab"].close()


def test_sentinel_settings_are_checked_at_start(backing: BackingUrls, tmp_path: Path) -> None:
    from stateless_app.config import ConfigError

    with pytest.raises(ConfigError, match="LAB_REDIS_SENTINELS"):
        make_app("stateless", app_test_config("stateless", backing, tmp_path, LAB_REDIS_SENTINELS="nohost"))
    with pytest.raises(ConfigError, match="LAB_REDIS_URL"):
        make_app("stateless", app_test_config("stateless", backing, tmp_path, LAB_REDIS_URL=""))


def test_readyz_follows_a_redis_outage_on_a_live_instance(backing: BackingUrls, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """What a balancer checking /readyz would see: 503s from the moment Redis dies, each answered fast,
    and 200 again as soon as Redis is back (the client reconnects on its next call)."""
    own = services.start_redis(tmp_path, name="redis-readyz").wait_ready()
    port = int(own.extra["port"])
    env = {**backing.app_env(), "LAB_REDIS_URL": own.url, "LAB_STORE_TIMEOUT_S": "0.5"}
    app = services.start_app("stateless", "readyz-1", tmp_path, env).wait_ready()
    http = requests.Session()
    try:
        assert http.get(f"{app.url}/readyz", timeout=5).status_code == 200
        own.process.signal(signal.SIGKILL)
        killed_at = time.monotonic()
        while (response := http.get(f"{app.url}/readyz", timeout=5)).status_code == 200:
            assert time.monotonic() - killed_at < 5
        down_after_s = time.monotonic() - killed_at
        assert response.status_code == 503 and response.json()["error"].startswith("redis unreachable")
        answer_s = max(_timed_status(http, f"{app.url}/readyz", 503) for _ in range(5))
        own.stop()
        own = services.start_redis(tmp_path, port=port, name="redis-readyz").wait_ready()
        back_at = time.monotonic()
        while http.get(f"{app.url}/readyz", timeout=5).status_code != 200:
            assert time.monotonic() - back_at < 10
        up_after_s = time.monotonic() - back_at
    finally:
        app.stop()
        own.stop()
    assert answer_s < 2.0 and up_after_s < 2.0, (answer_s, up_after_s)
    with capsys.disabled():
        print(f"\n/readyz: 503 {down_after_s * 1000:.0f} ms after Redis died (each answered in <= {answer_s * 1000:.0f} ms), "
              f"200 again {up_after_s * 1000:.0f} ms after Redis was back")


def _timed_status(http: requests.Session, url: str, status: int) -> float:
    started = time.monotonic()
    assert http.get(url, timeout=5).status_code == status
    return time.monotonic() - started
