"""Carts: {user id: {product id: qty}} in this process's memory, guarded by one lock.

The lock makes concurrent adds from one user safe inside this process only. Another instance has
its own (empty) cart for the same user, so a balanced request "loses" the cart.
"""

from __future__ import annotations

import threading


class CartStore:
    """Every user's cart, in memory."""

    def __init__(self) -> None:
        self._carts: dict[int, dict[int, int]] = {}
        self._lock = threading.Lock()

    def add(self, user_id: int, product_id: int, qty: int) -> list[dict[str, int]]:
        """Add qty of a product to a user's cart and return the cart's items."""
        with self._lock:
            cart = self._carts.setdefault(user_id, {})
            cart[product_id] = cart.get(product_id, 0) + qty
            return _items(cart)

    def items(self, user_id: int) -> list[dict[str, int]]:
        """Return a user's cart items, sorted by product id."""
        with self._lock:
            return _items(self._carts.get(user_id, {}))


def _items(cart: dict[int, int]) -> list[dict[str, int]]:
    return [{"product_id": pid, "qty": qty} for pid, qty in sorted(cart.items())]
