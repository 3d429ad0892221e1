"""One simulated person (`VirtualUser`) and what all users of a crowd share (`_Crowd`).

A user owns its socket, cookies or tokens, RNG and its memory of what it added, so lost state is
measured from the user's side.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import random
from typing import Any, Collection

from statelab.httpclient import HttpClient, HttpError, Response
from statelab.seed import SEED_PASSWORD, SEED_PRODUCTS
from statelab.users.measures import UserStats, _clock, _Recorder
from statelab.users.population import Population, UserSpec, zipf_cumulative

SESSION_COOKIE = "lab_session"
_MIN_ERROR_PAUSE_S = 0.05  # after an error, so a dead server does not turn users into a busy loop


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
                                                       "password": SEED_PASSWORD}, b"", None, (), False)
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


_ZIPF_CUMULATIVE = zipf_cumulative(SEED_PRODUCTS)


def _json(response: Response | None) -> dict[str, Any]:
    if response is None:
        return {}
    try:
        doc = json.loads(response.body)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}
