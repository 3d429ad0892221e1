"""Strict, typed reading of the LAB_* environment, once, when the app starts.

A missing or malformed value fails at start with a message naming the variable. (The stateless
app has its own copy of this reader, deliberately: the two packages share a contract, not code.)
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field
from typing import Mapping

PREFIX = "LAB_"


class ConfigError(RuntimeError):
    """A LAB_* variable is missing or malformed."""


def _str(env: Mapping[str, str], name: str, default: str | None = None) -> str:
    value = env.get(PREFIX + name) or default
    if not value:
        raise ConfigError(f"{PREFIX}{name} is not set: set it in the environment")
    return value


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = _str(env, name, str(default))
    if not re.fullmatch(r"-?\d+", raw.strip()) or not low <= int(raw) <= high:
        raise ConfigError(f"{PREFIX}{name}={raw!r} is not an integer in {low}..{high}")
    return int(raw)


def _float(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = _str(env, name, str(default))
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{PREFIX}{name}={raw!r} is not a number") from None
    if not low <= value <= high:
        raise ConfigError(f"{PREFIX}{name}={raw!r} is not in {low}..{high}")
    return value


def _choice(env: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    raw = _str(env, name, default)
    if raw not in allowed:
        raise ConfigError(f"{PREFIX}{name}={raw!r} is not one of {', '.join(allowed)}")
    return raw


@dataclass(frozen=True)
class Config:
    """Everything the stateless app reads from its environment."""

    instance_id: str
    database_url: str = field(repr=False)  # carries a password
    cache_ttl_s: int
    session_ttl_s: int
    max_upload_bytes: int
    store_timeout_s: float
    redis_url: str
    s3_endpoint: str
    s3_access_key: str = field(repr=False)
    s3_secret_key: str = field(repr=False)
    s3_bucket: str
    stampede_protection: bool
    auth_mode: str  # "session" or "jwt"
    secret_key: str = field(repr=False)  # signs JWTs; required in jwt mode only
    jwt_access_ttl_s: int
    jwt_refresh_ttl_s: int

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "Config":
        """Read and check every LAB_* variable the app uses."""
        auth_mode = _choice(env, "AUTH_MODE", "session", ("session", "jwt"))
        secret_key = _str(env, "SECRET_KEY") if auth_mode == "jwt" else env.get(PREFIX + "SECRET_KEY", "")
        if auth_mode == "jwt" and len(secret_key.encode()) < 32:
            raise ConfigError(f"{PREFIX}SECRET_KEY is too short for HS256: use at least 32 bytes")
        return cls(
            instance_id=_str(env, "INSTANCE_ID", socket.gethostname()),
            database_url=_str(env, "DATABASE_URL"),
            cache_ttl_s=_int(env, "CACHE_TTL_S", 60, 0, 86_400),
            session_ttl_s=_int(env, "SESSION_TTL_S", 3600, 1, 30 * 86_400),
            max_upload_bytes=_int(env, "MAX_UPLOAD_BYTES", 10 * 1024 * 1024, 1, 1 << 31),
            store_timeout_s=_float(env, "STORE_TIMEOUT_S", 1.0, 0.05, 60.0),
            redis_url=_str(env, "REDIS_URL"),
            s3_endpoint=_str(env, "S3_ENDPOINT"),
            s3_access_key=_str(env, "S3_ACCESS_KEY"),
            s3_secret_key=_str(env, "S3_SECRET_KEY"),
            s3_bucket=_str(env, "S3_BUCKET", "statelab-uploads"),
            stampede_protection=_choice(env, "CACHE_STAMPEDE_PROTECTION", "1", ("0", "1")) == "1",
            auth_mode=auth_mode,
            secret_key=secret_key,
            jwt_access_ttl_s=_int(env, "JWT_ACCESS_TTL_S", 300, 1, 86_400),
            jwt_refresh_ttl_s=_int(env, "JWT_REFRESH_TTL_S", 3600, 1, 30 * 86_400),
        )
