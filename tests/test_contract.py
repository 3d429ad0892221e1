"""The HTTP contract, one suite run against both apps through Flask's test client, plus one live smoke test."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from flask.testing import FlaskClient

from statelab import services
from statelab.config import BackingUrls
from statelab.seed import SEED_PASSWORD, username
from tests.support.apps import login, random_key

STATS_KEYS = {"instance_id", "pid", "app", "sessions_in_memory", "cache_hits", "cache_misses", "db_queries",
              "db_time_ms", "local_files", "jobs_queued"}


def wait_for_job(client: FlaskClient, job_id: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """Poll a job until it is done or failed; fail the test at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        body = client.get(f"/jobs/{job_id}").get_json()
        if body["status"] in ("done", "failed") or time.monotonic() > deadline:
            return body  # type: ignore[no-any-return]
        time.sleep(0.02)


def test_login_me_logout(client: FlaskClient, username: str) -> None:
    assert client.get("/me").status_code == 401
    body = login(client, username)
    assert body["user"]["username"] == username and isinstance(body["user"]["id"], int)
    cookie = client.get_cookie("lab_session")
    assert cookie is not None and cookie.http_only and cookie.same_site == "Lax"
    assert client.get("/me").get_json() == body
    assert client.post("/logout").status_code == 204
    assert client.get("/me").status_code == 401
    # The session is gone server-side, not only from the browser: replaying the old cookie fails.
    client.set_cookie("lab_session", cookie.value)
    assert client.get("/me").status_code == 401


def test_bad_credentials_are_401(client: FlaskClient, username: str) -> None:
    for body in ({"username": username, "password": "wrong"}, {"username": "nobody", "password": SEED_PASSWORD}):
        response = client.post("/login", json=body)
        assert response.status_code == 401 and "error" in response.get_json()


def test_every_response_says_who_served_it(client: FlaskClient) -> None:
    for path in ("/healthz", "/me", "/products/1", "/no-such-route"):
        assert client.get(path).headers["X-Served-By"].endswith("-test")


def test_product_with_review_stats_is_cached(client: FlaskClient) -> None:
    product_id = 1 + int(time.monotonic_ns()) % 400  # a product this Redis has probably not cached yet
    client.get(f"/products/{product_id}")  # the stateless cache may already hold it: warm it either way
    before = client.get("/stats").get_json()
    body = client.get(f"/products/{product_id}").get_json()
    after = client.get("/stats").get_json()
    assert set(body) == {"id", "name", "price_cents", "review_count", "avg_rating"}
    assert body["id"] == product_id and body["review_count"] > 100 and 1 <= body["avg_rating"] <= 5
    assert after["cache_hits"] == before["cache_hits"] + 1
    assert after["db_queries"] == before["db_queries"]
    assert client.get("/products/999999").status_code == 404


def test_cart(client: FlaskClient, username: str) -> None:
    assert client.get("/cart").status_code == 401
    assert client.post("/cart/items", json={"product_id": 1, "qty": 1}).status_code == 401
    login(client, username)
    assert client.get("/cart").get_json() == {"items": []}
    first = client.post("/cart/items", json={"product_id": 7, "qty": 2})
    assert first.status_code == 201 and first.get_json() == {"items": [{"product_id": 7, "qty": 2}]}
    client.post("/cart/items", json={"product_id": 3, "qty": 1})
    client.post("/cart/items", json={"product_id": 7, "qty": 5})
    expected = {"items": [{"product_id": 3, "qty": 1}, {"product_id": 7, "qty": 7}]}
    assert client.get("/cart").get_json() == expected
    assert client.post("/cart/items", json={"product_id": 999999, "qty": 1}).status_code == 404
    assert client.post("/cart/items", json={"product_id": 3, "qty": 101}).status_code == 400


def test_a_json_number_with_a_zero_fraction_is_an_integer(client: FlaskClient, username: str) -> None:
    """JSON has one number type, and JSON Schema (so the OpenAPI description) counts 7.0 as the integer 7."""
    login(client, username)
    response = client.post("/cart/items", json={"product_id": 7.0, "qty": 2.0})
    assert response.status_code == 201 and response.get_json() == {"items": [{"product_id": 7, "qty": 2}]}
    assert client.post("/cart/items", json={"product_id": 7.5, "qty": 2}).status_code == 400


def test_concurrent_adds_lose_nothing(client: FlaskClient, username: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    login(client, username)
    cookie = client.get_cookie("lab_session")
    assert cookie is not None
    app = client.application

    def add(_: int) -> int:
        with app.test_client() as own:  # one client per thread: a test client is not thread-safe
            own.set_cookie("lab_session", cookie.value)
            return own.post("/cart/items", json={"product_id": 11, "qty": 1}).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert set(pool.map(add, range(80))) == {201}
    assert client.get("/cart").get_json() == {"items": [{"product_id": 11, "qty": 80}]}


def test_upload_download_and_owner_only(client: FlaskClient, username: str) -> None:
    data = b"hello world\nsecond line here\n"
    assert client.post("/uploads", data={"file": (_file(data), "a.txt")}).status_code == 401
    login(client, username)
    response = client.post("/uploads", data={"file": (_file(data), "a.txt")})
    assert response.status_code == 201
    body = response.get_json()
    assert body["size"] == len(data) and body["sha256"] == hashlib.sha256(data).hexdigest()
    assert len(body["key"]) == 32
    got = client.get(f"/uploads/{body['key']}")
    assert got.status_code == 200 and got.data == data
    assert client.get(f"/uploads/{random_key()}").status_code == 404
    other = client.application.test_client()
    assert other.get(f"/uploads/{body['key']}").status_code == 401
    login(other, f"user{int(username[4:]) % 1000 + 1:04d}")  # someone else
    assert other.get(f"/uploads/{body['key']}").status_code == 404


def test_process_upload_job(client: FlaskClient, username: str, backing_worker: None) -> None:
    login(client, username)
    data = b"one two three\nfour five\nsix"
    key = client.post("/uploads", data={"file": (_file(data), "words.txt")}).get_json()["key"]
    response = client.post(f"/uploads/{key}/process")
    assert response.status_code == 202
    done = wait_for_job(client, response.get_json()["job_id"])
    assert done == {"status": "done", "result": {"lines": 3, "words": 6, "size": len(data),
                                                 "sha256": hashlib.sha256(data).hexdigest()},
                    "attempts": 1, "effects": 1}
    assert client.post(f"/uploads/{random_key()}/process").status_code == 404
    assert client.get(f"/jobs/{random_key()}").status_code == 404


def test_health_readiness_and_stats(client: FlaskClient) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    assert client.get("/readyz").get_json() == {"status": "ok"}
    stats = client.get("/stats").get_json()
    assert set(stats) == STATS_KEYS
    assert stats["app"] in ("stateful", "stateless") and stats["instance_id"] == f"{stats['app']}-test"
    if stats["app"] == "stateless":
        assert stats["sessions_in_memory"] == 0 and stats["local_files"] == 0


def test_errors_are_json(client: FlaskClient) -> None:
    for response in (client.get("/no-such-route"), client.delete("/login"), client.post("/login", data="{")):
        assert 400 <= response.status_code < 500
        assert response.is_json and set(response.get_json()) == {"error"}


def test_a_405_names_the_methods_the_path_has(client: FlaskClient) -> None:
    """RFC 9110: a 405 carries Allow. The JSON error handler must keep the headers the error comes with."""
    response = client.put("/login", json={"username": username(1), "password": SEED_PASSWORD})
    assert response.status_code == 405 and response.is_json
    assert {m.strip() for m in response.headers["Allow"].split(",")} == {"POST", "OPTIONS"}


def _file(data: bytes) -> Any:
    import io

    return io.BytesIO(data)


@pytest.mark.live
@pytest.mark.parametrize("kind", ["stateful", "stateless"])
def test_gunicorn_instance_smoke(kind: str, backing: BackingUrls, run_dir: Path, username: str) -> None:
    env = {**backing.app_env(), "LAB_UPLOAD_DIR": str(run_dir / f"smoke-{kind}"), "LAB_MAX_UPLOAD_BYTES": "1024"}
    app = services.start_app(kind, f"smoke-{kind}", run_dir, env)
    try:
        app.wait_ready()
        with requests.Session() as http:
            assert http.get(app.url + "/readyz", timeout=5).json() == {"status": "ok"}
            r = http.post(app.url + "/login", json={"username": username, "password": SEED_PASSWORD}, timeout=5)
            assert r.status_code == 200 and r.headers["X-Served-By"] == f"smoke-{kind}"
            assert http.get(app.url + "/me", timeout=5).json() == r.json()
            too_big = http.post(app.url + "/uploads", files={"file": ("big", b"x" * 2048)}, timeout=5)
            assert too_big.status_code == 413 and "error" in too_big.json()
            stats = http.get(app.url + "/stats", timeout=5).json()
            assert stats["app"] == kind and stats["pid"] == _gunicorn_worker_pid(app)
    finally:
        app.stop()


def _gunicorn_worker_pid(app: services.Service) -> int:
    import psutil

    assert app.process.pid is not None
    (worker,) = psutil.Process(app.process.pid).children()
    return worker.pid


@pytest.mark.parametrize("protection", ["1", "0"])
def test_stateless_cache_stampede_protection(protection: str, app_factory: Any, backing: BackingUrls) -> None:
    """A burst of misses for one product: with the lock one request loads it, without it many do."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import redis

    app = app_factory("stateless", LAB_CACHE_STAMPEDE_PROTECTION=protection)
    product_id = 490 + int(protection)
    assert backing.redis_url
    redis.Redis.from_url(backing.redis_url, socket_timeout=2).delete(f"product:{product_id}")
    burst = 12
    barrier = threading.Barrier(burst)

    def fetch(_: int) -> int:
        with app.test_client() as own:
            barrier.wait(timeout=10)
            return own.get(f"/products/{product_id}").status_code

    assert app.test_client().get("/readyz").status_code == 200  # open the pool: time the cache, not a connect
    before = app.test_client().get("/stats").get_json()
    with ThreadPoolExecutor(max_workers=burst) as pool:
        assert set(pool.map(fetch, range(burst))) == {200}
    after = app.test_client().get("/stats").get_json()
    loads = after["db_queries"] - before["db_queries"]
    assert after["cache_hits"] - before["cache_hits"] + after["cache_misses"] - before["cache_misses"] == burst
    if protection == "1":
        assert loads == 1
    else:
        assert loads > 1
