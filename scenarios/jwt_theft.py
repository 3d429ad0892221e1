"""jwt-theft: an attacker replays a stolen token after its user logged out; how long does it still work?"""

from __future__ import annotations

import base64
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import requests

from statelab import measure
from statelab.harness import Harness
from statelab.scenario import (AppCase, CaseContext, Event, Figure, Finding, Latency, Measurements, Profile,
                               Tolerance, Verdict, judge, percentile)
from statelab.seed import SEED_PASSWORD, username
from statelab.turns import TOGETHER

JWT = (("LAB_AUTH_MODE", "jwt"),)
HOUR_TOKEN = JWT + (("LAB_JWT_REVOCATION", "none"), ("LAB_JWT_ACCESS_TTL_S", "3600"))
SHORT_TOKEN = JWT + (("LAB_JWT_REVOCATION", "none"), ("LAB_JWT_ACCESS_TTL_S", "2"), ("LAB_JWT_REUSE_DETECTION", "1"))
DENYLIST = JWT + (("LAB_JWT_REVOCATION", "denylist"), ("LAB_JWT_ACCESS_TTL_S", "3600"))
VICTIM, BYSTANDER, ROTATOR = 1, 2, 3  # seeded accounts: the user robbed, the one timed, the one who refreshes
TIMEOUT_S = 5.0
SEED_USERS = 20
SEED_PRODUCTS = 20


@dataclass
class Replays:
    """What the attacker got back, replaying the stolen credential every interval (times: wall clock)."""

    logout_at: float = math.nan
    accepted: list[float] = field(default_factory=list)  # 200s
    refused: list[float] = field(default_factory=list)  # anything else
    refreshes_ok: int = 0  # refreshes with the stolen refresh token that got new tokens after the logout

    def accepted_after_logout(self) -> list[float]:
        return [t for t in self.accepted if t >= self.logout_at]


@dataclass(frozen=True)
class JwtTheft:
    """A stolen access token keeps working after its user logged out: stateless tokens cannot be revoked.

    What breaks: an attacker copies a user's token (a leaked log line, a malicious browser
    extension, an XSS) and replays it. The user notices and logs out. With a server-side session
    the logout ends the session and the copy is worthless at once. A JWT is checked by its
    signature alone: the server keeps nothing it could delete, so the stolen token stays valid
    until it expires, for an hour if that is its lifetime. Its refresh token is another matter:
    refreshing is stateful in every mode, so the logout revokes it.

    Why: the principle at stake is that revocation is state. A token that needs no lookup is
    exactly a token nobody can take back. The stateless design moved session state out of the
    server; it cannot make that state disappear.

    What the stateless design does about it: either short access tokens (minutes; 2 s here) with
    rotating refresh tokens, so a stolen copy dies soon and a reused refresh token revokes the whole
    login (reuse detection); or a denylist of revoked token ids in Redis, which ends a login at once
    at the price of one Redis lookup per request: state again, which the `redis-outage` scenario
    shows can be forgotten.
    """

    name: str = "jwt-theft"
    title: str = "Stolen token"
    summary: str = "an attacker replays a stolen token after its user logged out: how long it still works"
    traffic: str = TOGETHER  # it counts seconds of access, not milliseconds: the cases run at once
    tolerances: tuple[Tolerance, ...] = (
        Tolerance("attacker_access_s", "<=", 5, "a logout must end a stolen token's access within seconds"),
        Tolerance("refresh_after_logout", "==", 0, "a stolen refresh token must not mint new tokens after the logout"),
    )
    preconditions: tuple[Tolerance, ...] = (
        Tolerance("accepted_before_logout", ">=", 1, "the stolen credential must have worked before the logout"),
        Tolerance("replays", ">=", 10, "the attacker must have replayed it after the logout"),
    )

    def cases(self) -> tuple[AppCase, ...]:
        return (AppCase("stateful", expect="survived"),
                AppCase("stateless", variant="JWT 1 h", env=HOUR_TOKEN, expect="reproduced"),
                AppCase("stateless", variant="JWT 2 s + rotation", env=SHORT_TOKEN, expect="survived"),
                AppCase("stateless", variant="JWT 1 h + denylist", env=DENYLIST, expect="survived"))

    @property
    def expect(self) -> dict[str, Finding]:
        return {c.label: c.expect for c in self.cases() if c.expect is not None}

    def profile(self, quick: bool, users: int | None) -> Profile:
        # The replay outlasts a 2 s token issued just before the logout (it expires within 2 s of its issue).
        return Profile(users=1, instances=1, phase_s=2.0 if quick else 6.0,
                       extra=(("logout_after_s", 0.5), ("replay_every_s", 0.1), ("timed_requests", 100 if quick else 600)),
                       seed_users=SEED_USERS)

    def run(self, ctx: CaseContext) -> Measurements:
        profile = ctx.profile
        jwt = dict(ctx.app.env).get("LAB_AUTH_MODE") == "jwt"
        with Harness(ctx) as h:
            # One instance and no balancer: the attack is about the token, not about routing.
            # Its own Redis: the denylist's lookups are counted in INFO commandstats, a figure of the whole server.
            lab = h.start_lab(1, "round-robin", seed_users=profile.seed_users, seed_products=SEED_PRODUCTS,
                              job_workers=0, balancer=False, own_stores=("redis",))
            redis_url = lab.stores["redis"].url if "redis" in lab.stores else None
            h.start_samplers()
            base = h.base_url
            h.phase("a user browses (the price of each check)", f"{int(profile.get('timed_requests'))} GET /me")
            lookups_before = measure.redis_command_calls(redis_url, "exists") if redis_url else 0
            timings, refreshes = _timed_me(base, jwt, int(profile.get("timed_requests")))
            lookups = (measure.redis_command_calls(redis_url, "exists") - lookups_before) if redis_url else 0
            reuse = _reuse_detected(base) if jwt else math.nan
            t_login = h.phase("the victim logs in; the attacker copies the token")
            stolen, victim = _login(base, VICTIM, jwt)
            replays = _attack(h, base, stolen, victim, jwt, profile)
            t_logout = replays.logout_at - h.t0
            h.finish()
            return self._measure(h, replays, stolen, timings, refreshes, lookups, reuse, t_login, t_logout, jwt,
                                 profile)

    def _measure(self, h: Harness, replays: Replays, stolen: dict[str, str], timings: list[float], refreshes: int,
                 lookups: int, reuse: float, t_login: float, t_logout: float, jwt: bool,
                 profile: Profile) -> Measurements:
        after = replays.accepted_after_logout()
        measured_s = round(max(after) - replays.logout_at, 2) if after else 0.0
        last = max(replays.accepted + replays.refused, default=math.nan)
        outlived = bool(after) and max(after) == last  # still accepted when the run stopped replaying
        lifetime_s = _lifetime_left_s(stolen.get("access_token", ""), replays.logout_at) if jwt else math.nan
        access_s = lifetime_s if outlived and lifetime_s == lifetime_s else measured_s
        latency = Latency(round(percentile(timings, 50), 3), round(percentile(timings, 99), 3), len(timings),
                          "GET /me, the cases ran at once")
        figures = (
            Figure("attacker_access_s", "attacker's access after the logout (the token's lifetime if it outlived "
                                        "the run)", access_s, "s"),
            Figure("attacker_access_measured_s", "attacker's access after the logout, as measured (capped by the run)",
                   measured_s, "s"),
            Figure("outlived_run", "stolen credential still accepted when the run ended (1 = yes)", int(outlived), ""),
            Figure("token_lifetime_left_s", "stolen token's lifetime left at the logout", lifetime_s, "s"),
            Figure("accepted_before_logout", "attacker's replays accepted before the logout",
                   len(replays.accepted) - len(after), "req"),
            Figure("accepted_after_logout", "attacker's replays accepted after the logout", len(after), "req"),
            Figure("replays", "attacker's replays after the logout",
                   len(after) + sum(1 for t in replays.refused if t >= replays.logout_at), "req"),
            Figure("refresh_after_logout", "attacker's refreshes that got new tokens after the logout",
                   replays.refreshes_ok, ""),
            Figure("reuse_detected", "a reused refresh token revoked its whole login (1 = yes)", reuse, ""),
            Figure("me_p50_ms", "GET /me p50 (the cases ran at once)", latency.p50_ms, "ms"),
            Figure("me_p99_ms", "GET /me p99", latency.p99_ms, "ms"),
            Figure("redis_lookups_per_request", "Redis lookups per request (the denylist's EXISTS)",
                   round(lookups / len(timings), 2) if jwt and timings else math.nan, ""),
            Figure("refreshes", f"refreshes a user needed over {len(timings)} requests (a short token's price)",
                   refreshes if jwt else math.nan, ""),
        )
        events = h.events() + (Event(t_logout, "phase", "the victim logs out", "the attacker keeps replaying"),)
        series = (measure.count_per_second("requests", replays.accepted + replays.refused, h.t0),
                  measure.count_per_second("attacker accepted", after, h.t0))
        notes = ((f"the stolen token was still accepted when the run stopped replaying: it works for its whole "
                  f"lifetime, {lifetime_s:,.0f} s after the logout",) if outlived and lifetime_s == lifetime_s else ())
        return Measurements(figures, latency, tuple(sorted(events, key=lambda e: e.t)), series, (), notes)

    def verdict(self, m: Measurements) -> Verdict:
        lifetime = m.value("outlived_run") == 1
        return judge(m, self.tolerances, self.preconditions,
                     survived_because="The logout ended the stolen credential's access "
                                      + ("at once." if m.value("attacker_access_measured_s") == 0 else
                                         f"within {_fmt(m.value('attacker_access_measured_s'))} s (its lifetime)."),
                     reproduced_because=("Nothing can revoke a token checked by its signature alone: the stolen "
                                         "token works for its whole lifetime after the logout."
                                         if lifetime else "The stolen credential kept working after the logout."))


def _session(jwt: bool, creds: dict[str, str]) -> requests.Session:
    s = requests.Session()
    if jwt:
        s.headers["Authorization"] = f"Bearer {creds['access_token']}"
    else:
        s.cookies.update(creds)
    return s


def _login(base: str, account: int, jwt: bool) -> tuple[dict[str, str], requests.Session]:
    """Log in as a seeded account; return (the credentials, as a thief would copy them; the user's session)."""
    s = requests.Session()
    r = s.post(f"{base}/login", json={"username": username(account), "password": SEED_PASSWORD}, timeout=TIMEOUT_S)
    r.raise_for_status()
    if jwt:
        doc = r.json()
        creds = {"access_token": doc["access_token"], "refresh_token": doc["refresh_token"]}
        s.headers["Authorization"] = f"Bearer {creds['access_token']}"
        return creds, s
    return {k: v for k, v in s.cookies.items() if v is not None}, s


def _timed_me(base: str, jwt: bool, n: int) -> tuple[list[float], int]:
    """Return the latencies (ms) of n GET /me of one logged-in user (what each check of the credential
    costs), and how many refreshes a short-lived token needed meanwhile (those requests are not timed)."""
    creds, _ = _login(base, BYSTANDER, jwt)
    s = _session(jwt, creds)
    out: list[float] = []
    refreshes = 0
    while len(out) < n:
        t = time.perf_counter()
        r = s.get(f"{base}/me", timeout=TIMEOUT_S)
        if r.status_code == 401 and jwt and refreshes < n:  # the access token expired: refresh, as a client does
            fresh = requests.post(f"{base}/token/refresh", json={"refresh_token": creds["refresh_token"]},
                                  timeout=TIMEOUT_S)
            fresh.raise_for_status()
            creds = {"access_token": fresh.json()["access_token"], "refresh_token": fresh.json()["refresh_token"]}
            s.headers["Authorization"] = f"Bearer {creds['access_token']}"
            refreshes += 1
            continue
        r.raise_for_status()
        out.append((time.perf_counter() - t) * 1000)
    return out, refreshes


def _reuse_detected(base: str) -> float:
    """Rotate a refresh token, let a thief reuse the spent one, and return 1 if that revoked the user's login."""
    creds, _ = _login(base, ROTATOR, jwt=True)
    rotated = requests.post(f"{base}/token/refresh", json={"refresh_token": creds["refresh_token"]}, timeout=TIMEOUT_S)
    rotated.raise_for_status()
    requests.post(f"{base}/token/refresh", json={"refresh_token": creds["refresh_token"]}, timeout=TIMEOUT_S)
    again = requests.post(f"{base}/token/refresh", json={"refresh_token": rotated.json()["refresh_token"]},
                          timeout=TIMEOUT_S)
    return 1.0 if again.status_code == 401 else 0.0


def _attack(h: Harness, base: str, stolen: dict[str, str], victim: requests.Session, jwt: bool,
            profile: Profile) -> Replays:
    """Replay the stolen credential every interval; the victim logs out partway; then try the stolen refresh token."""
    replays = Replays()
    thief = _session(jwt, stolen)
    every = profile.get("replay_every_s", 0.1)
    logout_at = time.time() + profile.get("logout_after_s", 0.5)
    end = logout_at + profile.phase_s
    refreshed = False
    while time.time() < end:
        if h.ctx.turn.aborted:
            raise KeyboardInterrupt
        if math.isnan(replays.logout_at) and time.time() >= logout_at:
            _logout(base, victim, stolen, jwt)
            replays.logout_at = time.time()
        status = thief.get(f"{base}/me", timeout=TIMEOUT_S).status_code
        (replays.accepted if status == 200 else replays.refused).append(time.time())
        if not refreshed and not math.isnan(replays.logout_at):
            refreshed = True
            if jwt:  # the stateful app has no refresh token: there is nothing else to steal
                r = requests.post(f"{base}/token/refresh", json={"refresh_token": stolen["refresh_token"]},
                                  timeout=TIMEOUT_S)
                replays.refreshes_ok += r.status_code == 200
        time.sleep(every)
    return replays


def _logout(base: str, victim: requests.Session, creds: dict[str, str], jwt: bool) -> None:
    """Log the victim out; a short token that expired meanwhile is refreshed first, as a client would."""
    r = victim.post(f"{base}/logout", timeout=TIMEOUT_S)
    if r.status_code == 401 and jwt:
        fresh = requests.post(f"{base}/token/refresh", json={"refresh_token": creds["refresh_token"]},
                              timeout=TIMEOUT_S)
        fresh.raise_for_status()
        victim.headers["Authorization"] = f"Bearer {fresh.json()['access_token']}"
        r = victim.post(f"{base}/logout", timeout=TIMEOUT_S)
    r.raise_for_status()


def _lifetime_left_s(token: str, at: float) -> float:
    """Return how long a JWT stays valid after `at` (wall clock), from its exp claim; NaN when unreadable."""
    try:
        payload = token.split(".")[1]
        claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(round(max(0.0, float(claims["exp"]) - at)))
    except (IndexError, KeyError, ValueError, TypeError):
        return math.nan



def _fmt(v: float) -> str:
    return f"{v:.1f}" if v == v else "n/a"


SCENARIO = JwtTheft()
