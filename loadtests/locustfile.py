"""Locust users that follow the scenario journeys (shop, browse, upload) against either app.

Business failures are Locust failures, so the web UI shows the disaster while someone runs
`statelab deploy` in another shell: "logged out" (a 401 after a good login), "cart lost" (the
cart lacks items this user added), "upload missing" (404 for an upload this user made), "job
missing". Each user binds its own loopback source address (127.A.B.C, one /24 per address) when
the target is on loopback, so ip-hash balancing and the NAT lesson work through Locust too.

Settings (environment): LAB_LOCUST_USERS_PER_ADDRESS (default 1: how many users share one
source address, as behind a NAT), LAB_LOCUST_ACCOUNTS (default 5000, every seeded
account: accounts to spread users over), LAB_LOCUST_THINK_S (default 1.0: mean pause between steps),
LAB_LOCUST_SHAPE (warm-up, steady, spike, phases, or `all` for the web UI's --class-picker; default:
none, so --users and --spawn-rate drive the run).

The seed's facts (accounts, password, products), the users' source addresses and the popularity
curve come from statelab (the compose image installs it too), so Locust's users and the scenarios'
simulated users are the same people. Importing Locust gevent-patches this process: Locust always
runs as its own process, never inside the lab's.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import random
import time
from typing import Any, Callable
from urllib.parse import urlsplit

import locust.stats
from locust import HttpUser, between, task

from statelab.seed import SEED_PASSWORD, SEED_PRODUCTS, SEED_USERS, username
from statelab.users import JOB_DEADLINE_S
from statelab.users.population import SourceAddressAdapter, user_address, zipf_cumulative  # the scenario users' scheme

import shapes  # loadtests/shapes.py: Locust puts the locustfile's directory on sys.path

JOB_POLL_S = 0.2
USERS_PER_WORKER = 100_000  # index offset per Locust worker, so distributed workers do not share addresses

# statelab reads the CSV files while the run goes on (tests wait for logins before a deploy):
# flush them every second rather than every five.
locust.stats.CSV_STATS_FLUSH_INTERVAL_SEC = 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "") or str(default)
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not an integer") from None
    if value < 1:
        raise SystemExit(f"{name} must be at least 1, not {value}")
    return value


USERS_PER_ADDRESS = _env_int("LAB_LOCUST_USERS_PER_ADDRESS", 1)
ACCOUNTS = _env_int("LAB_LOCUST_ACCOUNTS", SEED_USERS)
THINK_S = float(os.environ.get("LAB_LOCUST_THINK_S", "") or 1.0)


def is_loopback_host(url: str) -> bool:
    """Return whether url's host is on loopback (only then can a 127.A.B.C source reach it)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# Uploads are text (letters, spaces, newlines) so the apps' line and word counts mean something.
_TEXT_BYTES = bytes((b"abcdefghijklmnopqrstuvwxyz" * 8 + b" " * 40 + b"\n" * 8)[:256])
_PRODUCT_IDS = list(range(1, SEED_PRODUCTS + 1))
_ZIPF_CUMULATIVE = zipf_cumulative(SEED_PRODUCTS)
_user_numbers = itertools.count()


def _json(response: Any) -> dict[str, Any]:
    try:
        doc = response.json()
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _unexpected(response: Any) -> str:
    """Name an unexpected answer in Locust's failure tab: the status, who answered (an instance or the
    balancer itself, from X-Served-By) and the JSON error's first words, so a room can tell a store
    outage ("s3 unreachable") from a balancer with no backend left."""
    error = str(_json(response).get("error") or "").split(":")[0][:60]
    who = response.headers.get("X-Served-By") or "unknown"
    return f"HTTP {response.status_code} from {who}" + (f": {error}" if error else "")


class LabUser(HttpUser):
    """One person: an account, a source address, a session cookie or JWT, and a memory of its cart."""

    abstract = True
    wait_time = between(0.5 * THINK_S, 1.5 * THINK_S)

    def on_start(self) -> None:
        runner = self.environment.runner
        index = getattr(runner, "worker_index", 0) * USERS_PER_WORKER + next(_user_numbers)
        self.index = index
        self.username = username(index % ACCOUNTS + 1)
        self.address: str | None = None
        if is_loopback_host(self.host or ""):
            self.address = user_address(index // USERS_PER_ADDRESS)
            self.client.mount("http://", SourceAddressAdapter(self.address))
        self.rng = random.Random(index)
        self.logged_in = False
        self.access_token: str | None = None
        self.refresh_token: str | None = None
        self.cart: dict[int, int] = {}

    # --- requests -------------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"} if self.access_token else {}

    def call(self, method: str, path: str, name: str | None = None, expect: tuple[int, ...] = (200,),
             missing: str | None = None, check: Callable[[Any], str | None] | None = None,
             **kwargs: Any) -> Any:
        """Send one request and judge it; return the response if it passed, else None.

        A 401 while logged in is "logged out" (after a failed JWT refresh); a 404 is `missing`
        when given (the thing this user made is gone); `check` may fail an expected response with
        a message ("cart lost"). Connection errors stay Locust's own.
        """
        retried = False
        while True:
            with self.client.request(method, path, name=name or path, catch_response=True,
                                     headers=self._headers(), **kwargs) as resp:
                status = resp.status_code
                if status in expect:
                    problem = check(resp) if check else None
                    if problem:
                        resp.failure(problem)
                        return None
                    resp.success()
                    return resp
                if status == 0:
                    return None  # no response at all: Locust reports the connection error itself
                if status == 401 and self.logged_in and self.refresh_token and not retried and self._refresh():
                    resp.success()  # an expired access token: the protocol working as designed
                    retried = True
                    continue
                if status == 401 and self.logged_in:
                    resp.failure("logged out")
                    self.logged_in = False
                elif status == 404 and missing:
                    resp.failure(missing)
                else:
                    resp.failure(_unexpected(resp))
                return None

    def login(self) -> bool:
        """Log in with this user's account (cookie session or JWT, whichever the app answers with)."""
        self.access_token = self.refresh_token = None
        self.client.cookies.clear()
        resp = self.call("POST", "/login", json={"username": self.username, "password": SEED_PASSWORD})
        if resp is None:
            return False
        doc = _json(resp)
        self.access_token = doc.get("access_token")
        self.refresh_token = doc.get("refresh_token")
        self.logged_in = True
        return True

    def _refresh(self) -> bool:
        token, self.access_token = self.refresh_token, self.refresh_token
        with self.client.post("/token/refresh", name="/token/refresh", json={"refresh_token": token},
                              headers=self._headers(), catch_response=True) as resp:
            doc = _json(resp) if resp.status_code == 200 else {}
            if not doc.get("access_token"):
                resp.failure("refresh refused")
                self.access_token = None
                return False
            resp.success()
        self.access_token = doc["access_token"]
        self.refresh_token = doc.get("refresh_token", token)
        return True

    def ensure_login(self) -> bool:
        return self.logged_in or self.login()

    def pick_product(self) -> int:
        """Return a product id with Zipf-like popularity (product 1 is the best seller)."""
        return self.rng.choices(_PRODUCT_IDS, cum_weights=_ZIPF_CUMULATIVE)[0]

    # --- journey steps --------------------------------------------------------------------------

    def browse(self) -> None:
        self.call("GET", f"/products/{self.pick_product()}", "/products/[id]")

    def add_to_cart(self) -> None:
        pid, qty = self.pick_product(), self.rng.randint(1, 3)
        if self.call("POST", "/cart/items", expect=(200, 201),
                     json={"product_id": pid, "qty": qty}):
            self.cart[pid] = self.cart.get(pid, 0) + qty

    def check_cart(self) -> None:
        """Compare the server's cart with what this user added; a shortfall is "cart lost"."""
        self.call("GET", "/cart", check=self._cart_shortfall)

    def _cart_shortfall(self, resp: Any) -> str | None:
        shown: dict[int, int] = {}
        for item in _json(resp).get("items", []):
            shown[int(item["product_id"])] = shown.get(int(item["product_id"]), 0) + int(item["qty"])
        lost = sum(max(0, qty - shown.get(pid, 0)) for pid, qty in self.cart.items())
        self.cart = shown  # the server is the truth from here on: each loss is reported once
        return "cart lost" if lost else None

    def upload(self) -> None:
        """Upload a text file, process it, wait for the job, fetch the file back and compare."""
        data = self.rng.randbytes(self.rng.randint(1024, 16 * 1024)).translate(_TEXT_BYTES)
        resp = self.call("POST", "/uploads", expect=(200, 201),
                         files={"file": (f"u{self.index}.txt", data, "text/plain")})
        key = _json(resp).get("key") if resp is not None else None
        if not key:
            return
        resp = self.call("POST", f"/uploads/{key}/process", "/uploads/[key]/process", expect=(202,),
                         missing="upload missing")
        job_id = _json(resp).get("job_id") if resp is not None else None
        if job_id:
            self.wait_for_job(str(job_id))
        if self.logged_in:
            self.call("GET", f"/uploads/{key}", "/uploads/[key]", missing="upload missing",
                      check=lambda got: None if got.content == data else "upload corrupt")

    def wait_for_job(self, job_id: str) -> None:
        deadline = time.monotonic() + JOB_DEADLINE_S
        while self.logged_in and time.monotonic() < deadline:
            resp = self.call("GET", f"/jobs/{job_id}", "/jobs/[id]", missing="job missing")
            status = _json(resp).get("status") if resp is not None else "gone"
            if status in ("done", "failed", "gone"):
                return
            time.sleep(JOB_POLL_S)  # gevent-patched: yields to the other users


class Shopper(LabUser):
    """Log in, browse, add to cart; every few steps look at the cart and at /me."""

    weight = 6

    @task(4)
    def shop(self) -> None:
        if self.ensure_login():
            self.browse()
            self.add_to_cart()

    @task(1)
    def review(self) -> None:
        if self.ensure_login():
            self.check_cart()
        if self.logged_in:
            self.call("GET", "/me")


class Browser(LabUser):
    """Browse products by popularity without logging in."""

    weight = 3

    @task
    def look(self) -> None:
        self.browse()


class Uploader(LabUser):
    """Log in, upload, process, download."""

    weight = 1

    @task
    def upload_file(self) -> None:
        if self.ensure_login():
            self.upload()


_shape = os.environ.get("LAB_LOCUST_SHAPE", "").strip()
if _shape == "all":
    globals().update({cls.__name__: cls for cls in shapes.SHAPES.values()})
elif _shape and _shape != "none":
    if _shape not in shapes.SHAPES:
        raise SystemExit(f"LAB_LOCUST_SHAPE={_shape!r}: choose one of {', '.join(shapes.SHAPES)}, all or none")
    LoadShape = shapes.SHAPES[_shape]
