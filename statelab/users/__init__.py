"""Simulated users: thousands of asyncio "people" with their own cookies, tokens and source address.

A crowd is a `Population` running one journey (`shopper`, `browser`, `uploader`, `pages`, the `tabs`
of one browser, or any ``async def journey(user: VirtualUser)``) against a balancer URL. Each user remembers what it did
(items it added, files it uploaded) and compares with what the server later shows, so lost state is
measured from the user's side. `run_crowd` returns a frozen `CrowdResult`; `CrowdHandle` runs a crowd
in a background thread so a scenario can inject faults meanwhile and read live counters.

Measured with bench/bench_users.py (2-core machine shared with other work, uvloop, a fake app in
its own process; three runs, figures vary with the neighbours' load), think time 1 s:
    users journey  req/s   generator CPU share (process_time / wall)   p50      p99
      200 browser    252   0.04-0.06                                   0.15 ms  0.6-3.5 ms
     1000 browser   1240   0.15-0.16                                   0.2 ms   1.2-7 ms
     2000 browser   2450   0.23-0.25                                   0.2 ms   4-24 ms
     2000 shopper   4100   0.33-0.36                                   0.3 ms   2-8 ms
so 2,000 users leave the generator at a quarter to a third of one core. Each user connects once
and keeps its socket; a 2,000-user ramp costs 0.2-0.4 s of CPU in connects.
"""

from __future__ import annotations

from statelab.errors import ConfigError
from statelab.users.crowd import (  # _ensure_open_files: tests call it as users._ensure_open_files
    DEFAULT_RAMP_S, DEFAULT_REQUEST_TIMEOUT_S, _ensure_open_files, run_crowd, run_crowd_sync,
)
from statelab.users.handle import CrowdHandle, LiveCounters
from statelab.users.journeys import (
    CART_CHECK_EVERY, JOB_DEADLINE_S, JOB_GRACE_ON_STOP_S, JOB_POLL_S, JOURNEYS, Browser, Journey, browser,
    pages, shopper, tabs, uploader,
)
from statelab.users.measures import ERROR_KINDS, LatencyHistogram, LatencySummary, UserStats
from statelab.users.population import Population, UserSpec, user_address
from statelab.users.result import CrowdResult, TimelineBucket, UserSummary
from statelab.users.virtual_user import SESSION_COOKIE, VirtualUser

__all__ = [
    "Browser", "CART_CHECK_EVERY", "ConfigError", "CrowdHandle", "CrowdResult",
    "DEFAULT_RAMP_S", "DEFAULT_REQUEST_TIMEOUT_S", "ERROR_KINDS", "JOB_DEADLINE_S",
    "JOB_GRACE_ON_STOP_S", "JOB_POLL_S", "JOURNEYS", "Journey", "LatencyHistogram",
    "LatencySummary", "LiveCounters", "Population", "SESSION_COOKIE",
    "TimelineBucket", "UserSpec", "UserStats", "UserSummary", "VirtualUser", "browser", "pages", "run_crowd",
    "run_crowd_sync", "shopper", "tabs", "uploader", "user_address",
]
