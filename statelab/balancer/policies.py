"""Load-balancing policies: pure, I/O-free choices of one backend among the eligible ones.

Each policy sees a tuple of candidates (anything with `id` and `active`, the requests in flight)
and a client key; it keeps only its own small state (a counter, a hash ring). The proxy calls
`pick` once per request, so every `pick` is a handful of C-level operations.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
import zlib
from typing import Protocol, Sequence, TypeVar

POLICY_NAMES = ("round-robin", "least-connections", "ip-hash", "cookie", "consistent-hash", "p2c")
COOKIE_NAME = "LAB_BACKEND"
DEFAULT_HASH_BALANCE_FACTOR = 1.25
VNODES_PER_BACKEND = 100


class Candidate(Protocol):
    id: str
    active: int


C = TypeVar("C", bound=Candidate)


class Policy(Protocol):
    name: str
    sticky: bool

    def pick(self, cands: Sequence[C], key: str) -> C: ...


class RoundRobin:
    """Each candidate in turn."""

    name = "round-robin"
    sticky = False

    def __init__(self) -> None:
        self._i = 0

    def pick(self, cands: Sequence[C], key: str) -> C:
        i = self._i = self._i + 1
        return cands[i % len(cands)]


class LeastConnections:
    """The candidate with the fewest requests in flight; ties rotate so idle backends share work."""

    name = "least-connections"
    sticky = False

    def __init__(self) -> None:
        self._i = 0

    def pick(self, cands: Sequence[C], key: str) -> C:
        n = len(cands)
        start = self._i = (self._i + 1) % n
        best = cands[start]
        for j in range(1, n):
            c = cands[(start + j) % n]
            if c.active < best.active:
                best = c
        return best


class IpHash:
    """A stable hash of the full client address (not nginx's /24) modulo the candidate count."""

    name = "ip-hash"
    sticky = False

    def pick(self, cands: Sequence[C], key: str) -> C:
        return cands[zlib.crc32(key.encode()) % len(cands)]


class CookieSticky:
    """Stick to the backend named in the LAB_BACKEND cookie; otherwise round-robin and (re)set it.

    Mirrors HAProxy's `cookie LAB_BACKEND insert indirect nocache`: the balancer owns the cookie,
    and a cookie naming an unknown, drained or unhealthy backend is ignored and replaced.
    """

    name = "cookie"
    sticky = True

    def __init__(self) -> None:
        self._rr = RoundRobin()

    def pick(self, cands: Sequence[C], key: str) -> C:
        return self._rr.pick(cands, key)

    def pick_sticky(self, cands: Sequence[C], key: str, cookie: str | None) -> tuple[C, bool]:
        """Return (backend, whether the response must set the cookie)."""
        if cookie is not None:
            for c in cands:
                if c.id == cookie:
                    return c, False
        return self._rr.pick(cands, key), True


def _hash64(data: str) -> int:
    return int.from_bytes(hashlib.blake2b(data.encode(), digest_size=8).digest(), "big")


class ConsistentHash:
    """A hash ring on the client address, with bounded loads (Mirrokni, Thorup, Zadimoghaddam 2017).

    A client goes to the first backend clockwise from its hash whose in-flight count stays under
    ceil(factor * (total + 1) / n); adding a backend moves only the keys it now owns.
    """

    name = "consistent-hash"
    sticky = False

    def __init__(self, balance_factor: float = DEFAULT_HASH_BALANCE_FACTOR, vnodes: int = VNODES_PER_BACKEND) -> None:
        if balance_factor < 1.0:
            raise ValueError("hash balance factor must be >= 1.0")
        self.balance_factor = balance_factor
        self.vnodes = vnodes
        self._ids: tuple[str, ...] = ()
        self._cands: Sequence[Candidate] | None = None
        self._points: list[int] = []
        self._owners: list[int] = []

    def _build(self, cands: Sequence[C]) -> None:
        ring = sorted((_hash64(f"{c.id}#{v}"), i) for i, c in enumerate(cands) for v in range(self.vnodes))
        self._points = [p for p, _ in ring]
        self._owners = [i for _, i in ring]
        self._ids = tuple(c.id for c in cands)

    def pick(self, cands: Sequence[C], key: str) -> C:
        if cands is not self._cands:  # the pool hands out a new tuple only when membership changes
            self._cands = cands
            if tuple(c.id for c in cands) != self._ids:
                self._build(cands)
        total = sum(c.active for c in cands)
        cap = math.ceil(self.balance_factor * (total + 1) / len(cands))
        start = bisect.bisect(self._points, _hash64(key)) % len(self._points)
        owners = self._owners
        n = len(owners)
        for j in range(n):
            c = cands[owners[(start + j) % n]]
            if c.active < cap:
                return c
        return cands[owners[start]]


class PowerOfTwoChoices:
    """Two distinct random candidates; the one with fewer requests in flight wins."""

    name = "p2c"
    sticky = False

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def pick(self, cands: Sequence[C], key: str) -> C:
        n = len(cands)
        if n == 1:
            return cands[0]
        a = self._rng.randrange(n)
        b = self._rng.randrange(n - 1)
        if b >= a:
            b += 1
        ca, cb = cands[a], cands[b]
        return cb if cb.active < ca.active else ca


def make_policy(name: str, hash_balance_factor: float = DEFAULT_HASH_BALANCE_FACTOR) -> Policy:
    """Return a fresh policy for a kebab-case name; ValueError names the valid ones."""
    if name == "round-robin":
        return RoundRobin()
    if name == "least-connections":
        return LeastConnections()
    if name == "ip-hash":
        return IpHash()
    if name == "cookie":
        return CookieSticky()
    if name == "consistent-hash":
        return ConsistentHash(hash_balance_factor)
    if name == "p2c":
        return PowerOfTwoChoices()
    raise ValueError(f"unknown policy {name!r}: choose one of {', '.join(POLICY_NAMES)}")
