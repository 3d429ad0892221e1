"""A crowd in a background thread (`CrowdHandle`) and the `LiveCounters` it reports meanwhile.

Scenarios use it to inject faults from their own thread while the crowd runs.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from statelab.users.crowd import DEFAULT_RAMP_S, DEFAULT_REQUEST_TIMEOUT_S, run_crowd_sync
from statelab.users.journeys import Journey
from statelab.users.population import Population
from statelab.users.result import CrowdResult
from statelab.users.virtual_user import _Crowd


@dataclass(frozen=True)
class LiveCounters:
    """A snapshot readable from any thread while the crowd runs (for a progress bar)."""

    elapsed_s: float
    users_started: int
    users_active: int
    requests: int
    errors: int
    logins_ok: int
    logout_events: int
    items_added: int
    items_lost: int


class CrowdHandle:
    """A crowd in a background thread: `start()`, `live()`, `stop()`, `result()`.

    Scenarios inject faults from their own thread while this runs; `live()` is safe to call from
    any thread at any time.
    """

    def __init__(self, base_url: str, population: Population, journey: str | Journey,
                 duration_s: float | None = None, seed: int = 0, ramp_s: float = DEFAULT_RAMP_S,
                 request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S) -> None:
        self._run_crowd = lambda stop, live: run_crowd_sync(
            base_url, population, journey, duration_s, stop, seed, ramp_s, request_timeout_s, live)
        self._stop = threading.Event()
        self._crowd: _Crowd | None = None
        self._started_at = 0.0
        self._result: CrowdResult | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="statelab-crowd", daemon=True)

    def start(self) -> CrowdHandle:
        """Start the crowd thread and return self."""
        self._started_at = time.monotonic()
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self._result = self._run_crowd(self._stop, self._attach)
        except BaseException as exc:  # handed to result() in the caller's thread
            self._error = exc

    def _attach(self, crowd: _Crowd) -> None:
        self._crowd = crowd
        if self._stop.is_set():
            crowd.stop()

    def stop(self) -> None:
        """Ask the crowd to stop (thread-safe, idempotent); `result()` waits for it."""
        self._stop.set()
        crowd = self._crowd
        if crowd is not None and not crowd.loop.is_closed():
            try:
                crowd.loop.call_soon_threadsafe(crowd.stop)
            except RuntimeError:  # the loop closed between the check and the call
                pass

    def running(self) -> bool:
        return self._thread.is_alive()

    def result(self, timeout: float | None = None) -> CrowdResult:
        """Wait for the crowd to end and return its result; re-raise what broke it."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("the crowd did not finish in time (call stop() first?)")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def live(self) -> LiveCounters:
        """Return the current counters (a racy but consistent-enough snapshot for progress)."""
        crowd = self._crowd
        if crowd is None:
            return LiveCounters(0.0, 0, 0, 0, 0, 0, 0, 0, 0)
        r = crowd.recorder
        return LiveCounters(round(time.monotonic() - self._started_at, 3), r.users_started,
                            r.users_active, r.requests, r.errors, r.logins_ok, r.logout_events,
                            r.items_added, r.items_lost)

    def __enter__(self) -> CrowdHandle:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._thread.join()
