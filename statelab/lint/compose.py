"""The rules for compose files: each a pure function from one compose file to findings."""

from __future__ import annotations

from typing import Any, Callable, Iterator

from statelab.lint.findings import Finding, finding
from statelab.lint.sources import ComposeFile, YList, get


def replicas(service: Any) -> int:
    """Return how many containers a compose service runs (deploy.replicas, else scale, else 1)."""
    value = get(service, "deploy", "replicas")
    if value is None:
        value = get(service, "scale")
    try:
        return 1 if value is None else int(value)
    except (TypeError, ValueError):
        return 2  # an unresolved ${VARIABLE}: assume it can be more than one


def writable_bind(volume: Any) -> str | None:
    """Return the container path of a writable bind mount (short or long syntax), else None."""
    if isinstance(volume, str):
        parts = volume.split(":")
        if len(parts) >= 2 and parts[0].startswith((".", "/", "~", "$")):
            mode = parts[2] if len(parts) > 2 else ""
            return None if "ro" in mode.split(",") else parts[1]
        return None
    if isinstance(volume, dict) and volume.get("type") == "bind" and not volume.get("read_only"):
        return str(volume.get("target"))
    return None


def local_disk(compose: ComposeFile) -> Iterator[Finding]:
    """A service with several replicas bind-mounts a host directory writable: replicas do not share hosts."""
    for name, service in (compose.data.get("services") or {}).items():
        count = replicas(service)
        volumes = get(service, "volumes")
        if count < 2 or not isinstance(volumes, YList):
            continue
        for volume, line in zip(volumes, volumes.item_lines):
            target = writable_bind(volume)
            if target:
                yield finding("local-disk-replicas", compose.source.path, line, f"service {name}",
                              f"{count} replicas write to {target}, a directory of the host they run on: on more "
                              "than one host (or once it is a volume per replica) a file written through one "
                              "replica is missing on the others", compose.source.rendered)


RULES: tuple[Callable[[ComposeFile], Iterator[Finding]], ...] = (local_disk,)
