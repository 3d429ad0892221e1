"""Seed the lab database: schema, users, products and reviews, deterministic and idempotent.

Compose and the tests call `seed(url)`; every call drops and recreates the tables, so the data
after a seed is always the same. Measured here (2 cores, PostgreSQL 16, fsync off): see SEED_BUDGET_S.
This module owns what the seed holds (every account's password, how many users and products):
simulated users, Locust and the tests import those facts from here.
"""

from __future__ import annotations

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources

SEED_PASSWORD = "statelab"  # every seeded account's password (user0001 ... user5000)
SEED_USERS = 5000
SEED_PRODUCTS = 500
# PBKDF2-SHA256 with a per-user salt and only 1,000 iterations: a real salted hash, cheap enough
# (~0.3 ms) that a load test can log in thousands of users; production would use 600k+.
PBKDF2_ITERATIONS = 1_000
REVIEWS_PER_PRODUCT = 300
SEED_BUDGET_S = 3.0


@dataclass(frozen=True)
class SeedSummary:
    """What a seed wrote and how long it took."""

    users: int
    products: int
    reviews: int
    elapsed_s: float


def hash_password(password: str, salt: bytes, iterations: int = PBKDF2_ITERATIONS) -> str:
    """Return the stored form of a password: pbkdf2_sha256$iterations$salt$hash."""
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"pbkdf2_sha256${iterations}${salt.hex()}${digest.hex()}"


def username(user_id: int) -> str:
    """Return the username of seeded account user_id (1-based): 1 -> user0001."""
    return f"user{user_id:04d}"


def _user_row(user_id: int) -> tuple[int, str, str]:
    # A salt derived from the id keeps the seed deterministic; it is still unique per user.
    salt = hashlib.sha256(f"statelab-salt-{user_id}".encode()).digest()[:16]
    return user_id, username(user_id), hash_password(SEED_PASSWORD, salt)


def seed(database_url: str, users: int = SEED_USERS, products: int = SEED_PRODUCTS) -> SeedSummary:
    """Drop and recreate the schema, then load users, products and reviews; return a summary."""
    import psycopg  # here, so that the seed's facts above import cheaply (Locust's process reads them)

    started = time.perf_counter()
    reviews = products * REVIEWS_PER_PRODUCT
    schema = resources.files("statelab").joinpath("schema.sql").read_text()
    # hashlib releases the GIL inside PBKDF2: hashing runs on both cores while PostgreSQL loads products.
    with ThreadPoolExecutor(max_workers=2) as pool, psycopg.connect(database_url, connect_timeout=5) as conn:
        user_rows = pool.map(_user_row, range(1, users + 1))
        conn.execute(schema)
        conn.execute(
            "INSERT INTO products (id, name, price_cents)"
            " SELECT i, 'Product ' || i, 100 + (i * 7919) %% 9900 FROM generate_series(1, %s) AS i",
            (products,),
        )
        with conn.cursor().copy("COPY users (id, username, password_hash) FROM STDIN") as copy:
            for row in user_rows:
                copy.write_row(row)
        # Deterministic pseudo-random spread: PostgreSQL's integer hash of the row number, not random().
        conn.execute(
            "INSERT INTO reviews (id, product_id, user_id, rating)"
            " SELECT i, 1 + abs(hashint8(i)) %% %(p)s, 1 + abs(hashint8(-i)) %% %(u)s, 1 + abs(hashint8(i * 7)) %% 5"
            " FROM generate_series(1, %(n)s::bigint) AS i",
            {"p": products, "u": users, "n": reviews},
        )
        # The foreign keys are added after the bulk load: one validating join instead of a lookup per row.
        conn.execute("ALTER TABLE reviews ADD FOREIGN KEY (product_id) REFERENCES products (id),"
                     " ADD FOREIGN KEY (user_id) REFERENCES users (id)")
        conn.execute("ANALYZE users, products, reviews")
    return SeedSummary(users=users, products=products, reviews=reviews,
                       elapsed_s=time.perf_counter() - started)
