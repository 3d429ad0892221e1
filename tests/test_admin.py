"""The admin API: routing of admin requests (pure) and the builtin engine driving a live balancer."""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path

import pytest
import requests

from statelab.balancer.admin import AdminError, handle
from statelab.balancer.options import BalancerOptions
from statelab.balancer.records import RecordRing
from statelab.balancer.server import Balancer
from statelab.engines import BackendStatus, Record, make_engine
from statelab.engines.builtin import BuiltinEngine
from statelab.errors import ConfigError, ControlError
from statelab.procs import free_port
from tests.support.backends import start_backend


def balancer() -> Balancer:
    return Balancer(BalancerOptions(port=0, backends=(("app-1", "127.0.0.1:9001"), ("app-2", "127.0.0.1:9002")),
                                    policy="round-robin", admin_port=None))


def test_backends_document_has_every_field() -> None:
    status, doc = handle(balancer(), "GET", "/backends", b"")
    assert status == 200 and doc["policy"] == "round-robin"
    assert [b["id"] for b in doc["backends"]] == ["app-1", "app-2"]
    assert set(doc["backends"][0]) == {"id", "address", "state", "healthy", "active", "requests", "errors",
                                       "p50_ms", "p99_ms"}


def test_add_state_remove_and_policy() -> None:
    bal = balancer()
    assert handle(bal, "POST", "/backends", b'{"id": "app-3", "address": "127.0.0.1:9003"}')[0] == 201
    assert [b.id for b in bal.pool.eligible] == ["app-1", "app-2", "app-3"]
    handle(bal, "PUT", "/backends/app-1/state", b'{"state": "drain"}')
    assert [b.id for b in bal.pool.eligible] == ["app-2", "app-3"]
    handle(bal, "DELETE", "/backends/app-3", b"")
    assert list(bal.pool.backends) == ["app-1", "app-2"]
    assert handle(bal, "PUT", "/policy", b'{"policy": "cookie"}') == (200, {"policy": "cookie"})
    assert bal.policy.name == "cookie" and bal.slow


@pytest.mark.parametrize(("method", "path", "body", "status"), [
    ("POST", "/backends", b'{"id": "app-1", "address": "127.0.0.1:1"}', 409),
    ("POST", "/backends", b'{"id": "x", "address": "nowhere"}', 400),
    ("POST", "/backends", b"not json", 400),
    ("PUT", "/backends/app-1/state", b'{"state": "sleeping"}', 400),
    ("PUT", "/backends/app-9/state", b'{"state": "drain"}', 404),
    ("PUT", "/policy", b'{"policy": "roundrobin"}', 400),
    ("GET", "/records?since=abc", b"", 400),
    ("GET", "/nothing", b"", 404),
])
def test_bad_admin_requests_are_refused(method: str, path: str, body: bytes, status: int) -> None:
    with pytest.raises(AdminError) as info:
        handle(balancer(), method, path, body)
    assert info.value.status == status


def test_records_paginate_and_count_what_the_ring_dropped() -> None:
    ring = RecordRing(maxlen=5)
    for i in range(8):
        ring.add((float(i), "127.0.0.1", "app-1", b"GET /%d HTTP/1.1" % i, 200, 0.001, 10))
    doc = ring.read(since=1, limit=2)
    assert doc["dropped"] == 3 and [r["seq"] for r in doc["records"]] == [4, 5] and doc["next"] == 6
    doc = ring.read(since=doc["next"], limit=100)
    assert [r["path"] for r in doc["records"]] == ["/5", "/6", "/7"] and doc["next"] == 9
    assert ring.read(since=9)["records"] == []


def test_unknown_engine_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="builtin"):
        make_engine("nginx")


@pytest.mark.live
def test_builtin_engine_drives_a_live_balancer(tmp_path: Path) -> None:
    with ExitStack() as stack:
        backends = [(bid, start_backend(stack, tmp_path, bid)) for bid in ("app-1", "app-2", "app-3")]
        eng = make_engine("builtin", health_interval_s=0.2)
        assert isinstance(eng, BuiltinEngine)
        stack.callback(eng.stop)
        eng.start(tmp_path / "lb", free_port(), free_port(), "round-robin", backends[:2])
        with requests.Session() as s:
            ids = [s.get(eng.url + "/", timeout=5).json()["id"] for _ in range(4)]
        assert sorted(ids) == ["app-1", "app-1", "app-2", "app-2"]
        rows = eng.backends()
        assert all(isinstance(b, BackendStatus) for b in rows)
        assert [(b.id, b.requests) for b in rows] == [("app-1", 2), ("app-2", 2)]
        assert all(b.p50_ms is not None for b in rows)

        eng.add_backend(*backends[2])
        eng.set_state("app-1", "maint")
        with requests.Session() as s:
            ids = [s.get(eng.url + "/", timeout=5).json()["id"] for _ in range(4)]
        assert sorted(set(ids)) == ["app-2", "app-3"]
        eng.remove_backend("app-3")
        eng.set_policy("least-connections")
        assert [b.id for b in eng.backends()] == ["app-1", "app-2"]
        with pytest.raises(ControlError, match="no backend"):
            eng.set_state("app-9", "drain")

        nxt, recs = eng.records(0)
        assert nxt == 9 and len(recs) == 8 and all(isinstance(r, Record) for r in recs)
        assert recs[0].seq == 1 and recs[0].status == 200 and recs[0].t <= time.time()
        assert eng.records(nxt) == (nxt, [])
