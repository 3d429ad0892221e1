"""Carts: one Redis hash per user (cart:<user id>, field = product id, value = qty).

HINCRBY is atomic in Redis, so concurrent adds from one user never lose an item, whichever
instances they reach. LAB_CART_MODE=naive shows the alternative that Flask-Session-style stores
amount to: read the whole cart as a JSON blob, change it, write it all back. Two tabs adding at
once both read the same old cart, and the second write erases the first one's item.
"""

from __future__ import annotations

import json

import redis

KEY_PREFIX = "cart:"
BLOB_PREFIX = "cartblob:"


class CartStore:
    """Every user's cart, in Redis."""

    def __init__(self, client: redis.Redis, mode: str = "atomic") -> None:
        self._redis = client
        self.mode = mode

    def add(self, user_id: int, product_id: int, qty: int) -> list[dict[str, int]]:
        """Add qty of a product to a user's cart and return the cart's items."""
        if self.mode == "naive":
            return self._add_read_modify_write(user_id, product_id, qty)
        pipe = self._redis.pipeline(transaction=True)
        pipe.hincrby(f"{KEY_PREFIX}{user_id}", str(product_id), qty)
        pipe.hgetall(f"{KEY_PREFIX}{user_id}")
        return _items(pipe.execute()[1])

    def _add_read_modify_write(self, user_id: int, product_id: int, qty: int) -> list[dict[str, int]]:
        """The lost-update bug, on purpose: nothing stops another request between the read and the write."""
        key = f"{BLOB_PREFIX}{user_id}"
        raw = self._redis.get(key)
        cart: dict[str, int] = json.loads(raw) if raw else {}  # type: ignore[arg-type]
        cart[str(product_id)] = cart.get(str(product_id), 0) + qty
        self._redis.set(key, json.dumps(cart))
        return _items({k.encode(): str(v).encode() for k, v in cart.items()})

    def items(self, user_id: int) -> list[dict[str, int]]:
        """Return a user's cart items, sorted by product id."""
        if self.mode == "naive":
            raw = self._redis.get(f"{BLOB_PREFIX}{user_id}")
            cart = json.loads(raw) if raw else {}  # type: ignore[arg-type]
            return _items({k.encode(): str(v).encode() for k, v in cart.items()})
        return _items(self._redis.hgetall(f"{KEY_PREFIX}{user_id}"))  # type: ignore[arg-type]


def _items(cart: dict[bytes, bytes]) -> list[dict[str, int]]:
    return [{"product_id": pid, "qty": qty} for pid, qty in sorted((int(k), int(v)) for k, v in cart.items())]
