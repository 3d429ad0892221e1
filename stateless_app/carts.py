"""Carts: one Redis hash per user (cart:<user id>, field = product id, value = qty).

HINCRBY is atomic in Redis, so concurrent adds from one user never lose an item, whichever
instances they reach; a read-modify-write of a JSON blob would.
"""

from __future__ import annotations

import redis

KEY_PREFIX = "cart:"


class CartStore:
    """Every user's cart, in Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def add(self, user_id: int, product_id: int, qty: int) -> list[dict[str, int]]:
        """Add qty of a product to a user's cart and return the cart's items."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.hincrby(f"{KEY_PREFIX}{user_id}", str(product_id), qty)
        pipe.hgetall(f"{KEY_PREFIX}{user_id}")
        return _items(pipe.execute()[1])

    def items(self, user_id: int) -> list[dict[str, int]]:
        """Return a user's cart items, sorted by product id."""
        return _items(self._redis.hgetall(f"{KEY_PREFIX}{user_id}"))  # type: ignore[arg-type]


def _items(cart: dict[bytes, bytes]) -> list[dict[str, int]]:
    return [{"product_id": pid, "qty": qty} for pid, qty in sorted((int(k), int(v)) for k, v in cart.items())]
