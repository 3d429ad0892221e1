"""Stolen tokens against each JWT revocation mode: how long an attacker keeps access after the user
logged out, what refresh rotation with reuse detection stops, and what the denylist costs per request.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import jwt
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from statelab import services
from statelab.config import BackingUrls
from statelab.seed import SEED_PASSWORD
from tests.support.apps import app_test_config, make_app

SECRET = "jwt-test-secret-key-0123456789abcdefghij"


@pytest.fixture
def jwt_app(backing: BackingUrls, tmp_path: Path) -> Iterator[Callable[..., Flask]]:
    """Build JWT-mode apps with LAB_* overrides, on a Redis of this test's own (its command counters are ours)."""
    own = services.start_redis(tmp_path, name="redis-jwt").wait_ready()
    built: list[Flask] = []

    def build(**env: str) -> Flask:
        config = app_test_config("stateless", backing, tmp_path / "uploads", LAB_REDIS_URL=own.url,
                                 LAB_AUTH_MODE="jwt", LAB_SECRET_KEY=SECRET, **env)
        built.append(make_app("stateless", config))
        return built[-1]

    build.redis = redis.Redis.from_url(own.url, socket_timeout=2)  # type: ignore[attr-defined]
    try:
        yield build
    finally:
        for app in built:
            app.extensions["lab"].close()
        own.stop()


def _login(client: FlaskClient, username: str) -> dict[str, Any]:
    response = client.post("/login", json={"username": username, "password": SEED_PASSWORD})
    assert response.status_code == 200
    return response.get_json()  # type: ignore[no-any-return]


def _me(client: FlaskClient, token: str) -> int:
    return client.get("/me", headers={"Authorization": f"Bearer {token}"}).status_code


def _refresh(client: FlaskClient, token: str) -> Any:
    return client.post("/token/refresh", json={"refresh_token": token})


def _logout(client: FlaskClient, token: str) -> None:
    assert client.post("/logout", headers={"Authorization": f"Bearer {token}"}).status_code == 204


def test_denylist_logout_stops_a_stolen_access_token_at_once(jwt_app: Callable[..., Flask], username: str) -> None:
    client = jwt_app(LAB_JWT_ACCESS_TTL_S="3600").test_client()
    user = _login(client, username)
    stolen = dict(user)  # the attacker's copies
    assert _me(client, stolen["access_token"]) == 200
    _logout(client, user["access_token"])
    assert _me(client, stolen["access_token"]) == 401
    assert _refresh(client, stolen["refresh_token"]).status_code == 401


def test_without_a_denylist_a_stolen_access_token_outlives_the_logout(jwt_app: Callable[..., Flask],
                                                                      username: str) -> None:
    client = jwt_app(LAB_JWT_ACCESS_TTL_S="3600", LAB_JWT_REVOCATION="none").test_client()
    user = _login(client, username)
    stolen = dict(user)
    _logout(client, user["access_token"])
    assert _me(client, stolen["access_token"]) == 200  # nothing can revoke it: it is good for its whole hour
    claims = jwt.decode(stolen["access_token"], SECRET, algorithms=["HS256"])
    assert claims["exp"] - time.time() > 3500
    assert _refresh(client, stolen["refresh_token"]).status_code == 401  # the refresh side is stateful: revoked


def test_a_short_access_token_limits_the_replay_to_its_lifetime(jwt_app: Callable[..., Flask], username: str) -> None:
    ttl_s = 2
    client = jwt_app(LAB_JWT_ACCESS_TTL_S=str(ttl_s), LAB_JWT_REVOCATION="none",
                     LAB_JWT_REUSE_DETECTION="1").test_client()
    user = _login(client, username)
    stolen = dict(user)
    _logout(client, user["access_token"])
    logged_out_at = time.monotonic()
    while _me(client, stolen["access_token"]) == 200:
        assert time.monotonic() - logged_out_at < ttl_s + 3, "the stolen token outlived its lifetime"
        time.sleep(0.05)
    replay_s = time.monotonic() - logged_out_at
    assert 0 < replay_s <= ttl_s + 1.5
    assert _refresh(client, stolen["refresh_token"]).status_code == 401


def test_reuse_of_a_rotated_refresh_token_revokes_the_family(jwt_app: Callable[..., Flask], username: str) -> None:
    client = jwt_app(LAB_JWT_REUSE_DETECTION="1").test_client()
    user = _login(client, username)
    stolen_refresh = user["refresh_token"]
    rotated = _refresh(client, user["refresh_token"]).get_json()  # the user refreshes first
    assert _me(client, rotated["access_token"]) == 200
    reuse = _refresh(client, stolen_refresh)  # the thief tries the spent token
    assert reuse.status_code == 401 and "revoked" in reuse.get_json()["error"]
    # The whole login is revoked: the user's current tokens too (they log in again; the thief is out).
    assert _refresh(client, rotated["refresh_token"]).status_code == 401
    assert _me(client, rotated["access_token"]) == 401  # denylist mode checks the family per request
    assert _me(client, _login(client, username)["access_token"]) == 200  # a new login is a new family


def test_a_thief_who_refreshes_first_is_cut_off_when_the_user_refreshes(jwt_app: Callable[..., Flask],
                                                                       username: str) -> None:
    client = jwt_app(LAB_JWT_REUSE_DETECTION="1").test_client()
    user = _login(client, username)
    thief = _refresh(client, user["refresh_token"]).get_json()  # stolen and used before the user
    assert _refresh(client, user["refresh_token"]).status_code == 401  # the user's refresh is a reuse
    assert _refresh(client, thief["refresh_token"]).status_code == 401
    assert _me(client, thief["access_token"]) == 401


def test_without_reuse_detection_a_reuse_is_refused_but_the_family_lives(jwt_app: Callable[..., Flask],
                                                                         username: str) -> None:
    client = jwt_app().test_client()
    user = _login(client, username)
    rotated = _refresh(client, user["refresh_token"]).get_json()
    assert _refresh(client, user["refresh_token"]).status_code == 401
    assert _refresh(client, rotated["refresh_token"]).status_code == 200


def test_the_denylist_costs_one_redis_lookup_per_request(jwt_app: Callable[..., Flask], username: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    requests_n = 400
    clients = {mode: jwt_app(LAB_JWT_REVOCATION=mode).test_client() for mode in ("none", "denylist")}
    tokens = {mode: _login(client, username)["access_token"] for mode, client in clients.items()}
    store = jwt_app.redis  # type: ignore[attr-defined]
    lookups: dict[str, int] = {}
    times: dict[str, list[float]] = {"none": [], "denylist": []}
    for mode in ("none", "denylist"):
        before = store.info("commandstats").get("cmdstat_exists", {}).get("calls", 0)
        for _ in range(requests_n):
            assert _me(clients[mode], tokens[mode]) == 200
        lookups[mode] = store.info("commandstats").get("cmdstat_exists", {}).get("calls", 0) - before
    for i in range(2 * requests_n):  # timed interleaved, so the machine's drift hits both alike
        mode = ("none", "denylist")[i % 2]
        started = time.perf_counter()
        _me(clients[mode], tokens[mode])
        times[mode].append(time.perf_counter() - started)
    assert lookups == {"none": 0, "denylist": requests_n}
    p50 = {mode: statistics.median(t) * 1e6 for mode, t in times.items()}
    with capsys.disabled():
        print(f"\nGET /me with a JWT: p50 {p50['none']:.0f} us without the denylist, {p50['denylist']:.0f} us "
              f"with it (+{p50['denylist'] - p50['none']:.0f} us, one Redis EXISTS per request)")
