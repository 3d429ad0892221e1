"""The rules for Kubernetes manifests: each a pure function from a Cluster (the objects read) to findings.

A Cluster joins what the rules need: which workloads a Service, an Ingress or a PodDisruptionBudget
selects, and how many replicas each workload runs (its HorizontalPodAutoscaler's range, if any).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

from statelab.lint.findings import Finding, finding
from statelab.lint.sources import Manifest, YList, YMap, get, line_of

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "ReplicaSet")
DEFAULT_GRACE_S = 30
TRAEFIK_STICKY = "traefik.ingress.kubernetes.io/service.sticky.cookie"
NGINX_AFFINITY = "nginx.ingress.kubernetes.io/affinity"
NGINX_HASH_BY = "nginx.ingress.kubernetes.io/upstream-hash-by"


@dataclass(frozen=True)
class Workload:
    """A Deployment, StatefulSet or ReplicaSet, with the autoscaler that scales it (if any)."""

    manifest: Manifest
    hpa: Manifest | None

    @property
    def pod_spec(self) -> YMap:
        spec = get(self.manifest.data, "spec", "template", "spec")
        return spec if isinstance(spec, YMap) else YMap(self.manifest.data.line)

    @property
    def pod_labels(self) -> Mapping[str, Any]:
        return get(self.manifest.data, "spec", "template", "metadata", "labels") or {}

    @property
    def min_replicas(self) -> int:
        if self.hpa:
            return int(get(self.hpa.data, "spec", "minReplicas") or 1)
        replicas = get(self.manifest.data, "spec", "replicas")
        return 1 if replicas is None else int(replicas)

    @property
    def max_replicas(self) -> int:
        return int(get(self.hpa.data, "spec", "maxReplicas") or 1) if self.hpa else self.min_replicas

    @property
    def replicas_text(self) -> str:
        if self.hpa:
            return f"{self.min_replicas}-{self.max_replicas} replicas (autoscaled by {self.hpa.ref})"
        return f"{self.min_replicas} replicas"

    def containers(self) -> Iterator[tuple[YMap, YList | None, int]]:
        """Yield (container, its list, its index) for each container of the pod template."""
        items = self.pod_spec.get("containers")
        if isinstance(items, YList):
            for i, container in enumerate(items):
                if isinstance(container, YMap):
                    yield container, items, i


@dataclass(frozen=True)
class Cluster:
    """The objects read, with the joins the rules need."""

    manifests: tuple[Manifest, ...]

    def of_kind(self, *kinds: str) -> list[Manifest]:
        return [m for m in self.manifests if m.kind in kinds]

    def workloads(self) -> list[Workload]:
        hpas = self.of_kind("HorizontalPodAutoscaler")
        result = []
        for m in self.of_kind(*WORKLOAD_KINDS):
            hpa = next((h for h in hpas if h.namespace == m.namespace
                        and get(h.data, "spec", "scaleTargetRef", "kind") == m.kind
                        and get(h.data, "spec", "scaleTargetRef", "name") == m.name), None)
            result.append(Workload(m, hpa))
        return result

    def selected(self, namespace: str, selector: Any) -> list[Workload]:
        """Return the workloads whose pod labels include every label of selector (a non-empty mapping)."""
        if not isinstance(selector, dict) or not selector:
            return []
        return [w for w in self.workloads() if w.manifest.namespace == namespace
                and all(w.pod_labels.get(k) == v for k, v in selector.items())]

    def behind_service(self, service: Manifest) -> list[Workload]:
        return self.selected(service.namespace, get(service.data, "spec", "selector"))

    def service(self, namespace: str, name: str) -> Manifest | None:
        return next((s for s in self.of_kind("Service") if s.namespace == namespace and s.name == name), None)

    def ingress_services(self, ingress: Manifest) -> list[Manifest]:
        """Return the Services an Ingress sends traffic to."""
        names = {get(ingress.data, "spec", "defaultBackend", "service", "name")}
        for rule in get(ingress.data, "spec", "rules") or []:
            for path in get(rule, "http", "paths") or []:
                names.add(get(path, "backend", "service", "name"))
        found = (self.service(ingress.namespace, str(n)) for n in names if n)
        return [s for s in found if s is not None]


def _where(m: Manifest, line: int) -> dict[str, Any]:
    return {"path": m.source.path, "line": line, "rendered": m.source.rendered}


def _scaled(workloads: list[Workload]) -> list[Workload]:
    return [w for w in workloads if w.max_replicas > 1]


def local_disk(cluster: Cluster) -> Iterator[Finding]:
    """A replicated workload mounts an emptyDir or hostPath volume writable: each replica has its own."""
    for w in _scaled(cluster.workloads()):
        volumes = {v.get("name"): v for v in w.pod_spec.get("volumes") or [] if isinstance(v, dict)}
        for container, _, _ in w.containers():
            mounts = container.get("volumeMounts")
            if not isinstance(mounts, YList):
                continue
            for mount, line in zip(mounts, mounts.item_lines):
                volume = volumes.get(get(mount, "name")) or {}
                kind = next((k for k in ("emptyDir", "hostPath") if k in volume), None)
                if kind and not get(mount, "readOnly"):
                    yield finding("local-disk-replicas", subject=w.manifest.ref, **_where(w.manifest, line),
                                  message=f"container {container.get('name')} writes to {get(mount, 'mountPath')} "
                                          f"on a {kind} volume while the workload runs {w.replicas_text}: a file "
                                          "written through one replica is missing on the others")


def client_ip_affinity(cluster: Cluster) -> Iterator[Finding]:
    """A Service pins client addresses to pods (or an ingress hashes on them) in front of a scaled app."""
    for service in cluster.of_kind("Service"):
        behind = _scaled(cluster.behind_service(service))
        if get(service.data, "spec", "sessionAffinity") == "ClientIP" and behind:
            yield finding("client-ip-affinity", subject=service.ref,
                          **_where(service, line_of(service.data, "spec", "sessionAffinity")),
                          message=f"sessionAffinity: ClientIP pins each client address to one pod of "
                                  f"{behind[0].manifest.ref}, which runs {behind[0].replicas_text}: every client "
                                  "behind one NAT or proxy address lands on the same pod")
    for ingress in cluster.of_kind("Ingress"):
        hash_by = str(get(ingress.data, "metadata", "annotations", NGINX_HASH_BY) or "")
        behind = [w for s in cluster.ingress_services(ingress) for w in _scaled(cluster.behind_service(s))]
        if "remote_addr" in hash_by and behind:
            yield finding("client-ip-affinity", subject=ingress.ref,
                          **_where(ingress, line_of(ingress.data, "metadata", "annotations", NGINX_HASH_BY)),
                          message=f"upstream-hash-by {hash_by} sends each client address to one pod of "
                                  f"{behind[0].manifest.ref}, which runs {behind[0].replicas_text}")


def cookie_affinity_autoscaled(cluster: Cluster) -> Iterator[Finding]:
    """Sticky cookies (Traefik on the Service, ingress-nginx on the Ingress) in front of an autoscaled app."""
    sticky: list[tuple[Manifest, str, list[Manifest]]] = []
    for service in cluster.of_kind("Service"):
        if str(get(service.data, "metadata", "annotations", TRAEFIK_STICKY)).lower() == "true":
            sticky.append((service, TRAEFIK_STICKY, [service]))
    for ingress in cluster.of_kind("Ingress"):
        if get(ingress.data, "metadata", "annotations", NGINX_AFFINITY) == "cookie":
            sticky.append((ingress, NGINX_AFFINITY, cluster.ingress_services(ingress)))
    for m, annotation, services in sticky:
        autoscaled = [w for s in services for w in cluster.behind_service(s) if w.hpa]
        if autoscaled:
            w = autoscaled[0]
            yield finding("cookie-affinity-autoscaled", subject=m.ref,
                          **_where(m, line_of(m.data, "metadata", "annotations", annotation)),
                          message=f"a sticky cookie ({annotation}) pins users to pods of {w.manifest.ref}, which "
                                  f"{w.hpa.ref if w.hpa else 'an autoscaler'} scales between {w.min_replicas} and "
                                  f"{w.max_replicas}: sessions move or end whenever the pod count changes")


def no_readiness_probe(cluster: Cluster) -> Iterator[Finding]:
    """A container that serves on a port has no readiness probe."""
    for w in cluster.workloads():
        for container, items, i in w.containers():
            if container.get("ports") and "readinessProbe" not in container:
                line = items.item_lines[i] if items is not None else container.line
                yield finding("no-readiness-probe", subject=w.manifest.ref, **_where(w.manifest, line),
                              message=f"container {container.get('name')} serves on a port but has no "
                                      "readinessProbe: new and restarting pods get traffic before they can serve it")


_SLEEP = re.compile(r"(?:^|[\s;&|])sleep\s+(\d+(?:\.\d+)?)s?\b")


def prestop_pause_s(pre_stop: Any) -> float | None:
    """Return how long a preStop hook pauses (a `sleep` action or an exec of sleep), or None."""
    seconds = get(pre_stop, "sleep", "seconds")
    if seconds is not None:
        return float(seconds)
    command = get(pre_stop, "exec", "command")
    if isinstance(command, list):
        match = _SLEEP.search(" ".join(str(part) for part in command))
        return float(match.group(1)) if match else None
    return None


def prestop_exceeds_grace(cluster: Cluster) -> Iterator[Finding]:
    """A preStop pause reaches the pod's grace period, so the app is killed before it drains."""
    for w in cluster.workloads():
        grace = w.pod_spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE_S)
        for container, _, _ in w.containers():
            pause = prestop_pause_s(get(container, "lifecycle", "preStop"))
            if pause is not None and pause >= float(grace):
                yield finding("prestop-exceeds-grace", subject=w.manifest.ref,
                              **_where(w.manifest, line_of(container, "lifecycle", "preStop")),
                              message=f"container {container.get('name')} pauses {pause:g} s in preStop, and the "
                                      f"grace period is {grace} s: it is killed before SIGTERM can drain it")


def resolve(value: Any, total: int, default: str, round_up: bool) -> int:
    """Resolve an int-or-percent field (maxUnavailable, minAvailable) against total, as Kubernetes does."""
    value = default if value is None else value
    text = str(value).strip()
    if text.endswith("%"):
        exact = total * float(text[:-1]) / 100
        return math.ceil(exact) if round_up else math.floor(exact)
    return int(text)


def rollout_unavailable(w: Workload) -> int:
    """Return how many pods a Deployment's rollout takes down at once (at its smallest replica count)."""
    strategy = get(w.manifest.data, "spec", "strategy") or {}
    if get(strategy, "type") == "Recreate":
        return w.min_replicas
    unavailable = resolve(get(strategy, "rollingUpdate", "maxUnavailable"), w.min_replicas, "25%", round_up=False)
    surge = resolve(get(strategy, "rollingUpdate", "maxSurge"), w.min_replicas, "25%", round_up=True)
    return 1 if unavailable == 0 and surge == 0 else unavailable  # Kubernetes' own fallback


def max_unavailable_half(cluster: Cluster) -> Iterator[Finding]:
    """A Deployment's rollout takes half its replicas (or all, with Recreate) down at once."""
    for w in cluster.workloads():
        if w.manifest.kind != "Deployment" or w.min_replicas < 2:
            continue
        down = rollout_unavailable(w)
        if 2 * down >= w.min_replicas:
            recreate = get(w.manifest.data, "spec", "strategy", "type") == "Recreate"
            how = "strategy Recreate stops every pod" if recreate else f"maxUnavailable lets {down} pod{'s' if down != 1 else ''} go"
            yield finding("max-unavailable-half", subject=w.manifest.ref,
                          **_where(w.manifest, line_of(w.manifest.data, "spec", "strategy",
                                                       "type" if recreate else "rollingUpdate")),
                          message=f"{how} at once out of {w.min_replicas}: the rest carry the whole load")


def pdb_does_not_limit_rollouts(cluster: Cluster) -> Iterator[Finding]:
    """A PodDisruptionBudget allows fewer pods down than the Deployment's rollout takes down anyway."""
    for pdb in cluster.of_kind("PodDisruptionBudget"):
        spec = get(pdb.data, "spec") or {}
        for w in cluster.selected(pdb.namespace, get(spec, "selector", "matchLabels")):
            if w.manifest.kind != "Deployment":
                continue
            if "maxUnavailable" in spec:
                allowed = resolve(spec["maxUnavailable"], w.min_replicas, "0", round_up=True)
            else:
                allowed = w.min_replicas - resolve(spec.get("minAvailable"), w.min_replicas, "1", round_up=True)
            down = rollout_unavailable(w)
            if down > allowed:
                yield finding("pdb-does-not-limit-rollouts", subject=pdb.ref,
                              **_where(pdb, line_of(pdb.data, "spec")),
                              message=f"it allows {max(allowed, 0)} of {w.manifest.ref}'s {w.min_replicas} pods "
                                      f"down, but a rollout takes {down} down at once: a PodDisruptionBudget limits "
                                      "evictions (node drains), never rollouts")


RULES: tuple[Callable[[Cluster], Iterator[Finding]], ...] = (
    local_disk, client_ip_affinity, cookie_affinity_autoscaled, no_readiness_probe, prestop_exceeds_grace,
    max_unavailable_half, pdb_does_not_limit_rollouts,
)
