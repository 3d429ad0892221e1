"""Simulated users: thousands of asyncio "people" with their own cookies, tokens and source address.

A crowd is a `Population` running one journey (`shopper`, `browser`, `uploader` or any
``async def journey(user: VirtualUser)``) against a balancer URL. Each user remembers what it did
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

import asyncio
import bisect
import hashlib
import ipaddress
import json
import logging
import math
import random
import resource
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Awaitable, Callable, Collection
from urllib.parse import urlsplit

from statelab.errors import ConfigError
from statelab.httpclient import HttpClient, HttpError, Response, resolve_host

log = logging.getLogger(__name__)

ACCOUNTS = 5000
PASSWORD = "statelab"
PRODUCTS = 500
ERROR_KINDS = ("connect", "timeout", "5xx", "4xx", "protocol")
SESSION_COOKIE = "lab_session"
BACKEND_COOKIE = "LAB_BACKEND"
_SLASH24S = 199 * 256  # 127.1.0.x .. 127.199.255.x; 127.200+ is left for NAT addresses
_MIN_ERROR_PAUSE_S = 0.05  # after an error, so a dead server does not turn users into a busy loop
# Latency and timeline clock. Not loop.time(): uvloop's is millisecond-grained and cached per
# loop iteration, which reads sub-millisecond loopback requests as 0 ms.
_clock = time.perf_counter

Journey = Callable[["VirtualUser"], Awaitable[None]]


# ---------------------------------------------------------------- who the users are

def user_address(index: int) -> str:
    """Return user ``index``'s loopback source address, each of the first 50,944 in its own /24.

    nginx's ip_hash keys on the first three octets, so distinct /24s are what make users
    distinct clients to it: 0 -> 127.1.0.1, 1 -> 127.1.1.1, 256 -> 127.2.0.1.
    """
    if index < 0 or index >= _SLASH24S * 254:
        raise ValueError(f"no loopback address for user index {index}")
    slot, host = index % _SLASH24S, 1 + index // _SLASH24S
    return f"127.{1 + slot // 256}.{slot % 256}.{host}"


@dataclass(frozen=True)
class UserSpec:
    index: int
    username: str
    address: str | None  # source address to bind, None = let the kernel choose
    behind_nat: bool


@dataclass(frozen=True)
class Population:
    """Who is in the crowd: users with their own address, plus users sharing one NAT address.

    ``Population(distinct_users=300, nat_users=2000, nat_address="127.200.0.1")`` is 2,300 people,
    2,000 of whom look like one client to an address-hashing balancer. Every user has its own
    account (user0001..user5000), so carts never mix legitimately.
    """

    distinct_users: int = 0
    nat_users: int = 0
    nat_address: str = "127.200.0.1"
    auth: str = "cookie"  # "cookie" (lab_session) or "jwt" (bearer tokens)
    think_s: float = 1.0  # mean pause between steps (exponential, capped at 5x)
    steps: int | None = None  # journey steps per user; None = until the crowd is stopped
    bind_addresses: bool = True  # False for a non-loopback target
    first_account: int = 1

    def __post_init__(self) -> None:
        if self.distinct_users < 0 or self.nat_users < 0 or self.size == 0:
            raise ValueError("a population needs at least one user")
        if self.first_account < 1 or self.first_account - 1 + self.size > ACCOUNTS:
            raise ValueError(f"only {ACCOUNTS} accounts exist (user0001..user{ACCOUNTS:04d})")
        if self.auth not in ("cookie", "jwt"):
            raise ValueError(f"auth must be 'cookie' or 'jwt', not {self.auth!r}")
        if self.think_s < 0:
            raise ValueError("think_s must be >= 0")
        if not ipaddress.ip_address(self.nat_address).is_loopback:
            raise ValueError(f"nat_address must be a loopback address, not {self.nat_address}")

    @property
    def size(self) -> int:
        return self.distinct_users + self.nat_users

    def members(self) -> list[UserSpec]:
        """Return every user, distinct-address users first, in a stable order."""
        specs = []
        for i in range(self.size):
            nat = i >= self.distinct_users
            address = self.nat_address if nat else user_address(i)
            specs.append(UserSpec(i, f"user{self.first_account + i:04d}",
                                  address if self.bind_addresses else None, nat))
        return specs


# ---------------------------------------------------------------- what gets measured

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


@dataclass(frozen=True)
class TimelineBucket:
    """One second of the run, counted from its start: what the chart plots."""

    second: int
    requests: int
    errors: int
    logouts: int
    items_lost: int


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
    requests: int = 0
    errors: int = 0


@dataclass(frozen=True)
class UserSummary:
    index: int
    username: str
    address: str | None
    behind_nat: bool
    stats: dict[str, int]


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


class _Recorder:
    """Crowd-wide tallies; touched only from the crowd's event loop, read racily from others."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.requests = self.errors = self.logins_ok = self.logout_events = 0
        self.items_added = self.items_lost = 0
        self.users_started = self.users_active = 0
        self.error_kinds = dict.fromkeys(ERROR_KINDS, 0)
        self.latency = LatencyHistogram()
        self.loop_lag = LatencyHistogram()
        self.latency_by_instance: dict[str, LatencyHistogram] = {}
        self.served_by: dict[str, int] = {}
        self.timeline: list[list[int]] = []  # [requests, errors, logouts, items_lost]
        # Off once the crowd is stopping: thousands of closing cart checks land at the same
        # instant and would make the tail latency of the load look worse than it was.
        self.timing = True

    def _bucket(self, now: float) -> list[int]:
        second = max(0, int(now - self.t0))
        while len(self.timeline) <= second:
            self.timeline.append([0, 0, 0, 0])
        return self.timeline[second]

    def response(self, now: float, latency_s: float, instance: str, error_kind: str | None) -> None:
        self.requests += 1
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


# ---------------------------------------------------------------- one user

class _Crowd:
    """What users share: the loop, the clock, the stop flag and the sleepers to wake on stop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, recorder: _Recorder) -> None:
        self.loop = loop
        self.recorder = recorder
        self.running = True
        self._sleepers: set[asyncio.Future[None]] = set()

    def stop(self) -> None:
        """Stop the crowd; call on the loop thread (use `loop.call_soon_threadsafe` elsewhere)."""
        self.running = False
        self.recorder.timing = False
        for fut in list(self._sleepers):
            if not fut.done():
                fut.set_result(None)

    async def sleep(self, seconds: float) -> None:
        """Sleep, but wake at once when the crowd stops (cheaper than racing an Event per user)."""
        if seconds <= 0 or not self.running:
            await asyncio.sleep(0)
            return
        fut = self.loop.create_future()
        handle = self.loop.call_later(seconds, _wake, fut)
        self._sleepers.add(fut)
        try:
            await fut
        finally:
            handle.cancel()
            self._sleepers.discard(fut)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class VirtualUser:
    """One simulated person: its own socket, source address, cookies or tokens, RNG and memory.

    Journeys use `call` (records everything, handles logouts and token refresh), `login`,
    `think`, `check_cart` and the `running` flag.
    """

    def __init__(self, spec: UserSpec, client: HttpClient, crowd: _Crowd, population: Population,
                 seed: int) -> None:
        self.spec = spec
        self.client = client
        self.crowd = crowd
        self.population = population
        self.rng = random.Random(f"{seed}:{spec.index}")  # str seeds are stable across runs
        self.stats = UserStats()
        self.cookies: dict[str, str] = {}
        self.access_token: str | None = None
        self.refresh_token: str | None = None
        self.logged_in = False
        self.cart: dict[int, int] = {}  # what this user believes its cart holds
        self.steps_done = 0

    @property
    def running(self) -> bool:
        """True while the crowd runs and this user has steps left."""
        steps = self.population.steps
        return self.crowd.running and (steps is None or self.steps_done < steps)

    async def think(self, scale: float = 1.0) -> None:
        """Pause like a person reading the page (exponential around the population's mean)."""
        mean = self.population.think_s * scale
        if mean > 0:
            await self.crowd.sleep(min(self.rng.expovariate(1.0 / mean), 5 * mean))

    async def call(self, method: str, path: str, json_body: Any = None, body: bytes = b"",
                   content_type: str | None = None, ok: Collection[int] = (),
                   authed: bool = True) -> Response | None:
        """Send a request and record it; on a 401 while logged in, refresh or re-login and retry once.

        Returns the response, or None when the request failed at the transport level. Statuses
        >= 400 other than those in ``ok`` count as errors ('4xx' / '5xx').
        """
        response = await self._send(method, path, json_body, body, content_type, ok, authed)
        if not self._rejected(response, authed):
            return response
        if self.population.auth == "jwt" and await self._refresh():
            response = await self._send(method, path, json_body, body, content_type, ok, authed)
            if not self._rejected(response, authed):
                return response
        self._logged_out()
        if not await self.login(relogin=True):
            return response
        response = await self._send(method, path, json_body, body, content_type, ok, authed)
        if self._rejected(response, authed):
            # Logged out again at once (say, round robin to an instance that never saw the
            # session): count it, and let the journey log in again on its next step.
            self._logged_out()
        return response

    def _rejected(self, response: Response | None, authed: bool) -> bool:
        return (response is not None and response.status == 401 and authed
                and self.logged_in)

    def _logged_out(self) -> None:
        self.logged_in = False
        self.stats.logout_events += 1
        self.crowd.recorder.logout(_clock())

    async def _send(self, method: str, path: str, json_body: Any, body: bytes,
                    content_type: str | None, ok: Collection[int], authed: bool) -> Response | None:
        headers = []
        if json_body is not None:
            body = json.dumps(json_body, separators=(",", ":")).encode()
            content_type = "application/json"
        if content_type:
            headers.append(("Content-Type", content_type))
        if self.cookies:
            headers.append(("Cookie", "; ".join(f"{k}={v}" for k, v in self.cookies.items())))
        if authed and self.access_token:
            headers.append(("Authorization", f"Bearer {self.access_token}"))
        recorder = self.crowd.recorder
        self.stats.requests += 1
        started = _clock()
        try:
            response = await self.client.request(method, path, headers, body)
        except HttpError as exc:
            self.stats.errors += 1
            recorder.failure(_clock(), exc.kind)
            return None
        now = _clock()
        status = response.status
        kind = None
        if status >= 400 and status not in ok and not (status == 401 and self.logged_in and authed):
            kind = "5xx" if status >= 500 else "4xx"
            self.stats.errors += 1
        recorder.response(now, now - started, response.header("x-served-by", "-"), kind)
        for raw in response.header_all("set-cookie"):
            self._store_cookie(raw)
        return response

    def _store_cookie(self, raw: str) -> None:
        first, _, attrs = raw.partition(";")
        name, _, value = first.strip().partition("=")
        if not name:
            return
        lowered = attrs.lower()
        expired = "max-age=0" in lowered.replace(" ", "") or "expires=thu, 01 jan 1970" in lowered
        if expired or not value.strip('"'):
            self.cookies.pop(name, None)
        else:
            self.cookies[name] = value

    async def login(self, relogin: bool = False) -> bool:
        """Log in as this user's account; return whether it worked."""
        self.access_token = self.refresh_token = None
        self.cookies.pop(SESSION_COOKIE, None)
        response = await self._send("POST", "/login", {"username": self.spec.username,
                                                       "password": PASSWORD}, b"", None, (), False)
        if response is None or response.status != 200:
            self.stats.logins_failed += 1
            return False
        if self.population.auth == "jwt":
            doc = _json(response)
            self.access_token = doc.get("access_token")
            self.refresh_token = doc.get("refresh_token")
            if not self.access_token:
                self.stats.logins_failed += 1
                return False
        self.logged_in = True
        self.stats.logins_ok += 1
        self.crowd.recorder.logins_ok += 1
        if relogin:
            self.stats.relogins += 1
        return True

    async def _refresh(self) -> bool:
        """Swap the refresh token for a new access token (sent as bearer and in the JSON body)."""
        token = self.refresh_token
        if not token:
            return False
        saved, self.access_token = self.access_token, token
        response = await self._send("POST", "/token/refresh", {"refresh_token": token}, b"", None,
                                    (401,), True)
        self.access_token = saved
        doc = _json(response) if response is not None and response.status == 200 else {}
        if not doc.get("access_token"):
            return False
        self.access_token = doc["access_token"]
        self.refresh_token = doc.get("refresh_token", token)
        self.stats.token_refreshes += 1
        return True

    async def check_cart(self) -> None:
        """Compare the server's cart with what this user added; count what went missing."""
        response = await self.call("GET", "/cart")
        if response is None or response.status != 200:
            return
        shown: dict[int, int] = {}
        for item in _json(response).get("items", []):
            pid = int(item["product_id"])
            shown[pid] = shown.get(pid, 0) + int(item["qty"])
        lost = sum(max(0, qty - shown.get(pid, 0)) for pid, qty in self.cart.items())
        self.stats.items_unexpected += sum(max(0, qty - self.cart.get(pid, 0))
                                           for pid, qty in shown.items())
        self.stats.cart_checks += 1
        if lost:
            self.stats.items_lost += lost
            self.crowd.recorder.lost(_clock(), lost)
        self.cart = shown  # the server is the truth from here on: count each loss once

    def pick_product(self) -> int:
        """Return a product id with Zipf-like popularity (product 1 is the best seller)."""
        return 1 + bisect.bisect_left(_ZIPF_CUMULATIVE, self.rng.random() * _ZIPF_CUMULATIVE[-1])

    async def pause_after_error(self) -> None:
        await self.crowd.sleep(max(self.population.think_s, _MIN_ERROR_PAUSE_S))


def _zipf_cumulative(n: int, s: float = 1.1) -> list[float]:
    total, out = 0.0, []
    for k in range(1, n + 1):
        total += 1.0 / k**s
        out.append(total)
    return out


_ZIPF_CUMULATIVE = _zipf_cumulative(PRODUCTS)


def _json(response: Response | None) -> dict[str, Any]:
    if response is None:
        return {}
    try:
        doc = json.loads(response.body)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


# ---------------------------------------------------------------- journeys

CART_CHECK_EVERY = 3


async def shopper(user: VirtualUser) -> None:
    """Log in, then browse, add to cart, and every few steps check the cart and /me."""
    while user.running:
        if not user.logged_in and not await user.login():
            await user.pause_after_error()
            continue
        pid = user.pick_product()
        await user.call("GET", f"/products/{pid}")
        await user.think(0.5)
        qty = user.rng.randint(1, 3)
        response = await user.call("POST", "/cart/items", {"product_id": pid, "qty": qty})
        if response is not None and response.status == 201:
            user.cart[pid] = user.cart.get(pid, 0) + qty
            user.stats.items_added += qty
            user.crowd.recorder.items_added += qty
        user.steps_done += 1
        if user.steps_done % CART_CHECK_EVERY == 0:
            await user.check_cart()
            await user.call("GET", "/me")
        await user.think()
    if user.logged_in and user.cart:
        await user.check_cart()  # the last look: items lost near the end still count


async def browser(user: VirtualUser) -> None:
    """Browse products by popularity; half the users log in first and look at /me now and then."""
    if user.rng.random() < 0.5:
        await user.login()
    while user.running:
        await user.call("GET", f"/products/{user.pick_product()}")
        user.steps_done += 1
        if user.logged_in and user.steps_done % 5 == 0:
            await user.call("GET", "/me")
        await user.think()


JOB_DEADLINE_S = 10.0
JOB_POLL_S = 0.1
JOB_GRACE_ON_STOP_S = 2.0


async def uploader(user: VirtualUser) -> None:
    """Log in, upload a small file, process it, poll the job, download it and compare sha256."""
    while user.running:
        if not user.logged_in and not await user.login():
            await user.pause_after_error()
            continue
        await _upload_once(user)
        user.steps_done += 1
        await user.think()


# Uploads are text (letters, spaces, newlines) so the apps' line/word counts mean something.
_TEXT_BYTES = bytes((b"abcdefghijklmnopqrstuvwxyz" * 8 + b" " * 40 + b"\n" * 8)[:256])


async def _upload_once(user: VirtualUser) -> None:
    data = user.rng.randbytes(user.rng.randint(1024, 16 * 1024)).translate(_TEXT_BYTES)
    digest = hashlib.sha256(data).hexdigest()
    boundary = f"statelab{user.spec.index:06d}{user.steps_done:06d}"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"u{user.spec.index}.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
    response = await user.call("POST", "/uploads", body=body,
                               content_type=f"multipart/form-data; boundary={boundary}")
    if response is None or response.status != 201:
        return
    doc = _json(response)
    key = str(doc.get("key", ""))
    user.stats.uploads += 1
    if doc.get("sha256") not in (None, digest):  # the server stored something else
        user.stats.uploads_corrupt += 1
    response = await user.call("POST", f"/uploads/{key}/process")
    if response is not None and response.status == 202:
        await _wait_for_job(user, str(_json(response).get("job_id", "")))
    response = await user.call("GET", f"/uploads/{key}", ok=(404,))
    if response is None:
        return
    if response.status == 404:
        user.stats.uploads_missing += 1
    elif response.status == 200 and hashlib.sha256(response.body).hexdigest() != digest:
        user.stats.uploads_corrupt += 1


async def _wait_for_job(user: VirtualUser, job_id: str) -> None:
    loop = user.crowd.loop
    deadline = loop.time() + JOB_DEADLINE_S
    while loop.time() < deadline:
        response = await user.call("GET", f"/jobs/{job_id}", ok=(404,))
        if response is not None and response.status == 404:
            user.stats.jobs_missing += 1
            return
        status = _json(response).get("status") if response is not None else None
        if status == "done":
            user.stats.jobs_done += 1
            return
        if status == "failed":
            user.stats.jobs_failed += 1
            return
        if not user.crowd.running:  # stopping: a pending job gets a little time, not all of it
            deadline = min(deadline, loop.time() + JOB_GRACE_ON_STOP_S)
        await asyncio.sleep(JOB_POLL_S)
    user.stats.jobs_timed_out += 1


JOURNEYS: dict[str, Journey] = {"shopper": shopper, "browser": browser, "uploader": uploader}


# ---------------------------------------------------------------- the result

@dataclass(frozen=True)
class CrowdResult:
    """Everything a crowd measured; `to_json()` is the stable, plain-typed form."""

    base_url: str
    journey: str
    seed: int
    users: int
    nat_users: int
    wall_s: float
    requests: int
    requests_per_s: float
    errors: dict[str, int]
    users_logged_out: int
    logout_events: int
    logins_ok: int
    logins_failed: int
    relogins: int
    token_refreshes: int
    items_added: int
    items_lost: int
    items_unexpected: int
    cart_checks: int
    uploads: int
    uploads_missing: int
    uploads_corrupt: int
    jobs_done: int
    jobs_failed: int
    jobs_missing: int
    jobs_timed_out: int
    stale_retries: int
    connects: int
    journey_crashes: int
    latency: LatencySummary  # requests made while the crowd ran (not the closing checks)
    latency_by_instance: dict[str, LatencySummary]
    served_by: dict[str, int]
    timeline: tuple[TimelineBucket, ...]
    # Timer lateness of the crowd's loop: if its p99 nears the request latencies, the generator
    # itself was the bottleneck (or starved of CPU) and latencies are overstated.
    loop_lag: LatencySummary
    cpu_share: float  # process CPU seconds / wall seconds (whole process, all threads)
    loop_cpu_share: float  # the crowd's own thread only: the load generator's cost
    user_summaries: tuple[UserSummary, ...] = field(repr=False, default=())

    @property
    def error_total(self) -> int:
        return sum(self.errors.values())

    def to_json(self, per_user: bool = False) -> dict[str, Any]:
        """Return plain dicts/lists/numbers; per-user summaries only when asked (they are long)."""
        doc = asdict(self)
        if not per_user:
            del doc["user_summaries"]
        doc["timeline"] = [asdict(b) for b in self.timeline]
        return doc


_SUMMED = ("logins_ok", "logins_failed", "relogins", "token_refreshes", "items_added", "items_lost",
           "items_unexpected", "cart_checks", "uploads", "uploads_missing", "uploads_corrupt",
           "jobs_done", "jobs_failed", "jobs_missing", "jobs_timed_out")


def _build_result(base_url: str, journey_name: str, seed: int, population: Population,
                  users: list[VirtualUser], rec: _Recorder, wall_s: float, cpu_s: float,
                  thread_cpu_s: float, crashes: int) -> CrowdResult:
    sums = {name: sum(getattr(u.stats, name) for u in users) for name in _SUMMED}
    wall = max(wall_s, 1e-9)
    return CrowdResult(
        base_url=base_url, journey=journey_name, seed=seed, users=population.size,
        nat_users=population.nat_users, wall_s=round(wall_s, 3), requests=rec.requests,
        requests_per_s=round(rec.requests / wall, 1), errors=dict(rec.error_kinds),
        users_logged_out=sum(1 for u in users if u.stats.logout_events),
        logout_events=rec.logout_events,
        stale_retries=sum(u.client.stale_retries for u in users),
        connects=sum(u.client.connects for u in users), journey_crashes=crashes,
        latency=rec.latency.summary(), loop_lag=rec.loop_lag.summary(),
        latency_by_instance={k: h.summary() for k, h in sorted(rec.latency_by_instance.items())},
        served_by=dict(sorted(rec.served_by.items())),
        timeline=tuple(TimelineBucket(i, *b) for i, b in enumerate(rec.timeline)),
        cpu_share=round(cpu_s / wall, 4), loop_cpu_share=round(thread_cpu_s / wall, 4),
        user_summaries=tuple(UserSummary(u.spec.index, u.spec.username, u.spec.address,
                                         u.spec.behind_nat, dict(vars(u.stats))) for u in users),
        **sums)


# ---------------------------------------------------------------- running a crowd

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
