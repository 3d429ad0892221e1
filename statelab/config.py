"""The LAB_* environment the lab hands its children, and the small value types the runtime shares.

One prefix for everything: the apps read the variables (each with its own strict reader, in its
`config.py`), the lab sets them for the instances it starts (`BackingUrls.app_env`), and compose
sets them for containers. The runtime itself reads one: LAB_RUN_ROOT.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

ENV_PREFIX = "LAB_"
APP_KINDS = ("stateful", "stateless")


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
