"""The seed: idempotent, deterministic, fast, and the product aggregate costs a few ms of real work."""

from __future__ import annotations

import hashlib
import hmac
import os
import time

import psycopg
import pytest

from statelab import seed, services

PRODUCT_QUERY = (
    "SELECT p.id, count(r.id), avg(r.rating) FROM products p LEFT JOIN reviews r ON r.product_id = p.id"
    " WHERE p.id = %s GROUP BY p.id"
)


@pytest.fixture(scope="module")
def seed_db(backing_services: dict[str, services.Service]) -> str:
    """A database of its own, so re-seeding never pulls tables from under another test's app."""
    return services.create_database(backing_services["postgres"].url, "statelab_seedtest")


def _fingerprint(url: str) -> tuple[object, ...]:
    with psycopg.connect(url) as conn:
        return tuple(conn.execute(sql).fetchone() for sql in (
            "SELECT count(*), md5(string_agg(username || password_hash, ',' ORDER BY id)) FROM users",
            "SELECT count(*), md5(string_agg(name || price_cents, ',' ORDER BY id)) FROM products",
            "SELECT count(*), sum(product_id::bigint * rating), sum(user_id::bigint) FROM reviews",
        ))


def test_seed_is_idempotent_deterministic_and_fast(seed_db: str) -> None:
    first = seed.seed(seed_db)
    before = _fingerprint(seed_db)
    second = seed.seed(seed_db)
    print(f"\nseed: {first.elapsed_s:.2f} s then {second.elapsed_s:.2f} s "
          f"({second.users} users, {second.products} products, {second.reviews} reviews)")
    assert (second.users, second.products) == (5000, 500)
    assert second.reviews >= 100_000
    assert _fingerprint(seed_db) == before
    # The budget holds on an idle 2-core machine; when neighbours load it, scale the budget by the load
    # so that this measures the seed, not the neighbours (the figure is printed either way).
    overload = max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))
    assert min(first.elapsed_s, second.elapsed_s) < seed.SEED_BUDGET_S * overload


def test_every_user_logs_in_with_the_lab_password(seed_db: str) -> None:
    with psycopg.connect(seed_db) as conn:
        rows = conn.execute("SELECT username, password_hash FROM users WHERE id IN (1, 2500, 5000) ORDER BY id").fetchall()
        salts = conn.execute("SELECT count(DISTINCT split_part(password_hash, '$', 3)) FROM users").fetchone()
    assert [r[0] for r in rows] == ["user0001", "user2500", "user5000"]
    assert salts == (5000,)
    for _, stored in rows:
        scheme, iterations, salt, digest = stored.split("$")
        assert scheme == "pbkdf2_sha256"
        good = hashlib.pbkdf2_hmac("sha256", seed.SEED_PASSWORD.encode(), bytes.fromhex(salt), int(iterations))
        bad = hashlib.pbkdf2_hmac("sha256", b"wrong", bytes.fromhex(salt), int(iterations))
        assert hmac.compare_digest(good.hex(), digest)
        assert not hmac.compare_digest(bad.hex(), digest)


def test_product_aggregate_does_a_few_ms_of_real_work(seed_db: str) -> None:
    with psycopg.connect(seed_db) as conn:
        conn.execute(PRODUCT_QUERY, (1,))  # warm the buffer cache: a cache miss in the app is warm too
        timings = []
        for product_id in range(1, 21):
            started = time.perf_counter()
            row = conn.execute(PRODUCT_QUERY, (product_id,)).fetchone()
            timings.append((time.perf_counter() - started) * 1000)
            assert row is not None and row[1] > 100
    median_ms = sorted(timings)[len(timings) // 2]
    print(f"\nproduct aggregate: median {median_ms:.1f} ms over {len(timings)} products")
    overload = max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))  # see the seed budget above
    assert 1.0 < median_ms < 50.0 * overload
