"""The product cache: JSON values in Redis (product:<id>) with a TTL, shared by every instance.

A product loaded by one instance is a hit on all the others. With LAB_CACHE_STAMPEDE_PROTECTION=1
(the default) a miss takes a short lock (SET NX PX) so that one request loads from the database
while the others poll briefly for its value; after a bounded wait they fall back to the database.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Callable

import redis

Product = dict[str, Any]
KEY_PREFIX = "product:"
LOCK_TTL_MS = 2000
WAIT_FOR_LOADER_S = 0.5
POLL_INTERVAL_S = 0.01


class ProductCache:
    """Products by id in Redis, each kept for ttl_s seconds; hit and miss counters for this process."""

    def __init__(self, client: redis.Redis, ttl_s: int, stampede_protection: bool = True) -> None:
        self.ttl_s = ttl_s
        self.stampede_protection = stampede_protection
        self._redis = client
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def _count(self, hit: bool) -> None:
        with self._lock:
            if hit:
                self.hits += 1
            else:
                self.misses += 1

    def _cached(self, key: str) -> Product | None:
        raw = self._redis.get(key)
        return None if raw is None else json.loads(raw)  # type: ignore[arg-type]

    def get_or_load(self, product_id: int, load: Callable[[], Product | None]) -> Product | None:
        """Return the cached product, or load it (a miss) and cache it when it exists."""
        key = f"{KEY_PREFIX}{product_id}"
        product = self._cached(key)
        if product is not None:
            self._count(hit=True)
            return product
        lock_key = f"lock:{key}"
        holds_lock = self.stampede_protection and bool(self._redis.set(lock_key, b"1", nx=True, px=LOCK_TTL_MS))
        if self.stampede_protection and not holds_lock:
            # Another request is loading it: wait a little for its value rather than join the stampede.
            deadline = time.monotonic() + WAIT_FOR_LOADER_S
            while time.monotonic() < deadline:
                time.sleep(POLL_INTERVAL_S)
                product = self._cached(key)
                if product is not None:
                    self._count(hit=True)
                    return product
        self._count(hit=False)
        try:
            product = load()
            if product is not None and self.ttl_s > 0:
                self._redis.set(key, json.dumps(product), ex=self.ttl_s)
        finally:
            if holds_lock:
                self._redis.delete(lock_key)
        return product
