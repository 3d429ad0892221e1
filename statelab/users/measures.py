"""What a running crowd records: latency histograms, each user's tally, the crowd-wide `_Recorder`.

Also the clock every latency and timeline second is read from. Updated only on the crowd's event
loop; `result` freezes the tallies at the end.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

ERROR_KINDS = ("connect", "timeout", "5xx", "4xx", "protocol")
# The timeline is counted in fine buckets; a short run keeps them (a 6 s quick run would otherwise
# chart as 6 points), a long one is summed to whole seconds.
FINE_STEP_S = 0.25
SHORT_RUN_S = 30.0
# Latency and timeline clock. Not loop.time(): uvloop's is millisecond-grained and cached per
# loop iteration, which reads sub-millisecond loopback requests as 0 ms.
_clock = time.perf_counter


def timeline_step_s(span_s: float) -> float:
    """Return the width of a chart's time buckets for a run lasting span_s: fine when short, 1 s otherwise."""
    return FINE_STEP_S if span_s <= SHORT_RUN_S else 1.0


@dataclass(frozen=True)
class LatencySummary:
    count: int
    mean_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float


class LatencyHistogram:
    """Log-bucketed latencies (2% wide buckets): constant memory, mergeable, percentiles to ~1%."""

    _LOG_BASE = math.log(1.02)

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.total_s = 0.0
        self.max_s = 0.0

    def record(self, seconds: float) -> None:
        key = int(math.log(max(seconds, 1e-6) * 1e6) / self._LOG_BASE)
        self.buckets[key] = self.buckets.get(key, 0) + 1
        self.count += 1
        self.total_s += seconds
        if seconds > self.max_s:
            self.max_s = seconds

    def percentile(self, p: float) -> float:
        """Return the p-th percentile in seconds (bucket midpoint, never above the maximum)."""
        if not self.count:
            return 0.0
        rank = max(1, math.ceil(self.count * p / 100.0))
        seen = 0
        for key in sorted(self.buckets):
            seen += self.buckets[key]
            if seen >= rank:
                return min(math.exp((key + 0.5) * self._LOG_BASE) / 1e6, self.max_s)
        return self.max_s

    def summary(self) -> LatencySummary:
        ms = 1000.0
        mean = self.total_s / self.count if self.count else 0.0
        return LatencySummary(self.count, round(mean * ms, 3), round(self.percentile(50) * ms, 3),
                              round(self.percentile(95) * ms, 3), round(self.percentile(99) * ms, 3),
                              round(self.max_s * ms, 3))


@dataclass
class UserStats:
    """One user's mutable tally, frozen into a `UserSummary` at the end."""

    logins_ok: int = 0
    logins_failed: int = 0
    relogins: int = 0
    logout_events: int = 0
    token_refreshes: int = 0
    items_added: int = 0
    items_lost: int = 0
    items_unexpected: int = 0
    cart_checks: int = 0
    uploads: int = 0
    uploads_missing: int = 0
    uploads_corrupt: int = 0
    jobs_done: int = 0
    jobs_failed: int = 0
    jobs_missing: int = 0
    jobs_timed_out: int = 0
    pages: int = 0  # page loads of the `pages` journey (each may take a login and a retry)
    requests: int = 0
    errors: int = 0


class _Recorder:
    """Crowd-wide tallies; touched only from the crowd's event loop, read racily from others."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.requests = self.errors = self.logins_ok = self.logout_events = 0
        self.answered = 0  # requests that got an HTTP response (any status) from the target
        self.items_added = self.items_lost = 0
        self.users_started = self.users_active = 0
        self.error_kinds = dict.fromkeys(ERROR_KINDS, 0)
        self.latency = LatencyHistogram()
        self.loop_lag = LatencyHistogram()
        self.latency_by_instance: dict[str, LatencyHistogram] = {}
        self.served_by: dict[str, int] = {}
        self.timeline: list[list[int]] = []  # per FINE_STEP_S bucket: [requests, errors, logouts, items_lost]
        # Off once the crowd is stopping: thousands of closing cart checks land at the same
        # instant and would make the tail latency of the load look worse than it was.
        self.timing = True

    def _bucket(self, now: float) -> list[int]:
        index = max(0, int((now - self.t0) / FINE_STEP_S))
        while len(self.timeline) <= index:
            self.timeline.append([0, 0, 0, 0])
        return self.timeline[index]

    def response(self, now: float, latency_s: float, instance: str, error_kind: str | None) -> None:
        self.requests += 1
        self.answered += 1
        bucket = self._bucket(now)
        bucket[0] += 1
        if self.timing:
            self.latency.record(latency_s)
            hist = self.latency_by_instance.get(instance)
            if hist is None:
                hist = self.latency_by_instance[instance] = LatencyHistogram()
            hist.record(latency_s)
        self.served_by[instance] = self.served_by.get(instance, 0) + 1
        if error_kind is not None:
            self.errors += 1
            self.error_kinds[error_kind] += 1
            bucket[1] += 1

    def failure(self, now: float, kind: str) -> None:
        self.requests += 1
        self.errors += 1
        self.error_kinds[kind] += 1
        bucket = self._bucket(now)
        bucket[0] += 1
        bucket[1] += 1

    def logout(self, now: float) -> None:
        self.logout_events += 1
        self._bucket(now)[2] += 1

    def lost(self, now: float, items: int) -> None:
        self.items_lost += items
        self._bucket(now)[3] += items
