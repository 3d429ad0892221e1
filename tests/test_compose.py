"""The container deployment, checked as far as it can be without a Docker engine.

The compose file against the Compose Specification schema; HAProxy's config with `haproxy -c`;
the Dockerfile's COPY sources; every LAB_* setting the apps read, set for their services; and the
same topology run natively behind HAProxy passing a smoke journey (login, cart, upload).
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import requests
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "compose"
SCHEMA = ROOT.parent / "shared" / "schemas" / "compose-spec.json"
HAPROXY = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
APP_SERVICES = {"stateful": "stateful_app", "stateless": "stateless_app", "worker": "stateless_app"}
# Read by the apps with a default that compose relies on on purpose (see the comment in compose.yaml).
DOCUMENTED_DEFAULTS = {"LAB_INSTANCE_ID"}
_READER = re.compile(r"_(?:str|int|float|choice)\(env, \"([A-Z0-9_]+)\"(\s*\))?")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((COMPOSE / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def haproxy_cfg() -> ModuleType:
    """compose/haproxy_cfg.py, the renderer of the checked-in HAProxy config (a script, not a package)."""
    spec = importlib.util.spec_from_file_location("compose_haproxy_cfg", COMPOSE / "haproxy_cfg.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def app_settings(package: str) -> tuple[set[str], set[str]]:
    """Return (every LAB_* name the package reads, the ones it requires with no default)."""
    read: set[str] = set()
    required: set[str] = set()
    for path in (ROOT / package).glob("*.py"):
        text = path.read_text()
        read |= set(re.findall(r"\bLAB_[A-Z0-9_]*[A-Z0-9]\b", text))
        for name, no_default in _READER.findall(text):
            read.add("LAB_" + name)
            if no_default:
                required.add("LAB_" + name)
    return read, required


def test_compose_file_follows_the_compose_specification(compose: dict[str, Any]) -> None:
    if not SCHEMA.exists():
        pytest.skip(f"the Compose Specification schema is not at {SCHEMA} (CI puts ../shared beside the clone)")
    import jsonschema

    # The schema names draft-07 without the trailing '#', which jsonschema does not recognise: say it.
    jsonschema.Draft7Validator(json.loads(SCHEMA.read_text())).validate(compose)


def test_services_come_up_in_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, svc in services.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy, which has no check"
    for app in ("stateful", "stateless", "worker"):
        assert services[app]["depends_on"]["seed"]["condition"] == "service_completed_successfully"
    assert services["seed"]["restart"] == "no"
    assert "mc" in services["minio"]["healthcheck"]["test"] and services["minio"]["image"].startswith("minio/minio")
    assert "127.0.0.1:8089:8089" in services["locust-master"]["ports"]
    stateful_cmd = services["stateful"]["command"]
    assert stateful_cmd[stateful_cmd.index("--workers") + 1] == "1", "the stateful app is one memory per instance"
    assert "stateful_app:create_app()" in stateful_cmd and "stateless_app:create_app()" in services["stateless"]["command"]


def test_every_setting_the_apps_read_is_set_for_their_services(compose: dict[str, Any]) -> None:
    for service, package in APP_SERVICES.items():
        read, required = app_settings(package)
        assert required, f"found no LAB_* reader in {package}: has its config module moved?"
        env = set(compose["services"][service]["environment"])
        assert not required - env, f"{service} lacks required settings {sorted(required - env)}"
        unset = read - env - DOCUMENTED_DEFAULTS
        defaulted = {n for n in unset if n not in required}
        assert unset == defaulted  # everything else relies on a default in the app's own reader
        assert not env - read, f"{service} sets LAB_* variables {package} never reads: {sorted(env - read)}"


def test_the_dockerfile_copies_only_what_exists() -> None:
    dockerfile = (COMPOSE / "Dockerfile").read_text()
    sources = []
    for line in dockerfile.splitlines():
        if line.strip().upper().startswith("COPY ") and "--from" not in line:
            sources += line.split()[1:-1]
    assert sources, "the Dockerfile copies nothing"
    missing = [s for s in sources if not (ROOT / s).exists()]
    assert not missing, f"the Dockerfile copies paths that do not exist: {missing}"


def test_the_compose_build_uses_the_checked_in_dockerfile(compose: dict[str, Any]) -> None:
    build = compose["services"]["stateless"]["build"]
    assert (COMPOSE / build["context"] / build["dockerfile"]).resolve() == (COMPOSE / "Dockerfile").resolve()


def test_the_checked_in_haproxy_config_is_the_rendered_one(haproxy_cfg: ModuleType) -> None:
    assert (COMPOSE / "haproxy.cfg").read_text() == haproxy_cfg.render("round-robin"), \
        "compose/haproxy.cfg is stale: run `python compose/haproxy_cfg.py --write`"


def test_haproxy_uses_the_native_engines_policy_lines(haproxy_cfg: ModuleType) -> None:
    from statelab.balancer.haproxy import BALANCE

    for policy, lines in BALANCE.items():
        rendered = haproxy_cfg.render(policy)
        for line in lines:
            assert line in rendered, f"{policy}: {line!r} missing from the compose config"


@pytest.mark.haproxy
@pytest.mark.parametrize("policy", ["round-robin", "least-connections", "ip-hash", "cookie", "consistent-hash", "p2c"])
def test_haproxy_accepts_the_config_for_every_policy(policy: str, haproxy_cfg: ModuleType, tmp_path: Path) -> None:
    if not HAPROXY:
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    path = COMPOSE / "haproxy.cfg" if policy == "round-robin" else tmp_path / "haproxy.cfg"
    if policy != "round-robin":
        path.write_text(haproxy_cfg.render(policy))
    result = subprocess.run([HAPROXY, "-c", "-f", str(path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


def test_haproxy_fronts_the_replicas_compose_starts(compose: dict[str, Any]) -> None:
    cfg = (COMPOSE / "haproxy.cfg").read_text()
    for app in ("stateful", "stateless"):
        assert re.search(rf"server-template \S+ \d+-\d+ {app}:8000", cfg), f"no server-template for {app}"
        assert app in compose["services"] and "8000" in " ".join(compose["services"][app]["command"])
    assert "127.0.0.11:53" in cfg and "init-addr none" in cfg
    mount = compose["services"]["haproxy"]["volumes"][0]
    assert mount.startswith("./haproxy.cfg:")


@pytest.mark.live
@pytest.mark.haproxy
def test_the_same_topology_natively_behind_haproxy_passes_a_smoke_journey(tmp_path: Path) -> None:
    if not HAPROXY:
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    from statelab.topology import Lab, LabSpec

    lab = Lab(LabSpec(app="stateless", lb="haproxy", instances=2, run_dir=tmp_path, seed_users=50))
    try:
        lab.start()
        base = lab.balancer_url
        with requests.Session() as s:
            assert s.post(base + "/login", json={"username": "user0007", "password": "statelab"},
                          timeout=10).status_code == 200
            assert s.post(base + "/cart/items", json={"product_id": 3, "qty": 2}, timeout=10).status_code == 201
            carts = [s.get(base + "/cart", timeout=10).json()["items"] for _ in range(4)]
            assert all(items == [{"product_id": 3, "qty": 2}] for items in carts), carts
            up = s.post(base + "/uploads", files={"file": ("a.txt", b"hello compose\n")}, timeout=10)
            assert up.status_code == 201
            key = up.json()["key"]
            assert all(s.get(f"{base}/uploads/{key}", timeout=10).content == b"hello compose\n" for _ in range(4))
    finally:
        lab.stop()
