"""Typed reading of the LAB_* environment and the small value types the runtime shares.

One prefix for everything: the apps read the same variables (with their own copy of the reader,
deliberately), the CLI sets them for the children it starts, and compose sets them for containers.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from statelab.errors import ConfigError

ENV_PREFIX = "LAB_"
APP_KINDS = ("stateful", "stateless")
LAB_PASSWORD = "statelab"


@dataclass(frozen=True)
class Secret:
    """A string that masks itself in repr and str, so it never reaches a log by accident."""

    value: str

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    @classmethod
    def random(cls, nbytes: int = 24) -> "Secret":
        return cls(secrets.token_urlsafe(nbytes))


def env_str(name: str, default: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """Return LAB_<name>, or default; fail naming the variable when it is required and missing."""
    source = os.environ if env is None else env
    value = source.get(ENV_PREFIX + name, default)
    if value is None or value == "":
        raise ConfigError(f"{ENV_PREFIX}{name} is not set: set it in the environment")
    return value


def env_int(name: str, default: int, env: Mapping[str, str] | None = None) -> int:
    """Return LAB_<name> as an int, failing with the variable's name when it is not one."""
    raw = env_str(name, str(default), env)
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{ENV_PREFIX}{name}={raw!r} is not an integer") from None


def env_float(name: str, default: float, env: Mapping[str, str] | None = None) -> float:
    """Return LAB_<name> as a float, failing with the variable's name when it is not one."""
    raw = env_str(name, str(default), env)
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{ENV_PREFIX}{name}={raw!r} is not a number") from None


def default_run_root() -> Path:
    """Where run directories go: LAB_RUN_ROOT, else ./.statelab/runs."""
    return Path(os.environ.get(ENV_PREFIX + "RUN_ROOT") or Path.cwd() / ".statelab" / "runs")


@dataclass(frozen=True)
class BackingUrls:
    """Where an app instance finds its backing stores (what LAB_* variables carry to it)."""

    database_url: str
    redis_url: str | None = None
    s3_endpoint: str | None = None
    s3_access_key: str | None = None
    s3_secret_key: Secret | None = None
    s3_bucket: str = "statelab-uploads"

    def app_env(self) -> dict[str, str]:
        """Return the LAB_* variables an app instance needs for these stores."""
        env = {"LAB_DATABASE_URL": self.database_url, "LAB_S3_BUCKET": self.s3_bucket}
        if self.redis_url:
            env["LAB_REDIS_URL"] = self.redis_url
        if self.s3_endpoint:
            env["LAB_S3_ENDPOINT"] = self.s3_endpoint
            env["LAB_S3_ACCESS_KEY"] = self.s3_access_key or ""
            env["LAB_S3_SECRET_KEY"] = self.s3_secret_key.value if self.s3_secret_key else ""
        return env
