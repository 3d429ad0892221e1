"""lost-update: one user, several tabs, concurrent cart adds: a read-modify-write of a session blob loses some."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import requests

from statelab import measure
from statelab.harness import Harness, crowd_series, error_notes, failed_requests
from statelab.scenario import (AppCase, CaseContext, Figure, Finding, Measurements, Profile, Tolerance, Verdict,
                               judge, scale_profile)
from statelab.turns import TOGETHER
from statelab.users import Browser, Population, tabs

# The stateful app must keep one user on one instance (its cart is in that memory): cookie
# stickiness. The stateless app's cart is in Redis, so any instance may take any add.
POLICY = {"stateful": "cookie", "stateless": "round-robin"}
INSTANCES = 2
TABS = 8
PRODUCT_ID = 7
SEED_USERS = 50
SEED_PRODUCTS = 50  # the tabs add one product: a small catalogue seeds faster
WAIT_FOR_ADDS_S = 30.0
READ_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class LostUpdate:
    """Two tabs of one user add to the cart at the same moment, and one of the adds silently disappears.

    What breaks: a user has the shop open in several tabs (or a page fires requests in parallel).
    With carts kept as one JSON blob per session, as Flask-Session-style stores do, each add reads
    the whole cart, changes it and writes it all back. Two adds that overlap both read the same old
    cart; the second write erases the first one's item. Every add answered 201, and the cart is
    still short. Nothing fails, nothing is logged: the items are just gone.

    Why: the principle violated is "a shared store needs atomic updates". Moving state out of the
    process into Redis makes it shared between instances and threads, so concurrent writers now
    race on it; a read-modify-write across two round trips is not a transaction.

    What the stateless design does differently: the cart is a Redis hash and an add is one HINCRBY,
    atomic in Redis, however many instances and threads send adds at once (WATCH/MULTI or a Lua
    script would do for changes HINCRBY cannot express). The stateful app is safe here only because
    a lock guards its in-memory cart and sticky routing sends every tab to that one memory.
    """

    name: str = "lost-update"
    title: str = "Lost update"
    summary: str = "one user, 8 tabs, concurrent cart adds: a read-modify-write of a cart blob loses items"
    traffic: str = TOGETHER  # it counts items, not milliseconds: the cases send their adds at the same time
    tolerances: tuple[Tolerance, ...] = (
        Tolerance("items_lost", "<=", 0, "every add the server acknowledged is in the cart"),
    )
    preconditions: tuple[Tolerance, ...] = (
        Tolerance("adds_acked", ">=", 50, "the tabs must have added enough items to measure a loss"),
        Tolerance("tabs", ">=", 2, "more than one tab must have added at the same time"),
    )

    def cases(self) -> tuple[AppCase, ...]:
        return (AppCase("stateful", expect="survived"),
                AppCase("stateless", expect="survived"),
                AppCase("stateless", variant="naive cart", env=(("LAB_CART_MODE", "naive"),), expect="reproduced"))

    @property
    def expect(self) -> dict[str, Finding]:
        return {c.label: c.expect for c in self.cases() if c.expect is not None}

    def profile(self, quick: bool, users: int | None) -> Profile:
        adds = 400 if quick else 2000
        return Profile(users=scale_profile(TABS, quick, TABS, users), instances=INSTANCES, phase_s=0.0,
                       extra=(("adds", adds),), seed_users=SEED_USERS)

    def run(self, ctx: CaseContext) -> Measurements:
        profile = ctx.profile
        with Harness(ctx) as h:
            lab = h.start_lab(profile.instances, POLICY[ctx.app.app], seed_users=profile.seed_users,
                              seed_products=SEED_PRODUCTS, job_workers=0)
            h.start_samplers()
            n_tabs = max(2, profile.users)
            per_tab = max(1, int(profile.get("adds")) // n_tabs)
            browser = Browser(product_id=PRODUCT_ID)
            # One browser: every tab from one source address, each tab on its own connection.
            crowd = h.crowd(Population(nat_users=n_tabs, think_s=0.0, steps=per_tab), tabs(browser), ctx.seed,
                            ramp_s=0.0)
            h.phase("tabs add to one cart at once", f"{n_tabs} tabs x {per_tab} adds of product {PRODUCT_ID}")
            h.wait_done(crowd, WAIT_FOR_ADDS_S)
            (result,) = h.finish(crowd)
            in_cart = cart_quantity(h.base_url, browser.cookies, PRODUCT_ID)
            adds = [x for x in h.hits if x.path == "/cart/items"]
            latency = measure.latency(adds, "cart adds (the cases ran at once)")
            backends = sorted({x.backend for x in adds if x.backend})
            lost = max(0, browser.adds_ok - in_cart) if in_cart is not None else math.nan
            figures = (
                Figure("tabs", "tabs sharing one login", n_tabs, ""),
                Figure("logins", "logins (one, shared by every tab)", result.logins_ok, ""),
                Figure("adds_sent", "cart adds sent", browser.adds_ok + browser.adds_failed, "req"),
                Figure("adds_acked", "cart adds acknowledged (201)", browser.adds_ok, "items"),
                Figure("adds_failed", "cart adds refused or failed", browser.adds_failed, "req"),
                Figure("items_in_cart", "items in the cart afterwards", in_cart if in_cart is not None else math.nan,
                       "items"),
                Figure("items_lost", "acknowledged items missing from the cart", lost, "items"),
                Figure("items_lost_per_1000", "items lost per 1,000 acknowledged adds",
                       round(1000 * lost / browser.adds_ok, 1) if browser.adds_ok and lost == lost else math.nan, ""),
                Figure("instances_used", "instances that took the adds", len(backends), ""),
                Figure("failed_requests", "failed requests (no answer, timeout, 5xx)", failed_requests(result), "req"),
                Figure("p50_ms", "p50 latency of an add", latency.p50_ms, "ms"),
                Figure("p99_ms", "p99 latency of an add", latency.p99_ms, "ms"),
            )
            notes = (f"cart mode: {dict(ctx.app.env).get('LAB_CART_MODE', 'atomic')}; "
                     f"instances that took the adds: {', '.join(backends) or 'none recorded'}",) + error_notes(result)
            return Measurements(figures, latency, h.events(), crowd_series(result),
                                measure.shares(h.hits, [i.id for i in lab.status().instances]), notes)

    def verdict(self, m: Measurements) -> Verdict:
        return judge(m, self.tolerances, self.preconditions,
                     survived_because="Every add the server acknowledged is in the cart: each one was applied "
                                      "atomically.",
                     reproduced_because=f"Concurrent adds read the same cart blob and the last write won: "
                                        f"{_fmt(m.value('items_lost_per_1000'))} of every 1,000 acknowledged "
                                        f"items vanished without an error.")


def cart_quantity(base_url: str, cookies: dict[str, str], product_id: int) -> int | None:
    """Return how many of product_id the cart behind these cookies holds (None when it cannot be read)."""
    try:
        response = requests.get(f"{base_url}/cart", cookies=cookies, timeout=READ_TIMEOUT_S)
        items = response.json().get("items", []) if response.status_code == 200 else None
    except (requests.RequestException, ValueError):
        return None
    if items is None:
        return None
    return sum(int(i.get("qty", 0)) for i in items if int(i.get("product_id", 0)) == product_id)


def _fmt(v: float) -> str:
    return f"{v:.0f}" if v == v else "n/a"


SCENARIO = LostUpdate()
