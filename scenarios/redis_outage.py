"""redis-outage: Redis dies under load and comes back a few seconds later: what did the stateless app lose?"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass, field

import redis
import requests

from statelab import measure
from statelab.engines import HEALTH_PATH
from statelab.errors import ScenarioError
from statelab.harness import Harness, crowd_series, error_notes, failed_requests
from statelab.scenario import (AppCase, CaseContext, Figure, Finding, Measurements, Profile, Tolerance, Verdict,
                               judge, scale_profile)
from statelab.seed import SEED_PASSWORD, username
from statelab.services import SENTINEL_MASTER
from statelab.topology import Lab
from statelab.turns import TOGETHER
from statelab.users import CrowdResult, Population

PLAIN, AOF, SENTINEL, READYZ = "no persistence", "AOF everysec", "replica + Sentinel", "no persistence + readyz checks"
# Per variant: how the lab runs Redis, what the balancer's health checks ask, and how many instances
# it balances. One is enough to lose data; the /readyz column needs several to show them leave together.
SETUP = {"": ("plain", HEALTH_PATH, 1), PLAIN: ("plain", HEALTH_PATH, 1), AOF: ("aof", HEALTH_PATH, 1),
         SENTINEL: ("sentinel", HEALTH_PATH, 1), READYZ: ("plain", "/readyz", 2)}
POLICY = {"stateful": "cookie", "stateless": "round-robin"}
PROBE = "jwt-probe"  # a JWT-mode instance next to the stateless lab: its denylist is the revocations
PROBE_ENV = (("LAB_AUTH_MODE", "jwt"), ("LAB_JWT_REVOCATION", "denylist"), ("LAB_JWT_ACCESS_TTL_S", "3600"))
REVOKED = 8  # credentials revoked before the outage and replayed after it
TIMEOUT_S = 5.0
PROMOTION_TIMEOUT_S = 10.0
READY_TIMEOUT_S = 5.0
FILL_TIMEOUT_S = 8.0  # at most this long for the users to fill their carts before the outage


@dataclass
class Revocations:
    """Credentials logged out before the outage (JWTs on the probe instance, or session cookies) and their replay."""

    url: str
    jwt: bool
    revoked: list[dict[str, str]] = field(default_factory=list)  # the copies an attacker would keep

    def revoke(self, accounts: range) -> None:
        """Log each account in, check the credential works, log out, check it no longer does."""
        for account in accounts:
            s = requests.Session()
            r = s.post(f"{self.url}/login", json={"username": username(account), "password": SEED_PASSWORD},
                       timeout=TIMEOUT_S)
            r.raise_for_status()
            creds = {"Authorization": f"Bearer {r.json()['access_token']}"} if self.jwt else {}
            cookies = {k: v for k, v in s.cookies.items() if v is not None}
            if self._me(creds, cookies) != 200:
                raise ScenarioError(f"the revocation probe's fresh login as {username(account)} was refused")
            s.post(f"{self.url}/logout", headers=creds, timeout=TIMEOUT_S).raise_for_status()
            if self._me(creds, cookies) != 401:
                raise ScenarioError("the revocation probe's credential still worked right after its logout")
            self.revoked.append({**creds, **{f"cookie:{k}": v for k, v in cookies.items()}})

    def replay(self) -> int:
        """Return how many revoked credentials are accepted again."""
        accepted = 0
        for saved in self.revoked:
            headers = {k: v for k, v in saved.items() if not k.startswith("cookie:")}
            cookies = {k.removeprefix("cookie:"): v for k, v in saved.items() if k.startswith("cookie:")}
            accepted += self._me(headers, cookies) == 200
        return accepted

    def _me(self, headers: dict[str, str], cookies: dict[str, str]) -> int:
        return requests.get(f"{self.url}/me", headers=headers, cookies=cookies, timeout=TIMEOUT_S).status_code


@dataclass(frozen=True)
class RedisOutage:
    """Redis is the dependency every stateless request waits on: when it dies, what does it take with it?

    What breaks: under load, Redis is killed (kill -9: an OOM kill, a lost node) and comes back a few
    seconds later. The stateless app answers 503 for everything that needs it, which is nearly
    everything. Without persistence, Redis comes back empty: every session, every cart, every
    revoked token's denylist entry is gone, so users are logged out, their carts are empty, and
    tokens revoked before the outage work again; the product cache is cold too.

    Why: the stateless design did not remove state, it moved it into one shared service. That
    service is now a single point of failure for every instance at once, and its durability is the
    durability of the users' data. The stateful app is the honest counterpoint: it does not use
    Redis at all and does not notice.

    What the stateless design does about it: persistence (AOF, fsync every second: a process kill
    loses nothing already acknowledged; only a machine crash loses up to a second, which this lab
    cannot simulate) keeps the data across a restart; a replica with Sentinel fails over in seconds
    with the data, so the outage shrinks to a brief burst of errors. A readiness check on `/readyz`
    does not help: every instance depends on the same Redis, so the balancer takes them all out at
    once, answers the 503s itself, and puts them back only after its health checks pass again.
    """

    name: str = "redis-outage"
    title: str = "Redis outage"
    summary: str = "Redis dies under load and is back seconds later: sessions, carts and revocations lost?"
    traffic: str = TOGETHER  # it counts what users lost: the cases run at once
    tolerances: tuple[Tolerance, ...] = (
        Tolerance("users_logged_out", "<=", 0, "an outage of the store must not log anyone out"),
        Tolerance("items_lost", "<=", 0, "an outage of the store must not empty anyone's cart"),
        Tolerance("revocations_forgotten", "<=", 0, "a credential revoked before the outage stays revoked"),
    )
    preconditions: tuple[Tolerance, ...] = (
        Tolerance("logins", ">=", 1, "users must have logged in"),
        Tolerance("items_added", ">=", 1, "users must have shopped"),
        Tolerance("revocations", ">=", 1, "credentials must have been revoked before the outage"),
    )

    def cases(self) -> tuple[AppCase, ...]:
        return (AppCase("stateful", expect="survived"),
                AppCase("stateless", variant=PLAIN, expect="reproduced"),
                AppCase("stateless", variant=AOF, expect="survived"),
                AppCase("stateless", variant=SENTINEL, expect="survived"),
                AppCase("stateless", variant=READYZ, expect="reproduced"))

    @property
    def expect(self) -> dict[str, Finding]:
        return {c.label: c.expect for c in self.cases() if c.expect is not None}

    def profile(self, quick: bool, users: int | None) -> Profile:
        n = scale_profile(60, quick, 12, users)
        return Profile(users=n, instances=1, phase_s=1.0 if quick else 4.0,
                       extra=(("outage_s", 2.0 if quick else 3.0), ("after_s", 1.5 if quick else 5.0), ("think_s", 0.3)),
                       seed_users=max(100, n + REVOKED))

    def run(self, ctx: CaseContext) -> Measurements:
        profile, app = ctx.profile, ctx.app
        stateless = app.app == "stateless"
        mode, health_path, instances = SETUP[app.variant]
        with Harness(ctx) as h:
            lab = h.start_lab(max(profile.instances, instances), POLICY[app.app], seed_users=profile.seed_users, job_workers=0,
                              redis=mode, health_path=health_path,
                              side_instances=((PROBE, PROBE_ENV),) if stateless else (),
                              own_stores=("redis",))  # the outage kills it: never the run's shared one
            h.start_samplers()
            assert lab.engine is not None
            rotation = measure.RotationSampler(lab.engine.backends).start()
            h.stack.callback(rotation.stop)
            crowd = h.crowd(Population(distinct_users=profile.users, think_s=profile.get("think_s", 0.3)), "shopper",
                            ctx.seed, ramp_s=0.5)
            h.phase("users shop", f"{profile.users} users; Redis: {mode if stateless else 'not used'}")
            probe = Revocations(lab.side[PROBE].url if stateless else h.base_url, jwt=stateless)
            probe.revoke(range(profile.users + 1, profile.users + 1 + REVOKED))
            # The outage strikes users with something to lose: a busy machine only makes this phase longer.
            h.hold_until(lambda c: c.items_added >= 3 * profile.users, crowd, max(0.0, profile.phase_s - h.now()),
                         FILL_TIMEOUT_S)
            cached_before = _cached_products(lab) if stateless else math.nan
            t_kill = h.phase("Redis is killed", "SIGKILL" if stateless else "the stateful app does not use it")
            if stateless:
                lab.kill_store("redis", signal.SIGKILL)
            t_promoted = math.nan
            if mode == "sentinel" and stateless:
                t_promoted = _wait_for_promotion(lab, h) - h.t0
                h.phase("Sentinel promoted the replica", f"after {t_promoted - t_kill:.1f} s")
            h.hold(max(0.0, t_kill + profile.get("outage_s", 2.5) - h.now()), crowd)
            h.phase("Redis is back", "same port, same data directory" if stateless else "")
            if stateless:
                lab.restart_store("redis")
            t_back = h.now()
            cached_after = _cached_products(lab) if stateless else math.nan
            h.hold(profile.get("after_s", 2.0), crowd)
            t_end = h.now()
            if stateless:
                _wait_ready(lab.side[PROBE].url)
            forgotten = probe.replay()
            (result,) = h.finish(crowd)
            rotation.stop()
            return self._measure(h, lab, result, rotation.samples, len(probe.revoked), forgotten,
                                 (cached_before, cached_after), Edges(t_kill, t_promoted, t_back, t_end), health_path)

    def _measure(self, h: Harness, lab: Lab, result: CrowdResult, rotation: list[tuple[float, tuple[str, ...]]],
                 revoked: int, forgotten: int, cached: tuple[float, float], e: "Edges",
                 health_path: str) -> Measurements:
        hits, t0 = h.hits, h.t0
        span = measure.failure_span(hits, t0 + e.kill)
        first_after_back = measure.first_answer_after(hits, t0 + e.back)
        first_after_failure = measure.first_answer_after(hits, span[0]) if span else None
        back_in_rotation = measure.back_in_rotation_at(rotation, t0 + e.back)
        latency = measure.latency(measure.window(hits, t0, t0 + e.kill), "before the outage (the cases ran at once)")
        figures = (
            Figure("users", "simulated users", result.users, "users"),
            Figure("logins", "successful logins", result.logins_ok, ""),
            Figure("users_logged_out", "users logged out", result.users_logged_out, "users"),
            Figure("items_added", "items added to carts", result.items_added, "items"),
            Figure("items_lost", "items lost from carts", result.items_lost, "items"),
            Figure("revocations", "credentials revoked before the outage", revoked, ""),
            Figure("revocations_forgotten", "revoked credentials accepted again after it", forgotten, ""),
            Figure("failed_requests", "failed requests (no answer, timeout, 5xx)", failed_requests(result), "req"),
            Figure("outage_s", "seconds from the kill until Redis was back", round(e.back - e.kill, 2), "s"),
            Figure("unavailable_s", "seconds from the first to the last failed request",
                   round(span[1] - span[0], 2) if span else 0.0, "s"),
            Figure("first_success_after_back_s", "seconds from Redis back to the first request answered",
                   round(first_after_back - (t0 + e.back), 3) if first_after_back is not None else math.nan, "s"),
            Figure("failover_s", "seconds from the kill to requests answered again (Sentinel failover)",
                   round(first_after_failure - (t0 + e.kill), 2)
                   if first_after_failure is not None and e.promoted == e.promoted else math.nan, "s"),
            Figure("no_instance_s", "seconds with no instance in the balancer's rotation",
                   round(measure.empty_rotation_s(rotation, t0 + e.kill, t0 + e.end), 2), "s"),
            Figure("back_in_rotation_s", "seconds from Redis back to an instance back in rotation",
                   round(back_in_rotation - (t0 + e.back), 2) if back_in_rotation is not None else math.nan, "s"),
            Figure("readyz_checks", "the balancer's health checks ask /readyz (1 = yes)",
                   int(health_path == "/readyz"), ""),
            Figure("cache_before", "products in the shared cache just before the kill", cached[0], ""),
            Figure("cache_after", "products in it when Redis was back (a cold cache: the few just refilled)",
                   cached[1], ""),
            Figure("p50_ms", "p50 latency (before the outage)", latency.p50_ms, "ms"),
            Figure("p99_ms", "p99 latency (before the outage)", latency.p99_ms, "ms"),
        )
        series = crowd_series(result)
        notes = (f"Redis: {', '.join(n for n in lab.stores if n.startswith(('redis', 'sentinel'))) or 'none'}; "
                 f"health checks GET {health_path}",) + error_notes(result)
        return Measurements(figures, latency, h.events(), series,
                            measure.shares(hits, [i.id for i in lab.status().instances]), notes)

    def verdict(self, m: Measurements) -> Verdict:
        v = judge(m, self.tolerances, self.preconditions,
                  survived_because=_survived(m),
                  reproduced_because="Redis came back empty: the sessions, carts and revocations it held were gone, "
                                     "so users were logged out, carts emptied and revoked tokens worked again.")
        if m.value("readyz_checks") == 1 and v.outcome != "error":
            return Verdict(v.outcome, v.explanation + " " + _readyz_story(m), v.checks)
        return v


@dataclass(frozen=True)
class Edges:
    """Phase edges, in seconds since traffic started."""

    kill: float
    promoted: float  # NaN unless Sentinel promoted a replica
    back: float
    end: float


def _survived(m: Measurements) -> str:
    if m.value("failed_requests") == 0:
        return "The outage did not touch it: nothing it holds lives in Redis."
    if m.value("failover_s") == m.value("failover_s"):
        return (f"Sentinel promoted the replica: requests failed for {_fmt(m.value('failover_s'))} s, and "
                f"nothing was lost.")
    return (f"Redis replayed its append-only file on restart: {_fmt(m.value('failed_requests'))} requests failed "
            f"during the outage, and nothing was lost.")


def _readyz_story(m: Measurements) -> str:
    """Say whether checking /readyz helped the users or hurt them (from the figures alone)."""
    return (f"Checking /readyz took every instance out at once ({_fmt(m.value('no_instance_s'))} s with none in "
            f"rotation): users got the balancer's 503s instead of the app's, no fewer, and after Redis was back they "
            f"waited {_fmt(m.value('first_success_after_back_s'))} s for the health checks to put an instance back. "
            f"Every instance shares the one Redis, so the check hurt more than it helped.")


def _wait_for_promotion(lab: Lab, h: Harness) -> float:
    """Wait until the Sentinel names another master than the killed one; return the wall-clock time."""
    old = int(lab.stores["redis"].extra["port"])
    port = int(lab.stores["sentinel-1"].extra["port"])
    client = redis.Redis(port=port, socket_timeout=1.0, socket_connect_timeout=1.0)
    deadline = time.monotonic() + PROMOTION_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            if h.ctx.turn.aborted:
                raise KeyboardInterrupt
            try:
                addr = client.execute_command("SENTINEL", "get-master-addr-by-name", SENTINEL_MASTER)
            except redis.RedisError:
                addr = None
            if addr and int(addr[1]) != old:
                return time.time()
            time.sleep(0.05)
    finally:
        client.close()
    raise ScenarioError(f"Sentinel did not promote the replica within {PROMOTION_TIMEOUT_S:.0f} s")


def _wait_ready(url: str) -> None:
    """Wait until an instance's /readyz answers 200 (its Redis connection is back), bounded."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/readyz", timeout=TIMEOUT_S).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise ScenarioError(f"{url} was not ready {READY_TIMEOUT_S:.0f} s after Redis was back")


def _cached_products(lab: Lab) -> float:
    """Count the product keys in the lab's Redis master (found through Sentinel when there is one)."""
    if "sentinel-1" in lab.stores:
        sentinel = redis.Redis(port=int(lab.stores["sentinel-1"].extra["port"]), socket_timeout=TIMEOUT_S)
        try:
            host, port = sentinel.execute_command("SENTINEL", "get-master-addr-by-name", SENTINEL_MASTER)
        finally:
            sentinel.close()
        client = redis.Redis(host=host.decode() if isinstance(host, bytes) else host, port=int(port),
                             socket_timeout=TIMEOUT_S)
    else:
        client = redis.Redis.from_url(lab.stores["redis"].url, socket_timeout=TIMEOUT_S)
    try:
        return float(sum(1 for _ in client.scan_iter(match=f"{measure.CACHE_KEY_PREFIX}*", count=1000)))
    finally:
        client.close()


def _fmt(v: float) -> str:
    return "n/a" if v != v else f"{v:.0f}" if float(v).is_integer() else f"{v:.1f}"


SCENARIO = RedisOutage()
