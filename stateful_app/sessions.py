"""Sessions: a dict in this process's memory, keyed by the opaque random id the cookie carries.

The cookie holds only the id; who the user is lives here. That breaks with several instances: a
request balanced to another instance finds an empty dict and is logged out, and a restart or a
crash logs everyone out.
"""

from __future__ import annotations

import secrets
import threading
import time
from typing import Any, Callable

COOKIE_NAME = "lab_session"


class SessionStore:
    """Live sessions of this process: {session id: (expiry, user)}."""

    def __init__(self, ttl_s: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._sessions: dict[str, tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def create(self, user: dict[str, Any]) -> str:
        """Start a session for user and return its id."""
        session_id = secrets.token_urlsafe(32)
        with self._lock:
            self._sessions[session_id] = (self._clock() + self.ttl_s, dict(user))
        return session_id

    def get(self, session_id: str | None) -> dict[str, Any] | None:
        """Return the user of a live session, or None."""
        if not session_id:
            return None
        with self._lock:
            entry = self._sessions.get(session_id)
            if entry is None:
                return None
            if entry[0] <= self._clock():
                del self._sessions[session_id]
                return None
            return dict(entry[1])

    def delete(self, session_id: str | None) -> None:
        """End a session (a no-op when it is unknown)."""
        with self._lock:
            self._sessions.pop(session_id or "", None)

    def count(self) -> int:
        """Return how many live sessions this process holds in memory, forgetting expired ones."""
        now = self._clock()
        with self._lock:
            for session_id in [sid for sid, (expires, _) in self._sessions.items() if expires <= now]:
                del self._sessions[session_id]
            return len(self._sessions)
