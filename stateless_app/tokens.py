"""JWT mode (LAB_AUTH_MODE=jwt): HS256 access and refresh tokens signed with LAB_SECRET_KEY.

In the default session mode (sessions.py) every request looks its session up in Redis. A JWT is
checked with the secret alone, which is what makes it stateless; but then it cannot be revoked
before it expires. Revocation needs a denylist of token ids (jti) in Redis, looked up on every
request: state again. The lab measures that price. Refresh tokens rotate: using one revokes it.
"""

from __future__ import annotations

import secrets
import time
from typing import Any, Callable

import jwt
import redis
from werkzeug.exceptions import Unauthorized

ALGORITHM = "HS256"
DENYLIST_PREFIX = "jwt:denied:"
REQUIRED_CLAIMS = ["exp", "iat", "nbf", "jti", "sub", "typ"]


class TokenError(Unauthorized):
    """A token was refused: malformed, badly signed, expired, not yet valid, of the wrong kind or revoked."""


class Tokens:
    """Issues, verifies, rotates and revokes JWTs."""

    def __init__(self, client: redis.Redis, secret: str, access_ttl_s: int, refresh_ttl_s: int,
                 clock: Callable[[], float] = time.time) -> None:
        self._redis = client
        self._secret = secret
        self._ttl_s = {"access": access_ttl_s, "refresh": refresh_ttl_s}
        self._clock = clock

    def _encode(self, user: dict[str, Any], kind: str) -> str:
        now = int(self._clock())
        claims = {"sub": str(user["id"]), "username": user["username"], "typ": kind, "jti": secrets.token_hex(16),
                  "iat": now, "nbf": now, "exp": now + self._ttl_s[kind]}
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def issue(self, user: dict[str, Any]) -> dict[str, str]:
        """Return a fresh access and refresh token for user."""
        return {"access_token": self._encode(user, "access"), "refresh_token": self._encode(user, "refresh")}

    def verify(self, token: str, kind: str) -> dict[str, Any]:
        """Return the claims of a valid, unrevoked token of this kind; raise TokenError otherwise."""
        try:
            # Only HS256 is accepted: this refuses alg "none" and any algorithm swap.
            claims: dict[str, Any] = jwt.decode(token, self._secret, algorithms=[ALGORITHM],
                                                options={"require": REQUIRED_CLAIMS})
        except jwt.InvalidTokenError as exc:
            raise TokenError(f"invalid token: {exc}") from None
        if claims["typ"] != kind:
            raise TokenError(f"invalid token: expected an {kind} token")
        if not str(claims["sub"]).isdigit() or not isinstance(claims.get("username"), str):
            raise TokenError("invalid token: bad subject")
        if self._redis.exists(DENYLIST_PREFIX + claims["jti"]):
            raise TokenError("invalid token: revoked")
        return claims

    def user_of(self, token: str) -> dict[str, Any]:
        """Return {"id", "username"} of a valid access token."""
        claims = self.verify(token, "access")
        return {"id": int(claims["sub"]), "username": claims["username"]}

    def _deny(self, claims: dict[str, Any]) -> bool:
        """Put a token id on the denylist until the token would expire; False if it already was."""
        remaining_s = max(1, int(claims["exp"] - self._clock()) + 1)
        return bool(self._redis.set(DENYLIST_PREFIX + claims["jti"], b"1", nx=True, ex=remaining_s))

    def refresh(self, refresh_token: str) -> tuple[dict[str, Any], dict[str, str]]:
        """Rotate: revoke a refresh token and return its user with a new token pair."""
        claims = self.verify(refresh_token, "refresh")
        if not self._deny(claims):  # SET NX: of two concurrent refreshes with one token, one wins
            raise TokenError("invalid token: refresh token already used")
        user = {"id": int(claims["sub"]), "username": claims["username"]}
        return user, self.issue(user)

    def revoke(self, token: str) -> None:
        """Put a valid token (access or refresh) on the denylist."""
        try:
            claims = self.verify(token, "access")
        except TokenError:
            claims = self.verify(token, "refresh")
        self._deny(claims)
