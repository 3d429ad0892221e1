"""The Locust file `statelab check` runs: the user's journey, plus a hook that counts what it saw.

Run by Locust as its own process (`locust -f` this file), never imported by statelab: importing
Locust gevent-patches the whole interpreter. It ships inside the package rather than in
`loadtests/` because `statelab check` runs from the user's project, not from a clone of the lab.

It imports the journey file named by LAB_CHECK_JOURNEY, offers its User classes to Locust (each
subclassed so that every simulated user leaves from its own loopback address, as the lab's own
locustfile does, so an address-hashing balancer sees distinct clients), and counts every request
and every failure the journey marked, by request name and error text, with a few example requests
per kind. It writes those counts as JSON to LAB_CHECK_RECORD twice a second and once more when
Locust quits, so the parent reads exact per-phase figures without parsing Locust's CSV files.
Load shapes in the journey are left out: the check decides how many users run.
"""

from __future__ import annotations

import importlib.util
import inspect
import itertools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import gevent
import requests
from locust import User, events
from requests.adapters import HTTPAdapter

from statelab.users.population import user_address

JOURNEY = Path(os.environ["LAB_CHECK_JOURNEY"])
RECORD = Path(os.environ["LAB_CHECK_RECORD"])
GO = Path(os.environ["LAB_CHECK_GO"]) if os.environ.get("LAB_CHECK_GO") else None
WRITE_EVERY_S = 0.5
GATE_POLL_S = 0.02
EXAMPLES_PER_KIND = 3

_started = time.time()
_requests = 0
_first_request: float | None = None
_kinds: dict[tuple[str, str, str], dict[str, Any]] = {}
_per_second: dict[int, list[int]] = {}
_times_ms: list[float] = []  # every response time (a phase is thousands of requests, not millions)
MAX_TIMES = 200_000
_addresses = itertools.count()
_users_bound = 0
_users_unbound = 0


class SourceAddressAdapter(HTTPAdapter):
    """A requests adapter whose connections all leave from one source address."""

    def __init__(self, address: str) -> None:
        self.source_address = (address, 0)  # set before super().__init__, which builds the pool
        super().__init__(pool_connections=1, pool_maxsize=1)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **kwargs: Any) -> None:
        kwargs["source_address"] = self.source_address
        super().init_poolmanager(connections, maxsize, block, **kwargs)


def _load_journey(path: Path) -> Any:
    """Import the user's journey file as the module `journey` (its own directory importable)."""
    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location("journey", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import the journey {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["journey"] = module
    spec.loader.exec_module(module)
    return module


def _own_address(cls: type[User]) -> type[User]:
    """Return a subclass of a journey's User class: its HTTP client binds its own loopback address,
    and it starts (on_start, then its tasks) only once the parent opened the gate (LAB_CHECK_GO).

    The gate lets the parent start this Locust while the previous phase still runs, so Locust's
    start-up never counts against a phase's time.
    """

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        global _users_bound, _users_unbound
        cls.__init__(self, *args, **kwargs)
        client = getattr(self, "client", None)
        if isinstance(client, requests.Session):
            client.mount("http://", SourceAddressAdapter(user_address(next(_addresses))))
            _users_bound += 1
        else:
            _users_unbound += 1

    def on_start(self: Any) -> None:
        while GO is not None and not GO.exists():
            gevent.sleep(GATE_POLL_S)
        cls.on_start(self)

    return type(cls.__name__, (cls,), {"__init__": __init__, "on_start": on_start, "__module__": __name__,
                                       "__doc__": cls.__doc__})


def _error_text(exception: BaseException, status: int) -> str:
    """Return a failure's kind: the journey's own words, else `HTTP <status>`, else the exception's type."""
    if type(exception).__name__ == "CatchResponseError":
        return str(exception)
    if isinstance(exception, requests.HTTPError) and status:
        return f"HTTP {status}"
    return type(exception).__name__


@events.request.add_listener
def _on_request(request_type: str, name: str, response_time: float, response_length: int, response: Any = None,
                context: Any = None, exception: BaseException | None = None, **_: Any) -> None:
    global _requests, _first_request
    now = time.time()
    _requests += 1
    if len(_times_ms) < MAX_TIMES:
        _times_ms.append(response_time)
    second = _per_second.setdefault(int(now - _started), [0, 0])
    second[0] += 1
    first = _first_request is None
    if first:
        _first_request = now
    if exception is not None:
        second[1] += 1
        status = int(getattr(response, "status_code", 0) or 0)
        kind = _kinds.setdefault((request_type, name, _error_text(exception, status)), {"statuses": {}, "examples": []})
        kind["statuses"][str(status)] = kind["statuses"].get(str(status), 0) + 1
        if len(kind["examples"]) < EXAMPLES_PER_KIND:
            url = getattr(response, "url", None) or ""
            kind["examples"].append({"t": now, "status": status, "url": str(url)})
    if first:
        _write()


def _percentiles() -> dict[str, float]:
    ordered = sorted(_times_ms)
    if not ordered:
        return {}
    shares = {f"p{q}": ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))] for q in (50, 95, 99)}
    return {**shares, "max": ordered[-1]}


def _write(final: bool = False) -> None:
    doc = {"started": _started, "first_request": _first_request, "requests": _requests,
           "latency_ms": _percentiles() if final else {},
           "users_bound": _users_bound, "users_unbound": _users_unbound,
           "per_second": sorted([s, *v] for s, v in _per_second.items()),
           "kinds": [{"method": m, "name": n, "error": e, **k} for (m, n, e), k in _kinds.items()]}
    tmp = RECORD.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    tmp.replace(RECORD)


def _keep_writing() -> None:
    while True:
        gevent.sleep(WRITE_EVERY_S)
        _write()


@events.init.add_listener
def _on_init(environment: Any, **_: Any) -> None:
    _write()
    gevent.spawn(_keep_writing)


@events.quit.add_listener
def _on_quit(exit_code: int, **_: Any) -> None:
    _write(final=True)


def _offer_users(journey: Any) -> None:
    """Put the journey's runnable User classes (wrapped) in this module's namespace, where Locust looks."""
    for name, obj in list(vars(journey).items()):
        if inspect.isclass(obj) and issubclass(obj, User) and not obj.abstract:
            globals()[name] = _own_address(obj)


_offer_users(_load_journey(JOURNEY))
