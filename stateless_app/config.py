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


def _addresses(env: Mapping[str, str], name: str) -> tuple[tuple[str, int], ...]:
    raw = env.get(PREFIX + name, "").strip()
    found = []
    for item in filter(None, (part.strip() for part in raw.split(","))):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{PREFIX}{name}={raw!r}: expected host:port[,host:port...]")
        found.append((host, int(port)))
    return tuple(found)


@dataclass(frozen=True)
class Config:
    """Everything the stateless app reads from its environment."""

    instance_id: str
    database_url: str = field(repr=False)  # carries a password
    cache_ttl_s: int
    session_ttl_s: int
    max_upload_bytes: int
    store_timeout_s: float
    redis_url: str  # "" when Redis is found through Sentinel
    redis_sentinels: tuple[tuple[str, int], ...]  # LAB_REDIS_SENTINELS: ask them where the master is
    redis_master: str
    s3_endpoint: str
    s3_access_key: str = field(repr=False)
    s3_secret_key: str = field(repr=False)
    s3_bucket: str
    s3_downloads: str  # "proxy" (the app streams the bytes) or "presigned" (a redirect to S3)
    s3_public_endpoint: str  # where clients reach S3 for presigned URLs
    s3_presign_ttl_s: int
    s3_read_cache_bytes: int  # in-process cache of (immutable) upload bytes; 0 turns it off
    stampede_protection: bool
    auth_mode: str  # "session" or "jwt"
    secret_key: str = field(repr=False)  # signs JWTs; required in jwt mode only
    jwt_access_ttl_s: int
    jwt_refresh_ttl_s: int
    jwt_revocation: str  # "denylist" (a Redis lookup per request) or "none" (signature only)
    jwt_reuse_detection: bool  # a reused refresh token revokes its whole family
    job_delay_s: float  # a job sleeps this long after its effect (a window to kill it in)
    job_idempotent: bool  # the job's effect is applied once per job id, however often it runs
    cart_mode: str  # "atomic" (HINCRBY) or "naive" (read-modify-write of a JSON blob)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "Config":
        """Read and check every LAB_* variable the app uses."""
        auth_mode = _choice(env, "AUTH_MODE", "session", ("session", "jwt"))
        secret_key = _str(env, "SECRET_KEY") if auth_mode == "jwt" else env.get(PREFIX + "SECRET_KEY", "")
        if auth_mode == "jwt" and len(secret_key.encode()) < 32:
            raise ConfigError(f"{PREFIX}SECRET_KEY is too short for HS256: use at least 32 bytes")
        sentinels = _addresses(env, "REDIS_SENTINELS")
        s3_endpoint = _str(env, "S3_ENDPOINT")
        return cls(
            instance_id=_str(env, "INSTANCE_ID", socket.gethostname()),
            database_url=_str(env, "DATABASE_URL"),
            cache_ttl_s=_int(env, "CACHE_TTL_S", 60, 0, 86_400),
            session_ttl_s=_int(env, "SESSION_TTL_S", 3600, 1, 30 * 86_400),
            max_upload_bytes=_int(env, "MAX_UPLOAD_BYTES", 10 * 1024 * 1024, 1, 1 << 31),
            store_timeout_s=_float(env, "STORE_TIMEOUT_S", 1.0, 0.05, 60.0),
            redis_url=env.get(PREFIX + "REDIS_URL", "") if sentinels else _str(env, "REDIS_URL"),
            redis_sentinels=sentinels,
            redis_master=_str(env, "REDIS_MASTER", "statelab"),
            s3_endpoint=s3_endpoint,
            s3_access_key=_str(env, "S3_ACCESS_KEY"),
            s3_secret_key=_str(env, "S3_SECRET_KEY"),
            s3_bucket=_str(env, "S3_BUCKET", "statelab-uploads"),
            s3_downloads=_choice(env, "S3_DOWNLOADS", "proxy", ("proxy", "presigned")),
            s3_public_endpoint=_str(env, "S3_PUBLIC_ENDPOINT", s3_endpoint),
            s3_presign_ttl_s=_int(env, "S3_PRESIGN_TTL_S", 60, 1, 7 * 86_400),
            s3_read_cache_bytes=_int(env, "S3_READ_CACHE_BYTES", 0, 0, 1 << 34),
            stampede_protection=_choice(env, "CACHE_STAMPEDE_PROTECTION", "1", ("0", "1")) == "1",
            auth_mode=auth_mode,
            secret_key=secret_key,
            jwt_access_ttl_s=_int(env, "JWT_ACCESS_TTL_S", 300, 1, 86_400),
            jwt_refresh_ttl_s=_int(env, "JWT_REFRESH_TTL_S", 3600, 1, 30 * 86_400),
            jwt_revocation=_choice(env, "JWT_REVOCATION", "denylist", ("denylist", "none")),
            jwt_reuse_detection=_choice(env, "JWT_REUSE_DETECTION", "0", ("0", "1")) == "1",
            job_delay_s=_float(env, "JOB_DELAY_S", 0.0, 0.0, 600.0),
            job_idempotent=_choice(env, "JOB_IDEMPOTENT", "1", ("0", "1")) == "1",
            cart_mode=_choice(env, "CART_MODE", "atomic", ("atomic", "naive")),
        )
