"""The product cache: a dict in this process with a time-to-live per entry.

Each instance keeps its own copy, so a product cached on one instance is still a miss (a database
query) on the next, and after a change the copies disagree until their TTLs run out.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

Product = dict[str, Any]


class ProductCache:
    """Products by id, each kept for ttl_s seconds, with hit and miss counters."""

    def __init__(self, ttl_s: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: dict[int, tuple[float, Product]] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get_or_load(self, product_id: int, load: Callable[[], Product | None]) -> Product | None:
        """Return the cached product, or load it (a miss) and cache it when it exists."""
        with self._lock:
            entry = self._entries.get(product_id)
            if entry is not None and entry[0] > self._clock():
                self.hits += 1
                return entry[1]
            self.misses += 1
        product = load()
        if product is not None and self.ttl_s > 0:
            with self._lock:
                self._entries[product_id] = (self._clock() + self.ttl_s, product)
        return product
