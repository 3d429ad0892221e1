"""Running a crowd: `run_crowd` on the caller's event loop, `run_crowd_sync` on a fresh uvloop.

Owns the ramp, the stop conditions, the loop-lag probe and the open-file limit a crowd needs.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import resource
import threading
import time
from typing import Any, Callable
from urllib.parse import urlsplit

from statelab.errors import ConfigError
from statelab.httpclient import HttpClient, resolve_host
from statelab.users.journeys import JOURNEYS, Journey
from statelab.users.measures import _clock, _Recorder
from statelab.users.population import Population
from statelab.users.result import CrowdResult, _build_result
from statelab.users.virtual_user import VirtualUser, _Crowd

log = logging.getLogger(__name__)

DEFAULT_RAMP_S = 2.0
DEFAULT_REQUEST_TIMEOUT_S = 5.0
_STOP_POLL_S = 0.05
_LAG_PROBE_S = 0.1
_SPARE_FILES = 256  # for the loop, logs and whatever else the process has open


async def run_crowd(base_url: str, population: Population, journey: str | Journey,
                    duration_s: float | None = None, stop: asyncio.Event | None = None,
                    seed: int = 0, ramp_s: float = DEFAULT_RAMP_S,
                    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
                    _live: Callable[[_Crowd], None] | None = None) -> CrowdResult:
    """Run ``population`` through ``journey`` against ``base_url`` until a stop condition; measure.

    Stops when ``duration_s`` has passed, ``stop`` is set, or every user finished its steps
    (``Population.steps``), whichever comes first. Users start evenly over ``ramp_s``; on stop they
    finish their current step (bounded by the request timeout) and are then cancelled.
    """
    if isinstance(journey, str):
        if journey not in JOURNEYS:
            raise ValueError(f"unknown journey {journey!r}; known: {', '.join(JOURNEYS)}")
        journey_name, journey_fn = journey, JOURNEYS[journey]
    else:
        journey_name, journey_fn = getattr(journey, "__name__", "custom"), journey
    if duration_s is None and stop is None and population.steps is None:
        raise ValueError("give duration_s, stop or Population.steps, or the crowd never ends")
    parts = urlsplit(base_url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"base_url must be http://host:port, not {base_url!r}")
    host = resolve_host(parts.hostname)
    port = parts.port or 80
    bind = population.bind_addresses and ipaddress.ip_address(host).is_loopback
    if population.bind_addresses and not bind:
        log.warning("target %s is not loopback: users will not bind their own source address", host)

    _ensure_open_files(population.size + _SPARE_FILES)

    loop = asyncio.get_running_loop()
    t0 = _clock()
    cpu0, thread_cpu0 = time.process_time(), time.thread_time()
    recorder = _Recorder(t0)
    crowd = _Crowd(loop, recorder)
    if _live is not None:
        _live(crowd)
    users = [VirtualUser(spec, HttpClient(host, port, spec.address if bind else None,
                                          request_timeout_s), crowd, population, seed)
             for spec in population.members()]
    crashes = 0

    async def live_one(user: VirtualUser, delay: float) -> None:
        nonlocal crashes
        await crowd.sleep(delay)
        if not crowd.running:
            return
        recorder.users_started += 1
        recorder.users_active += 1
        try:
            await journey_fn(user)
        except Exception:
            crashes += 1
            log.exception("journey %s crashed for %s", journey_name, user.spec.username)
        finally:
            recorder.users_active -= 1
            user.client.close()

    n = len(users)
    tasks = [loop.create_task(live_one(u, ramp_s * i / n)) for i, u in enumerate(users)]
    everyone = loop.create_task(asyncio.wait(tasks))
    lag_probe = loop.create_task(_watch_lag(crowd))
    waiters: list[asyncio.Future[Any]] = [everyone]
    try:
        if stop is not None:
            waiters.append(loop.create_task(stop.wait()))
        await asyncio.wait(waiters, timeout=duration_s, return_when=asyncio.FIRST_COMPLETED)
        crowd.stop()
        _, pending = await asyncio.wait(tasks, timeout=request_timeout_s + 1.0)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        lag_probe.cancel()
        for waiter in waiters:
            waiter.cancel()
        crowd.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(lag_probe, *waiters, *tasks, return_exceptions=True)
        for user in users:
            user.client.close()
    wall = _clock() - t0
    return _build_result(base_url, journey_name, seed, population, users, recorder, wall,
                         time.process_time() - cpu0, time.thread_time() - thread_cpu0, crashes)


async def _watch_lag(crowd: _Crowd) -> None:
    """Sample how late the loop wakes a timer: high lag means latencies include our own queueing."""
    while True:
        before = _clock()
        await asyncio.sleep(_LAG_PROBE_S)
        crowd.recorder.loop_lag.record(max(0.0, _clock() - before - _LAG_PROBE_S))


def _ensure_open_files(needed: int) -> None:
    """Raise the soft open-file limit for one socket per user, or fail saying how to fix it.

    Without this, users beyond the limit (1024 on many desktops) would fail to connect with
    EMFILE and be counted as `connect` errors: a fault of the generator posing as a finding.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise ConfigError(f"the crowd needs {needed} open files but the hard limit is {hard}: "
                          f"raise it (ulimit -Hn / limits.conf) or simulate fewer users")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    log.info("raised the open-file limit from %d to %d for the crowd", soft, needed)


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run_crowd_sync(base_url: str, population: Population, journey: str | Journey,
                   duration_s: float | None = None, stop: threading.Event | None = None,
                   seed: int = 0, ramp_s: float = DEFAULT_RAMP_S,
                   request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
                   _live: Callable[[_Crowd], None] | None = None) -> CrowdResult:
    """Run a crowd on a fresh event loop (uvloop) in the calling thread; safe in any thread.

    ``stop`` is a `threading.Event` another thread may set to end the run early.
    """
    async def main() -> CrowdResult:
        astop = None
        watcher = None
        if stop is not None:
            astop = asyncio.Event()
            watcher = asyncio.get_running_loop().create_task(_watch(stop, astop))
        try:
            return await run_crowd(base_url, population, journey, duration_s, astop, seed,
                                   ramp_s, request_timeout_s, _live)
        finally:
            if watcher is not None:
                watcher.cancel()

    with asyncio.Runner(loop_factory=_new_loop) as runner:
        return runner.run(main())


async def _watch(flag: threading.Event, event: asyncio.Event) -> None:
    while not flag.is_set():
        await asyncio.sleep(_STOP_POLL_S)
    event.set()
