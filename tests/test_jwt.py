"""The stateless app's JWT mode: bearer tokens, refresh rotation, revocation and the Redis denylist."""

from __future__ import annotations

from typing import Any, Callable

import jwt
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from statelab.config import BackingUrls
from statelab.seed import SEED_PASSWORD

SECRET = "jwt-test-secret-key-0123456789abcdefghij"
ACCESS_TTL_S = 120
REFRESH_TTL_S = 900


@pytest.fixture
def jwt_app(app_factory: Callable[..., Flask]) -> Flask:
    return app_factory("stateless", LAB_AUTH_MODE="jwt", LAB_SECRET_KEY=SECRET,
                       LAB_JWT_ACCESS_TTL_S=str(ACCESS_TTL_S), LAB_JWT_REFRESH_TTL_S=str(REFRESH_TTL_S))


@pytest.fixture
def store(backing: BackingUrls) -> redis.Redis:
    assert backing.redis_url
    return redis.Redis.from_url(backing.redis_url, socket_timeout=2)


def _login(client: FlaskClient, username: str) -> dict[str, Any]:
    response = client.post("/login", json={"username": username, "password": SEED_PASSWORD})
    assert response.status_code == 200
    return response.get_json()  # type: ignore[no-any-return]


def _me(client: FlaskClient, token: str) -> int:
    return client.get("/me", headers={"Authorization": f"Bearer {token}"}).status_code


def test_login_returns_a_token_pair_and_no_cookie(jwt_app: Flask, username: str) -> None:
    client = jwt_app.test_client()
    body = _login(client, username)
    assert set(body) == {"user", "access_token", "refresh_token"}
    assert client.get_cookie("lab_session") is None
    claims = jwt.decode(body["access_token"], SECRET, algorithms=["HS256"])
    assert claims["typ"] == "access" and claims["sub"] == str(body["user"]["id"])
    assert claims["exp"] - claims["iat"] == ACCESS_TTL_S
    refresh = jwt.decode(body["refresh_token"], SECRET, algorithms=["HS256"])
    assert refresh["exp"] - refresh["iat"] == REFRESH_TTL_S
    me = client.get("/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.status_code == 200 and me.get_json() == {"user": body["user"]}
    assert client.get("/me").status_code == 401


def test_any_instance_accepts_a_token_from_another(app_factory: Callable[..., Flask], username: str) -> None:
    one, two = (app_factory("stateless", LAB_AUTH_MODE="jwt", LAB_SECRET_KEY=SECRET).test_client() for _ in "12")
    assert _me(two, _login(one, username)["access_token"]) == 200


def test_refresh_rotates_and_the_old_refresh_token_is_revoked(jwt_app: Flask, username: str) -> None:
    client = jwt_app.test_client()
    first = _login(client, username)
    rotated = client.post("/token/refresh", json={"refresh_token": first["refresh_token"]})
    assert rotated.status_code == 200
    second = rotated.get_json()
    assert second["user"] == first["user"]
    assert second["refresh_token"] != first["refresh_token"] and second["access_token"] != first["access_token"]
    assert _me(client, second["access_token"]) == 200
    replay = client.post("/token/refresh", json={"refresh_token": first["refresh_token"]})
    assert replay.status_code == 401 and "error" in replay.get_json()
    assert client.post("/token/refresh", json={"refresh_token": second["refresh_token"]}).status_code == 200
    # An access token is not a refresh token.
    assert client.post("/token/refresh", json={"refresh_token": second["access_token"]}).status_code == 401


def test_revoke_puts_the_jti_on_the_denylist_for_its_remaining_life(jwt_app: Flask, username: str,
                                                                   store: redis.Redis) -> None:
    client = jwt_app.test_client()
    tokens = _login(client, username)
    jti = jwt.decode(tokens["access_token"], SECRET, algorithms=["HS256"])["jti"]
    assert _me(client, tokens["access_token"]) == 200
    assert client.post("/token/revoke", json={"token": tokens["access_token"]}).status_code == 204
    assert _me(client, tokens["access_token"]) == 401
    ttl = store.ttl(f"jwt:denied:{jti}")
    assert 0 < ttl <= ACCESS_TTL_S + 1  # gone from Redis when the token would have expired anyway
    # Revoking the refresh token (given as the bearer this time) stops refreshes too.
    revoke = client.post("/token/revoke", headers={"Authorization": f"Bearer {tokens['refresh_token']}"})
    assert revoke.status_code == 204
    assert client.post("/token/refresh", json={"refresh_token": tokens["refresh_token"]}).status_code == 401


def test_revocation_on_one_instance_holds_on_another(app_factory: Callable[..., Flask], username: str) -> None:
    one, two = (app_factory("stateless", LAB_AUTH_MODE="jwt", LAB_SECRET_KEY=SECRET).test_client() for _ in "12")
    token = _login(one, username)["access_token"]
    assert one.post("/logout", headers={"Authorization": f"Bearer {token}"}).status_code == 204
    assert _me(two, token) == 401


def test_a_lost_denylist_entry_unrevokes_the_token(jwt_app: Flask, username: str, store: redis.Redis) -> None:
    """The price of revocation is state: lose the denylist (a Redis without persistence restarting) and
    a revoked token works again."""
    client = jwt_app.test_client()
    token = _login(client, username)["access_token"]
    client.post("/token/revoke", json={"token": token})
    assert _me(client, token) == 401
    store.delete(f"jwt:denied:{jwt.decode(token, SECRET, algorithms=['HS256'])['jti']}")
    assert _me(client, token) == 200


def test_token_routes_are_404_in_session_mode(app_factory: Callable[..., Flask]) -> None:
    client = app_factory("stateless").test_client()
    response = client.post("/token/refresh", json={"refresh_token": "x"})
    assert response.status_code == 404 and "jwt" in response.get_json()["error"]


def test_jwt_mode_requires_a_long_secret(app_factory: Callable[..., Flask]) -> None:
    from stateless_app.config import ConfigError

    with pytest.raises(ConfigError, match="LAB_SECRET_KEY"):
        app_factory("stateless", LAB_AUTH_MODE="jwt", LAB_SECRET_KEY="")
    with pytest.raises(ConfigError, match="LAB_SECRET_KEY"):
        app_factory("stateless", LAB_AUTH_MODE="jwt", LAB_SECRET_KEY="short")
