"""The Locust file `statelab check` runs: the user's journey, plus a hook that counts what it saw.

Run by Locust as its own process (`locust -f` this file), never imported by statelab: importing
Locust gevent-patches the whole interpreter. It ships inside the package rather than in
`loadtests/` because `statelab check` runs from the user's project, not from a clone of the lab.

It imports the journey file named by LAB_CHECK_JOURNEY and offers its User classes to Locust, each
subclassed so that every simulated user leaves from its own loopback address (as the lab's own
locustfile does: an address-hashing balancer sees distinct clients) and waits at a gate (the file
LAB_CHECK_GO) before it starts: the parent starts this Locust while the previous phase still runs.
A `Tally` counts every request and every failure the journey marked, by request name and error
text, with a few example requests per kind, and writes them as JSON to LAB_CHECK_RECORD twice a
second and once more when Locust quits: exact per-phase figures, without Locust's CSV files.
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

from statelab.users.population import SourceAddressAdapter, user_address

JOURNEY = Path(os.environ["LAB_CHECK_JOURNEY"])
RECORD = Path(os.environ["LAB_CHECK_RECORD"])
GO = Path(os.environ["LAB_CHECK_GO"]) if os.environ.get("LAB_CHECK_GO") else None
WRITE_EVERY_S = 0.5
GATE_POLL_S = 0.02
EXAMPLES_PER_KIND = 3
MAX_TIMES = 200_000  # response times kept for percentiles (a phase is thousands of requests, not millions)


class Tally:
    """What this Locust saw: requests, failures by (method, name, error), per second, response times."""

    def __init__(self) -> None:
        self.started = time.time()
        self.requests = 0
        self.first_request: float | None = None
        self.kinds: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.per_second: dict[int, list[int]] = {}
        self.times_ms: list[float] = []
        self.users_bound = 0
        self.users_unbound = 0

    def request(self, method: str, name: str, response_time: float, response: Any,
                exception: BaseException | None) -> None:
        now = time.time()
        self.requests += 1
        if len(self.times_ms) < MAX_TIMES:
            self.times_ms.append(response_time)
        second = self.per_second.setdefault(int(now - self.started), [0, 0])
        second[0] += 1
        first = self.first_request is None
        if first:
            self.first_request = now
        if exception is not None:
            second[1] += 1
            status = int(getattr(response, "status_code", 0) or 0)
            kind = self.kinds.setdefault((method, name, error_text(exception, status)), {"statuses": {}, "examples": []})
            kind["statuses"][str(status)] = kind["statuses"].get(str(status), 0) + 1
            if len(kind["examples"]) < EXAMPLES_PER_KIND:
                kind["examples"].append({"t": now, "status": status, "url": str(getattr(response, "url", "") or "")})
        if first:
            self.write()  # the parent is waiting for it: a phase's clock starts at its first request

    def percentiles(self) -> dict[str, float]:
        ordered = sorted(self.times_ms)
        if not ordered:
            return {}
        at = {f"p{q}": ordered[min(len(ordered) - 1, len(ordered) * q // 100)] for q in (50, 95, 99)}
        return {**at, "max": ordered[-1]}

    def write(self, final: bool = False) -> None:
        doc = {"started": self.started, "first_request": self.first_request, "requests": self.requests,
               "latency_ms": self.percentiles() if final else {},
               "users_bound": self.users_bound, "users_unbound": self.users_unbound,
               "per_second": sorted([s, *v] for s, v in self.per_second.items()),
               "kinds": [{"method": m, "name": n, "error": e, **k} for (m, n, e), k in self.kinds.items()]}
        tmp = RECORD.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(RECORD)


tally = Tally()
_addresses = itertools.count()


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
    """Return a subclass of a journey's User class: its client binds its own address; it starts at the gate."""

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        cls.__init__(self, *args, **kwargs)
        client = getattr(self, "client", None)
        if isinstance(client, requests.Session):
            client.mount("http://", SourceAddressAdapter(user_address(next(_addresses))))
            tally.users_bound += 1
        else:
            tally.users_unbound += 1

    def on_start(self: Any) -> None:
        while GO is not None and not GO.exists():
            gevent.sleep(GATE_POLL_S)
        cls.on_start(self)

    return type(cls.__name__, (cls,), {"__init__": __init__, "on_start": on_start, "__module__": __name__,
                                       "__doc__": cls.__doc__})


def error_text(exception: BaseException, status: int) -> str:
    """Return a failure's kind: the journey's own words, else `HTTP <status>`, else the exception's type."""
    if type(exception).__name__ == "CatchResponseError":
        return str(exception)
    if isinstance(exception, requests.HTTPError) and status:
        return f"HTTP {status}"
    return type(exception).__name__


@events.request.add_listener
def _on_request(request_type: str, name: str, response_time: float, response_length: int, response: Any = None,
                context: Any = None, exception: BaseException | None = None, **_: Any) -> None:
    tally.request(request_type, name, response_time, response, exception)


def _keep_writing() -> None:
    while True:
        gevent.sleep(WRITE_EVERY_S)
        tally.write()


@events.init.add_listener
def _on_init(environment: Any, **_: Any) -> None:
    tally.write()
    gevent.spawn(_keep_writing)


@events.quit.add_listener
def _on_quit(exit_code: int, **_: Any) -> None:
    tally.write(final=True)


def _offer_users(journey: Any) -> None:
    """Put the journey's runnable User classes (wrapped) in this module's namespace, where Locust looks."""
    for name, obj in list(vars(journey).items()):
        if inspect.isclass(obj) and issubclass(obj, User) and not obj.abstract:
            globals()[name] = _own_address(obj)


_offer_users(_load_journey(JOURNEY))
