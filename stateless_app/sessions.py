"""Sessions: JSON values in Redis under session:<id>, with a TTL; the cookie carries only the id.

Any instance can read any session, so the balancer may send a user anywhere and a restart logs
nobody out. (The JWT mode in tokens.py drops even this lookup, at a price: see there.)
"""

from __future__ import annotations

import json
import secrets
from typing import Any

import redis

COOKIE_NAME = "lab_session"
KEY_PREFIX = "session:"


class SessionStore:
    """Sessions in Redis; this process keeps none of them."""

    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self.ttl_s = ttl_s
        self._redis = client

    def create(self, user: dict[str, Any]) -> str:
        """Start a session for user and return its id."""
        session_id = secrets.token_urlsafe(32)
        self._redis.set(KEY_PREFIX + session_id, json.dumps(user), ex=self.ttl_s)
        return session_id

    def get(self, session_id: str | None) -> dict[str, Any] | None:
        """Return the user of a live session, or None."""
        if not session_id or len(session_id) > 128:
            return None
        raw = self._redis.get(KEY_PREFIX + session_id)
        return None if raw is None else json.loads(raw)  # type: ignore[arg-type]

    def delete(self, session_id: str | None) -> None:
        """End a session (a no-op when it is unknown)."""
        if session_id and len(session_id) <= 128:
            self._redis.delete(KEY_PREFIX + session_id)

    def count(self) -> int:
        """Return how many sessions this process holds in memory: none."""
        return 0
