"""PostgreSQL: users, products and review stats, through one connection pool per process.

The pool is created on first use, so under gunicorn it is born after the fork (connections and the
pool's threads must never cross a fork). Every query is counted and timed for /stats.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import threading
import time
from typing import Any

from psycopg_pool import ConnectionPool

PG_INT_MAX = 2**31 - 1
MAX_USERNAME_CHARS = 150
STATEMENT_TIMEOUT_MS = 5000
PRODUCT_SQL = (
    "SELECT p.id, p.name, p.price_cents, count(r.id), avg(r.rating)"
    " FROM products p LEFT JOIN reviews r ON r.product_id = p.id WHERE p.id = %s GROUP BY p.id"
)


class Database:
    """A lazily opened connection pool with query counters."""

    def __init__(self, url: str, timeout_s: float, max_size: int = 10) -> None:
        self._url = url
        self._timeout_s = timeout_s
        self._max_size = max_size
        self._pool: ConnectionPool | None = None
        self._lock = threading.Lock()
        self.queries = 0
        self.time_ms = 0.0

    def _get_pool(self) -> ConnectionPool:
        with self._lock:
            if self._pool is None:
                self._pool = ConnectionPool(
                    self._url, min_size=1, max_size=self._max_size, open=True, timeout=self._timeout_s * 2,
                    kwargs={"autocommit": True, "connect_timeout": max(2, math.ceil(self._timeout_s)),
                            "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}"},
                )
            return self._pool

    def fetchone(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
        """Run one query and return its first row, counting it."""
        pool = self._get_pool()
        started = time.perf_counter()
        try:
            with pool.connection() as conn:
                return conn.execute(sql, params).fetchone()
        finally:
            with self._lock:
                self.queries += 1
                self.time_ms += (time.perf_counter() - started) * 1000

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None


def verify_password(password: str, stored: str) -> bool:
    """Check a password against its stored pbkdf2_sha256$iterations$salt$hash form."""
    try:
        scheme, iterations, salt, digest = stored.split("$")
        candidate = hashlib.pbkdf2_hmac("sha256", password.encode(), bytes.fromhex(salt), int(iterations))
    except (ValueError, UnicodeEncodeError):
        return False
    return scheme == "pbkdf2_sha256" and hmac.compare_digest(candidate.hex(), digest)


def _storable(text: str) -> bool:
    """Return whether a PostgreSQL text value can hold this string: no NUL, no lone surrogate (JSON's "\\ud800")."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


def find_user(db: Database, username: str, password: str) -> dict[str, Any] | None:
    """Return {"id", "username"} when the credentials are right, else None."""
    if len(username) > MAX_USERNAME_CHARS or not _storable(username):
        return None
    row = db.fetchone("SELECT id, username, password_hash FROM users WHERE username = %s", (username,))
    if row is None or not verify_password(password, row[2]):
        return None
    return {"id": row[0], "username": row[1]}


def get_product(db: Database, product_id: int) -> dict[str, Any] | None:
    """Return a product with its review stats (a real aggregate over the reviews), or None."""
    if not 1 <= product_id <= PG_INT_MAX:
        return None
    row = db.fetchone(PRODUCT_SQL, (product_id,))
    if row is None:
        return None
    avg = None if row[4] is None else round(float(row[4]), 2)
    return {"id": row[0], "name": row[1], "price_cents": row[2], "review_count": row[3], "avg_rating": avg}


def product_exists(db: Database, product_id: int) -> bool:
    """Return whether a product id exists (a primary-key lookup)."""
    return 1 <= product_id <= PG_INT_MAX and db.fetchone("SELECT 1 FROM products WHERE id = %s", (product_id,)) is not None


def ping(db: Database) -> None:
    """Raise if PostgreSQL cannot answer a trivial query."""
    db.fetchone("SELECT 1")
