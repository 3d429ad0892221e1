"""Drive a fault server from Python: create proxies, add, change and remove toxics, take a proxy down.

    faults = FaultClient(service.url)
    with faults.toxic("s3", "latency", attributes={"latency": 50, "jitter": 5}):
        ...                      # every S3 call now takes 50 +/- 5 ms longer
    with faults.down("redis"):
        ...                      # Redis refuses connections; live links are dropped
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import requests

from statelab.errors import ControlError

TIMEOUT_S = 5.0


@dataclass(frozen=True)
class ProxyState:
    """A proxy as the fault server reports it."""

    name: str
    listen: str
    upstream: str
    enabled: bool
    toxics: tuple[Mapping[str, Any], ...]
    stats: Mapping[str, int]

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> "ProxyState":
        return cls(body["name"], body["listen"], body["upstream"], bool(body["enabled"]),
                   tuple(body["toxics"]), dict(body["stats"]))


class FaultClient:
    """The JSON API of one fault server (statelab.faults.api)."""

    def __init__(self, url: str, timeout_s: float = TIMEOUT_S) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            response = requests.request(method, self.url + path, json=body, timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise ControlError(f"fault server at {self.url} unreachable: {exc}") from None
        if response.status_code >= 400:
            try:
                message = response.json()["error"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:200]
            raise ControlError(f"fault server: {method} {path}: {response.status_code} {message}")
        return None if response.status_code == 204 else response.json()

    def version(self) -> str:
        return str(self._call("GET", "/version")["version"])

    def create_proxy(self, name: str, upstream: str, listen: str = "127.0.0.1:0", enabled: bool = True) -> ProxyState:
        """Create a proxy; listen on port 0 picks a free one (read it back from .listen or .port)."""
        body = {"name": name, "upstream": upstream, "listen": listen, "enabled": enabled}
        return ProxyState.from_json(self._call("POST", "/proxies", body))

    def proxy(self, name: str) -> ProxyState:
        return ProxyState.from_json(self._call("GET", f"/proxies/{name}"))

    def proxies(self) -> dict[str, ProxyState]:
        return {n: ProxyState.from_json(p) for n, p in self._call("GET", "/proxies").items()}

    def set_enabled(self, name: str, enabled: bool) -> ProxyState:
        """Take a proxy down (False: connections refused, links dropped) or bring it back up."""
        return ProxyState.from_json(self._call("POST", f"/proxies/{name}", {"enabled": enabled}))

    def delete_proxy(self, name: str) -> None:
        self._call("DELETE", f"/proxies/{name}")

    def add_toxic(self, proxy: str, type: str, stream: str = "downstream", toxicity: float = 1.0,
                  attributes: Mapping[str, int] | None = None, name: str | None = None) -> dict[str, Any]:
        """Add a toxic (its name defaults to <type>_<stream>) and return it as the server stored it."""
        body: dict[str, Any] = {"type": type, "stream": stream, "toxicity": toxicity,
                                "attributes": dict(attributes or {})}
        if name:
            body["name"] = name
        return dict(self._call("POST", f"/proxies/{proxy}/toxics", body))

    def update_toxic(self, proxy: str, name: str, toxicity: float | None = None,
                     attributes: Mapping[str, int] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"attributes": dict(attributes or {})}
        if toxicity is not None:
            body["toxicity"] = toxicity
        return dict(self._call("POST", f"/proxies/{proxy}/toxics/{name}", body))

    def remove_toxic(self, proxy: str, name: str) -> None:
        self._call("DELETE", f"/proxies/{proxy}/toxics/{name}")

    def reset(self) -> None:
        """Every proxy up, every toxic gone."""
        self._call("POST", "/reset")

    @contextmanager
    def toxic(self, proxy: str, type: str, stream: str = "downstream", toxicity: float = 1.0,
              attributes: Mapping[str, int] | None = None, name: str | None = None) -> Iterator[dict[str, Any]]:
        """Apply a toxic for the duration of a with block."""
        added = self.add_toxic(proxy, type, stream, toxicity, attributes, name)
        try:
            yield added
        finally:
            self.remove_toxic(proxy, added["name"])

    @contextmanager
    def down(self, proxy: str) -> Iterator[ProxyState]:
        """Take a proxy down for the duration of a with block."""
        state = self.set_enabled(proxy, False)
        try:
            yield state
        finally:
            self.set_enabled(proxy, True)
