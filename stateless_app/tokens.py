"""JWT mode (LAB_AUTH_MODE=jwt): HS256 access and refresh tokens signed with LAB_SECRET_KEY.

In the default session mode (sessions.py) every request looks its session up in Redis. A JWT is
checked with the secret alone, which is what makes it stateless; but then it cannot be revoked
before it expires. Revocation needs state again, and LAB_JWT_REVOCATION picks the price:

    denylist (default)  every request asks Redis whether its token id (jti) or its family is revoked:
                        logout ends every token of the login at once, for one Redis lookup per request
    none                the signature alone: no lookup, and a stolen access token works until it expires

Refresh tokens rotate: using one spends it, and each login starts a token family (`fam`) that its
refreshes carry on. With LAB_JWT_REUSE_DETECTION=1, a spent refresh token used again (a thief's
copy, or the user's after the thief refreshed first) revokes the whole family. Refreshing is
stateful in every mode; that lookup happens once per refresh, not per request.
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
FAMILY_PREFIX = "jwt:family-revoked:"
REQUIRED_CLAIMS = ["exp", "iat", "nbf", "jti", "sub", "typ", "fam"]


class TokenError(Unauthorized):
    """A token was refused: malformed, badly signed, expired, not yet valid, of the wrong kind or revoked."""


class Tokens:
    """Issues, verifies, rotates and revokes JWTs."""

    def __init__(self, client: redis.Redis, secret: str, access_ttl_s: int, refresh_ttl_s: int,
                 revocation: str = "denylist", reuse_detection: bool = False,
                 clock: Callable[[], float] = time.time) -> None:
        self._redis = client
        self._secret = secret
        self._ttl_s = {"access": access_ttl_s, "refresh": refresh_ttl_s}
        self.revocation = revocation
        self.reuse_detection = reuse_detection
        self._clock = clock

    def _encode(self, user: dict[str, Any], kind: str, family: str) -> str:
        now = int(self._clock())
        claims = {"sub": str(user["id"]), "username": user["username"], "typ": kind, "jti": secrets.token_hex(16),
                  "fam": family, "iat": now, "nbf": now, "exp": now + self._ttl_s[kind]}
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def issue(self, user: dict[str, Any], family: str | None = None) -> dict[str, str]:
        """Return a fresh access and refresh token for user, in a new family unless one is given."""
        family = family or secrets.token_hex(16)
        return {"access_token": self._encode(user, "access", family),
                "refresh_token": self._encode(user, "refresh", family)}

    def _decode(self, token: str, kind: str) -> dict[str, Any]:
        """Return the claims of a well-signed, unexpired token of this kind (no revocation check)."""
        try:
            # Only HS256 is accepted: this refuses alg "none" and any algorithm swap.
            claims: dict[str, Any] = jwt.decode(token, self._secret, algorithms=[ALGORITHM],
                                                options={"require": REQUIRED_CLAIMS})
        except jwt.InvalidTokenError as exc:
            raise TokenError(f"invalid token: {exc}") from None
        except UnicodeEncodeError:  # a lone surrogate, as JSON's "\ud800" decodes to: not a token
            raise TokenError("invalid token: not UTF-8") from None
        if claims["typ"] != kind:
            raise TokenError(f"invalid token: expected an {kind} token")
        if not str(claims["sub"]).isdigit() or not isinstance(claims.get("username"), str) \
                or not isinstance(claims["fam"], str) or not isinstance(claims["jti"], str):
            raise TokenError("invalid token: bad claims")
        return claims

    def verify(self, token: str, kind: str) -> dict[str, Any]:
        """Return the claims of a valid token; with the denylist (and for every refresh token), unrevoked too."""
        claims = self._decode(token, kind)
        if (kind == "refresh" or self.revocation == "denylist") and \
                self._redis.exists(DENYLIST_PREFIX + claims["jti"], FAMILY_PREFIX + claims["fam"]):
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

    def _revoke_family(self, claims: dict[str, Any]) -> None:
        """Revoke every token of a login: none issued before now outlives the refresh TTL."""
        self._redis.set(FAMILY_PREFIX + claims["fam"], b"1", ex=self._ttl_s["refresh"] + 1)

    def refresh(self, refresh_token: str) -> tuple[dict[str, Any], dict[str, str]]:
        """Rotate: spend a refresh token and return its user with a new pair in the same family."""
        claims = self._decode(refresh_token, "refresh")
        if self._redis.exists(FAMILY_PREFIX + claims["fam"]):
            raise TokenError("invalid token: revoked")
        if not self._deny(claims):  # SET NX: of two uses of one token (two refreshes, or a thief), one wins
            if self.reuse_detection:
                self._revoke_family(claims)
                raise TokenError("invalid token: refresh token reused, so every token of its login is revoked")
            raise TokenError("invalid token: refresh token already used")
        user = {"id": int(claims["sub"]), "username": claims["username"]}
        return user, self.issue(user, family=claims["fam"])

    def revoke(self, token: str) -> None:
        """Put a valid token (access or refresh) on the denylist."""
        try:
            claims = self.verify(token, "access")
        except TokenError:
            claims = self.verify(token, "refresh")
        self._deny(claims)

    def logout(self, token: str) -> None:
        """End the login a token belongs to: deny the token and revoke its family.

        With LAB_JWT_REVOCATION=none nothing checks either on an access token: a copy of it still
        works until it expires; only the refresh tokens die.
        """
        try:
            claims = self.verify(token, "access")
        except TokenError:
            claims = self.verify(token, "refresh")
        self._deny(claims)
        self._revoke_family(claims)
