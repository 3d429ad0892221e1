"""Strict, typed reading of the LAB_* environment, once, when the app starts.

A missing or malformed value fails at start with a message naming the variable. (The stateless
app has its own copy of this reader, deliberately: the two packages share a contract, not code.)
"""

from __future__ import annotations

import re
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
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


@dataclass(frozen=True)
class Config:
    """Everything the stateful app reads from its environment."""

    instance_id: str
    database_url: str = field(repr=False)  # carries a password
    cache_ttl_s: int
    session_ttl_s: int
    max_upload_bytes: int
    store_timeout_s: float
    upload_dir: Path
    job_delay_s: float  # a job sleeps this long after its effect (a window to kill it in)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "Config":
        """Read and check every LAB_* variable the app uses."""
        instance_id = _str(env, "INSTANCE_ID", socket.gethostname())
        # The default upload directory is per instance: two instances on one host must not share a disk.
        safe_id = re.sub(r"[^A-Za-z0-9_.-]", "_", instance_id)
        default_dir = Path(tempfile.gettempdir()) / "statelab-uploads" / safe_id
        return cls(
            instance_id=instance_id,
            database_url=_str(env, "DATABASE_URL"),
            cache_ttl_s=_int(env, "CACHE_TTL_S", 60, 0, 86_400),
            session_ttl_s=_int(env, "SESSION_TTL_S", 3600, 1, 30 * 86_400),
            max_upload_bytes=_int(env, "MAX_UPLOAD_BYTES", 10 * 1024 * 1024, 1, 1 << 31),
            store_timeout_s=_float(env, "STORE_TIMEOUT_S", 1.0, 0.05, 60.0),
            upload_dir=Path(_str(env, "UPLOAD_DIR", str(default_dir))),
            job_delay_s=_float(env, "JOB_DELAY_S", 0.0, 0.0, 600.0),
        )
