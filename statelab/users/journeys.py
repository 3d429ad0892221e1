"""What users do: the built-in journeys `shopper`, `browser`, `uploader` and `pages`, by name in `JOURNEYS`,
and `tabs`, several users acting as the tabs of one browser (one login, one cookie jar).

A journey is any ``async def journey(user: VirtualUser)`` that loops while ``user.running``.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from statelab.users.virtual_user import VirtualUser, _json

Journey = Callable[[VirtualUser], Awaitable[None]]

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


PAGES = ("/me", "/cart")


async def pages(user: VirtualUser) -> None:
    """Log in, then load pages, each over a new connection (a client without keep-alive).

    A new connection lets the kernel hand each request to any worker process listening on the
    instance's socket; a 401 is counted as a logout, and the user logs in again.
    """
    while user.running:
        if not user.logged_in and not await user.login():
            await user.pause_after_error()
            continue
        user.client.close()
        await user.call("GET", PAGES[user.steps_done % len(PAGES)])
        user.client.close()
        user.stats.pages += 1
        user.steps_done += 1
        await user.think()


@dataclass
class Browser:
    """What the tabs of one browser share: one login's cookies, and what their cart adds got back."""

    product_id: int = 7
    cookies: dict[str, str] = field(default_factory=dict)
    adds_ok: int = 0
    adds_failed: int = 0
    logged_in: asyncio.Event = field(default_factory=asyncio.Event)


def tabs(browser: Browser) -> Journey:
    """Return a journey for users acting as tabs of one browser: the first logs in, all share its cookies.

    Each tab then adds one unit of the same product per step, as fast as the server answers:
    concurrent writes to one user's cart. The tabs keep no cart of their own; the scenario
    compares the adds acknowledged (201) with what the cart finally holds.
    """
    async def tab(user: VirtualUser) -> None:
        if user.spec.index == 0:
            if await user.login():
                browser.cookies.update(user.cookies)
            browser.logged_in.set()  # also on failure: the other tabs must not wait forever
        else:
            await browser.logged_in.wait()
            user.cookies.update(browser.cookies)
            user.logged_in = bool(browser.cookies)
        while user.running and user.logged_in:
            # authed=False: a 401 is a failed add, never a login as the tab's own account
            response = await user.call("POST", "/cart/items", {"product_id": browser.product_id, "qty": 1},
                                       ok=(401,), authed=False)
            if response is not None and response.status == 201:
                browser.adds_ok += 1
            else:
                browser.adds_failed += 1
            user.steps_done += 1
            await user.think()

    return tab


JOURNEYS: dict[str, Journey] = {"shopper": shopper, "browser": browser, "uploader": uploader, "pages": pages}
