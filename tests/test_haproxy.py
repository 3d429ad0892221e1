"""HAProxy engine: config rendering (pure) and, when haproxy is installed, the engine live."""

from __future__ import annotations

import shutil
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Iterator

import pytest
import requests

from statelab.engines import make_engine
from statelab.engines.haproxy import HAProxyEngine, parse_stat, render_config
from statelab.balancer.policies import POLICY_NAMES
from statelab.errors import DependencyMissing
from statelab.procs import free_port
from tests.support.backends import start_backend

BACKENDS = [("app-1", "127.0.0.1:8001"), ("app-2", "127.0.0.1:8002")]


def backend_section(cfg: str) -> list[str]:
    return [ln.strip() for ln in cfg.split("\nbackend app", 1)[1].splitlines() if ln.strip()]


@pytest.mark.parametrize(("policy", "expected"), [
    ("round-robin", ["balance roundrobin"]),
    ("least-connections", ["balance leastconn"]),
    ("ip-hash", ["balance source"]),
    ("cookie", ["balance roundrobin", "cookie LAB_BACKEND insert indirect nocache"]),
    ("consistent-hash", ["balance source", "hash-type consistent", "hash-balance-factor 125"]),
    ("p2c", ["balance random(2)"]),
])
def test_each_policy_maps_to_its_algorithm(policy: str, expected: list[str]) -> None:
    lines = backend_section(render_config(bind="127.0.0.1:8000", backends=BACKENDS, policy=policy))
    assert lines[:len(expected)] == expected
    assert "option httpchk GET /healthz" in lines


def test_config_has_checks_forwardfor_socket_and_static_servers() -> None:
    cfg = render_config(bind=":8000", backends=BACKENDS, policy="cookie", stats_socket="/run/lab/haproxy.sock",
                        health_interval_s=0.2)
    assert "stats socket /run/lab/haproxy.sock mode 600 level admin expose-fd listeners" in cfg
    assert "option forwardfor" in cfg and "bind :8000" in cfg
    assert "default-server inter 200 rise 2 fall 2" in cfg
    assert "server app-1 127.0.0.1:8001 check cookie app-1" in cfg
    assert "server-template" not in cfg


def test_unknown_policy_and_bad_address_are_refused() -> None:
    with pytest.raises(ValueError, match="round-robin"):
        render_config(bind=":80", backends=BACKENDS, policy="roundrobin")
    with pytest.raises(ValueError, match="HOST:PORT"):
        render_config(bind=":80", backends=[("a", "nowhere")], policy="p2c")


def test_show_stat_parsing() -> None:
    csv_text = ("# pxname,svname,scur,stot,status,econ,eresp,addr,check_status,req_tot\n"
                "lab,FRONTEND,1,10,OPEN,,,,,\n"
                "app,app-1,2,7,UP,0,1,127.0.0.1:8001,L7OK,7\n"
                "app,app-2,0,3,DRAIN,1,0,127.0.0.1:8002,L7OK,3\n"
                "app,app-3,0,0,MAINT,0,0,127.0.0.1:8003,,0\n"
                "app,app-4,0,0,DOWN,3,0,127.0.0.1:8004,L4CON,0\n"
                "app,BACKEND,2,10,UP,,,,,\n")
    rows = {b.id: b for b in parse_stat(csv_text)}
    assert list(rows) == ["app-1", "app-2", "app-3", "app-4"]
    assert (rows["app-1"].state, rows["app-1"].healthy, rows["app-1"].active, rows["app-1"].errors) == ("ready", True, 2, 1)
    assert rows["app-2"].state == "drain" and rows["app-3"].state == "maint"
    assert rows["app-4"].healthy is False and rows["app-4"].errors == 3


def test_missing_binary_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(DependencyMissing, match="apt-get install haproxy"):
        HAProxyEngine().start(tmp_path, free_port(), 0, "round-robin", BACKENDS)


def test_every_policy_name_is_rendered() -> None:
    for policy in POLICY_NAMES:
        assert "balance " in render_config(bind=":80", backends=BACKENDS, policy=policy)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[tuple[HAProxyEngine, list[tuple[str, str]]]]:
    with ExitStack() as stack:
        backends = [(bid, start_backend(stack, tmp_path, bid)) for bid in ("app-1", "app-2", "app-3")]
        eng = make_engine("haproxy", health_interval_s=0.2)
        assert isinstance(eng, HAProxyEngine)
        stack.callback(eng.stop)
        eng.start(tmp_path / "lb", free_port(), 0, "round-robin", backends[:2])
        yield eng, backends


def ids_seen(url: str, n: int) -> list[str]:
    with requests.Session() as s:
        return [s.get(url + "/", timeout=5).json()["id"] for _ in range(n)]


def wait_for(check: object, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


@pytest.mark.live
@pytest.mark.haproxy
@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed: apt-get install haproxy")
def test_haproxy_routes_drains_adds_and_removes(engine: tuple[HAProxyEngine, list[tuple[str, str]]]) -> None:
    eng, backends = engine
    assert sorted(ids_seen(eng.url, 4)) == ["app-1", "app-1", "app-2", "app-2"]
    with requests.Session() as s:
        headers = {k.lower(): v for k, v in s.get(eng.url + "/", timeout=5).json()["headers"]}
    assert headers["x-forwarded-for"] == "127.0.0.1"

    eng.set_state("app-1", "drain")
    assert {b.id: b.state for b in eng.backends()}["app-1"] == "drain"
    assert set(ids_seen(eng.url, 4)) == {"app-2"}
    eng.set_state("app-1", "maint")
    assert {b.id: b.state for b in eng.backends()}["app-1"] == "maint"
    eng.set_state("app-1", "ready")

    eng.add_backend(*backends[2])
    wait_for(lambda: "app-3" in set(ids_seen(eng.url, 6)))
    eng.remove_backend("app-3")
    assert [b.id for b in eng.backends()] == ["app-1", "app-2"]
    assert set(ids_seen(eng.url, 6)) == {"app-1", "app-2"}

    eng.set_policy("cookie")  # a restart: HAProxy cannot switch algorithms live
    with requests.Session() as s:
        first = s.get(eng.url + "/", timeout=5)
        owner = first.json()["id"]
        assert first.headers["Set-Cookie"].startswith(f"LAB_BACKEND={owner}")
        assert {s.get(eng.url + "/", timeout=5).json()["id"] for _ in range(4)} == {owner}
    assert eng.records(0) == (0, [])
