"""Measuring a running lab from the outside: balancer request records, the instances' /stats, cache keys.

Background samplers a scenario starts next to its crowd: `RecordCollector` drains the balancer's
per-request ring through its engine (or, for `--target`, its admin API client), so windows, shares
and latencies come from what the balancer saw; `StatsSampler` polls each instance's `GET /stats`
(`fetch_stats`: cache hits, DB queries, DB time; the dashboard reads it too);
`CacheEvents` listens to the shared Redis cache's keyspace notifications (each product key written
after a DB load, each expiry); `RotationSampler` polls which instances the balancer has in rotation
(health checks taking them out and putting them back). The numbers they compute are pure functions
of the samples, so they are tested without sockets.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import redis
import requests

from statelab.engines import BackendStatus, Record, RecordSource
from statelab.scenario import InstanceFigures, Latency, Series, percentile
from statelab.users.measures import timeline_step_s

log = logging.getLogger(__name__)

RECORD_POLL_S = 0.25
ROTATION_POLL_S = 0.1
STATS_POLL_S = 0.5
MIN_RATE_INTERVAL_S = 0.8 * STATS_POLL_S  # a rate over a shorter span is noise (see counter_rates)
STATS_TIMEOUT_S = 1.0
CACHE_KEY_PREFIX = "product:"  # the stateless app's product cache (stateless_app/cache.py)
STATS_FIELDS = ("sessions_in_memory", "cache_hits", "cache_misses", "db_queries", "db_time_ms", "local_files",
                "jobs_queued")


@dataclass(frozen=True)
class Hit:
    """One request as the balancer saw it (wall-clock t, seconds)."""

    t: float
    backend: str
    status: int
    latency_ms: float
    path: str = ""


def to_hit(rec: Record) -> Hit:
    """Return what the measurements need of a balancer record."""
    return Hit(rec.t, rec.backend, rec.status, rec.latency_ms, rec.path)


class RecordCollector:
    """Drain the balancer's request records in a background thread, keeping them all."""

    def __init__(self, source: RecordSource, poll_s: float = RECORD_POLL_S) -> None:
        self.source = source
        self.poll_s = poll_s
        self.hits: list[Hit] = []
        self.dropped = 0
        self._next = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="statelab-records", daemon=True)

    def start(self) -> "RecordCollector":
        self._next, _ = self._read(0, skip=True)  # only what happens from now on
        self._thread.start()
        return self

    def _read(self, since: int, skip: bool = False) -> tuple[int, int]:
        nxt, recs = self.source.records(since)
        if not skip:
            self.hits.extend(to_hit(r) for r in recs)
        return int(nxt), len(recs)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.drain()

    def drain(self) -> None:
        """Read every record available now (bounded number of pages)."""
        for _ in range(200):
            try:
                self._next, n = self._read(self._next)
            except Exception:  # the balancer is gone (stopping); keep what we have
                log.debug("reading balancer records failed", exc_info=True)
                return
            if n == 0:
                return

    def stop(self) -> list[Hit]:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)
        self.drain()
        return self.hits


@dataclass(frozen=True)
class StatsSample:
    """One instance's counters at one sampling tick."""

    t: float
    instance: str
    values: tuple[tuple[str, float], ...]

    def get(self, name: str) -> float:
        return dict(self.values).get(name, 0.0)


def fetch_stats(url: str, session: requests.Session | None = None,
                timeout_s: float = STATS_TIMEOUT_S) -> dict[str, Any] | None:
    """Return an instance's `GET /stats` document, or None when it does not answer (restarting, killed)."""
    try:
        get = session.get if session is not None else requests.get
        resp = get(url.rstrip("/") + "/stats", timeout=timeout_s)
        if resp.status_code != 200:
            return None
        doc = resp.json()
    except (requests.RequestException, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def stats_values(doc: dict[str, Any]) -> dict[str, float]:
    """Return the numeric /stats fields the measurements read (0 for a missing one)."""
    return {k: float(doc.get(k, 0) or 0) for k in STATS_FIELDS}


class StatsSampler:
    """Poll every instance's /stats every `poll_s`; `instances()` says which ones exist right now."""

    def __init__(self, instances: Callable[[], Sequence[tuple[str, str]]], poll_s: float = STATS_POLL_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.instances = instances
        self.poll_s = poll_s
        self.clock = clock
        self.samples: list[StatsSample] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._session = requests.Session()
        self._thread = threading.Thread(target=self._run, name="statelab-stats", daemon=True)

    def start(self) -> "StatsSampler":
        self.sample()
        self._thread.start()
        return self

    def sample(self) -> float:
        """Sample every instance now (also callable from the scenario's thread at a phase edge); return t."""
        with self._lock:
            t = self.clock()
            try:
                current = list(self.instances())
            except Exception:
                log.debug("listing instances failed", exc_info=True)
                return t
            for iid, url in current:
                doc = fetch_stats(url, self._session)
                if doc is not None:
                    self.samples.append(StatsSample(t, iid, tuple(sorted(stats_values(doc).items()))))
            return t

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.sample()

    def stop(self) -> list[StatsSample]:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)
        self._session.close()
        return self.samples


@dataclass(frozen=True)
class CacheEvent:
    """A cache key was written (`set`, one per DB load) or expired (`expired`) at wall-clock t."""

    t: float
    kind: str
    key: str


class CacheEvents:
    """Record every write and expiry of the shared cache's product keys, through Redis keyspace notifications.

    The app is not asked: each DB load of a product ends in exactly one SET of its key, so the SETs
    between two expiries of a key are the DB loads that refilled it (one with stampede protection,
    one per waiting request without).
    """

    def __init__(self, redis_url: str, prefix: str = CACHE_KEY_PREFIX, clock: Callable[[], float] = time.time) -> None:
        self.prefix = prefix
        self.clock = clock
        self.events: list[CacheEvent] = []
        self._client = redis.Redis.from_url(redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="statelab-cache-events", daemon=True)

    def start(self) -> "CacheEvents":
        self._client.config_set("notify-keyspace-events", "E$x")  # E: keyevent channels; $: SET; x: expired
        db = int(self._client.connection_pool.connection_kwargs.get("db") or 0)  # only this lab's database index
        self._pubsub.subscribe(f"__keyevent@{db}__:set", f"__keyevent@{db}__:expired")
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                msg = self._pubsub.get_message(timeout=0.2)
            except (redis.RedisError, OSError, ValueError):  # Redis is gone (stopping); keep what we have
                log.debug("reading cache events failed", exc_info=True)
                return
            if msg is None:
                continue
            key = msg["data"].decode() if isinstance(msg["data"], bytes) else str(msg["data"])
            if key.startswith(self.prefix):
                kind = msg["channel"].decode().rsplit(":", 1)[-1]
                self.events.append(CacheEvent(self.clock(), kind, key))

    def stop(self) -> list[CacheEvent]:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)
        for close in (self._pubsub.close, self._client.close):
            try:
                close()
            except (redis.RedisError, OSError):
                log.debug("closing the cache event listener failed", exc_info=True)
        return self.events


class RotationSampler:
    """Poll the balancer's backends every `poll_s`: which instances are in rotation (ready and healthy).

    Each sample is (wall-clock t, ids in rotation); a failed read is skipped, not counted as empty.
    """

    def __init__(self, backends: Callable[[], Sequence[BackendStatus]], poll_s: float = ROTATION_POLL_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.backends = backends
        self.poll_s = poll_s
        self.clock = clock
        self.samples: list[tuple[float, tuple[str, ...]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="statelab-rotation", daemon=True)

    def start(self) -> "RotationSampler":
        self.sample()
        self._thread.start()
        return self

    def sample(self) -> None:
        try:
            rows = self.backends()
        except Exception:  # the balancer is busy or stopping: a gap, not an empty rotation
            log.debug("reading the balancer's backends failed", exc_info=True)
            return
        self.samples.append((self.clock(), tuple(sorted(b.id for b in rows if b.state == "ready" and b.healthy))))

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.sample()

    def stop(self) -> list[tuple[float, tuple[str, ...]]]:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)
        return self.samples


def redis_command_calls(url: str, command: str, timeout_s: float = 2.0) -> int:
    """Return how many times Redis has run `command` (INFO commandstats), e.g. the denylist's EXISTS."""
    client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    entry = stats.get(f"cmdstat_{command.lower()}", {})
    return int(entry.get("calls", 0)) if isinstance(entry, dict) else 0


# --- pure computations ------------------------------------------------------------------------------

def window(hits: Iterable[Hit], t0: float = -math.inf, t1: float = math.inf) -> list[Hit]:
    return [h for h in hits if t0 <= h.t < t1]


def latency(hits: Sequence[Hit], name: str, ok_only: bool = True) -> Latency:
    """Return p50/p99 of (successful) requests among hits, labelled with the window's name."""
    samples = [h.latency_ms for h in hits if not ok_only or 0 < h.status < 400]
    return Latency(round(percentile(samples, 50), 3), round(percentile(samples, 99), 3), len(samples), name)


def shares(hits: Sequence[Hit], backends: Sequence[str] = ()) -> tuple[InstanceFigures, ...]:
    """Return each backend's share of the hits, with its error count and latencies (idle ones included)."""
    per: dict[str, list[Hit]] = {b: [] for b in backends}
    for h in hits:
        if h.backend:
            per.setdefault(h.backend, []).append(h)
    total = sum(len(v) for v in per.values())
    out = []
    for backend in sorted(per, key=_natural):
        mine = per[backend]
        lat = [h.latency_ms for h in mine]
        out.append(InstanceFigures(backend, len(mine), round(len(mine) / total, 4) if total else 0.0,
                                   sum(1 for h in mine if h.status >= 500 or h.status == 0),
                                   round(percentile(lat, 50), 3), round(percentile(lat, 99), 3)))
    return tuple(out)


def imbalance(counts: Sequence[float]) -> float:
    """Return max/mean of per-instance counts (1.0 = perfectly even; NaN without traffic)."""
    if not counts or sum(counts) == 0:
        return math.nan
    return max(counts) / (sum(counts) / len(counts))


def per_second(hits: Sequence[Hit], t0: float, name: str = "requests",
               pick: Callable[[Hit], bool] = lambda h: True, step_s: float | None = None) -> Series:
    """Return the rate (per second) of hits matching pick since t0, one point per time bucket.

    Buckets are 0.25 s wide for a short run and 1 s otherwise (`timeline_step_s`, as the crowd's
    timeline), unless step_s says; every series drawn from the same hits shares one grid.
    """
    times = [h.t - t0 for h in hits if h.t >= t0]
    if not times:
        return Series(name, "req/s", ())
    step = step_s or timeline_step_s(max(times))
    counts: dict[int, int] = {}
    for h in hits:
        if h.t >= t0 and pick(h):
            i = int((h.t - t0) / step)
            counts[i] = counts.get(i, 0) + 1
    if not counts:
        return Series(name, "req/s", ())
    last = int(max(times) / step)
    return Series(name, "req/s", tuple((round(i * step, 3), counts.get(i, 0) / step) for i in range(0, last + 1)))


def count_per_second(name: str, times: Iterable[float], t0: float, unit: str = "1/s") -> Series:
    """Count events (wall-clock times) per second since t0, as a chart series with every second in it."""
    counts: dict[int, int] = {}
    for t in times:
        counts[int(t - t0)] = counts.get(int(t - t0), 0) + 1
    last = max(counts, default=-1)
    return Series(name, unit, tuple((float(s), float(counts.get(s, 0))) for s in range(0, last + 1)))


def counter_rates(samples: Sequence[StatsSample], field_name: str, t0: float,
                  min_interval_s: float = MIN_RATE_INTERVAL_S) -> Series:
    """Return the summed per-second rate of a counter across instances, one point per sampling tick.

    A counter that goes down means the instance restarted (or is new): its new value counts as the
    increase since the previous tick. Ticks closer than min_interval_s to the last point are merged
    into the next one; a merged tick at the very end widens the last point instead.

    Why a minimum by default: a scenario also samples at its phase edges, which can land a few
    milliseconds after the sampler's own tick; a rate over 10 ms is 0 or a spike (the cold-cache
    chart's dips to 0), not what the database saw.
    """
    ticks = sorted({s.t for s in samples})
    last: dict[str, float] = {}
    points: list[tuple[float, float]] = []
    prev_t: float | None = None
    last_span: tuple[float, float] | None = None  # (start, increase) of the last point drawn
    by_tick: dict[float, list[StatsSample]] = {}
    for s in samples:
        by_tick.setdefault(s.t, []).append(s)
    increase = 0.0
    for t in ticks:
        for s in by_tick[t]:
            v = s.get(field_name)
            before = last.get(s.instance)
            if before is not None:
                increase += v - before if v >= before else v
            elif prev_t is not None:
                increase += v  # a new instance: everything it did happened since the last tick
            last[s.instance] = v
        if prev_t is not None and t - prev_t < max(min_interval_s, 1e-9):
            continue
        if prev_t is not None:
            points.append((round(t - t0, 3), round(increase / (t - prev_t), 3)))
            last_span = (prev_t, increase)
        increase = 0.0
        prev_t = t
    if points and last_span is not None and prev_t is not None and ticks[-1] > prev_t:
        start, before_increase = last_span
        points[-1] = (round(ticks[-1] - t0, 3), round((before_increase + increase) / (ticks[-1] - start), 3))
    return Series(f"{field_name}/s", "1/s", tuple(points))


def mean_in(series: Series, t0: float, t1: float) -> float:
    """Return the mean of a series' values with t0 <= t < t1 (NaN if none)."""
    vals = [v for t, v in series.points if t0 <= t < t1]
    return sum(vals) / len(vals) if vals else math.nan


def peak_in(series: Series, t0: float, t1: float) -> float:
    vals = [v for t, v in series.points if t0 <= t < t1]
    return max(vals) if vals else math.nan


def refill_loads(events: Iterable[CacheEvent], keys: Iterable[str] | None = None) -> list[int]:
    """Return, for each expiry of a cache key that was reloaded, how many loads (SETs) refilled it.

    A refill runs from an expiry to the key's next expiry (or the end). The first fill of a key
    (its cold start, before any expiry) is not a refill; neither is an expiry nobody reloaded.
    """
    wanted = set(keys) if keys is not None else None
    counting: dict[str, int] = {}  # key -> loads since its last expiry
    bursts: list[int] = []
    for e in sorted(events, key=lambda x: x.t):
        if wanted is not None and e.key not in wanted:
            continue
        if e.kind == "expired":
            if counting.get(e.key):
                bursts.append(counting[e.key])
            counting[e.key] = 0
        elif e.kind == "set" and e.key in counting:
            counting[e.key] += 1
    return bursts + [n for n in counting.values() if n]


def counter_delta(samples: Sequence[StatsSample], field_name: str, t0: float, t1: float,
                  instances: Iterable[str] | None = None) -> float:
    """Return how much a counter grew between t0 and t1, summed over (some) instances."""
    wanted = set(instances) if instances is not None else None
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    for s in samples:
        if not t0 <= s.t <= t1 or (wanted is not None and s.instance not in wanted):
            continue
        first.setdefault(s.instance, s.get(field_name))
        last[s.instance] = s.get(field_name)
    return sum(max(0.0, last[i] - first[i]) for i in last)


def counter_increase(samples: Sequence[StatsSample], field_name: str, t_a: float, t_b: float,
                     instances: Iterable[str] | None = None) -> float:
    """Return how much a counter grew from t_a to t_b, summed over instances, from sparse samples.

    Each instance's value at t is its last sample at or before t; an instance with no sample by
    t_a started within the window, so all of its count by t_b is new.
    """
    wanted = set(instances) if instances is not None else None
    at_a: dict[str, float] = {}
    at_b: dict[str, float] = {}
    for s in sorted(samples, key=lambda x: x.t):
        if wanted is not None and s.instance not in wanted:
            continue
        if s.t <= t_a:
            at_a[s.instance] = s.get(field_name)
        if s.t <= t_b:
            at_b[s.instance] = s.get(field_name)
    return sum(max(0.0, v - at_a.get(i, 0.0)) for i, v in at_b.items())


def hit_ratio(samples: Sequence[StatsSample], t0: float, t1: float, instances: Iterable[str] | None = None,
              from_zero: bool = False) -> float:
    """Return cache hits / (hits + misses) over a window, for some instances (NaN without lookups).

    from_zero counts a new instance's whole history (it started empty within the window).
    """
    wanted = list(instances) if instances is not None else None
    if from_zero:
        hits = _last_value(samples, "cache_hits", t1, wanted)
        misses = _last_value(samples, "cache_misses", t1, wanted)
    else:
        hits = counter_delta(samples, "cache_hits", t0, t1, wanted)
        misses = counter_delta(samples, "cache_misses", t0, t1, wanted)
    return hits / (hits + misses) if hits + misses else math.nan


def _last_value(samples: Sequence[StatsSample], field_name: str, t1: float, wanted: list[str] | None) -> float:
    last: dict[str, float] = {}
    for s in samples:
        if s.t <= t1 and (wanted is None or s.instance in wanted):
            last[s.instance] = s.get(field_name)
    return sum(last.values())


def failed(hit: Hit) -> bool:
    """Return whether the balancer saw a request fail for the user: no answer (0) or a 5xx."""
    return hit.status == 0 or hit.status >= 500


def first_answer_after(hits: Iterable[Hit], t: float) -> float | None:
    """Return the wall-clock time of the first request after t that the app answered (not a 5xx, not lost)."""
    return min((h.t for h in hits if h.t >= t and not failed(h)), default=None)


def failure_span(hits: Iterable[Hit], t0: float, t1: float = math.inf) -> tuple[float, float] | None:
    """Return (first, last) wall-clock times of failed requests in [t0, t1), or None when none failed."""
    times = [h.t for h in hits if t0 <= h.t < t1 and failed(h)]
    return (min(times), max(times)) if times else None


def last_routed_to(hits: Iterable[Hit], backend: str, after: float) -> float | None:
    """Return the wall-clock time of the last request the balancer sent to backend after `after`."""
    return max((h.t for h in hits if h.backend == backend and h.t >= after), default=None)


def empty_rotation_s(samples: Sequence[tuple[float, tuple[str, ...]]], t0: float = -math.inf,
                     t1: float = math.inf) -> float:
    """Return how long no instance was in rotation within [t0, t1), from rotation samples.

    Each sample holds until the next one; the last one holds until t1 (or adds nothing when t1 is
    open-ended).
    """
    ordered = sorted(samples)
    if not ordered:
        return 0.0
    ends = [t for t, _ in ordered[1:]] + [t1 if t1 != math.inf else ordered[-1][0]]
    total = 0.0
    for (t, ids), t_next in zip(ordered, ends):
        a, b = max(t, t0), min(t_next, t1)
        if not ids and b > a:
            total += b - a
    return total


def back_in_rotation_at(samples: Sequence[tuple[float, tuple[str, ...]]], after: float) -> float | None:
    """Return the first sample time at or after `after` with an instance in rotation."""
    return min((t for t, ids in samples if t >= after and ids), default=None)


def _natural(name: str) -> tuple[str, int]:
    head = name.rstrip("0123456789")
    tail = name[len(head):]
    return head, int(tail) if tail else -1
