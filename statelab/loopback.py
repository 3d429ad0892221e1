"""What counts as a loopback client: the one rule every local-only server of the lab applies.

The balancer's admin API, the control API of `statelab up` and the live dashboard all serve on
127.0.0.1 and refuse anyone else. Linux routes all of 127.0.0.0/8 to loopback (simulated users
bind 127.A.B.C source addresses), so the rule accepts the whole block, and ::1.
"""

from __future__ import annotations

LOOPBACK_HOST = "127.0.0.1"  # where the lab's own servers listen
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")  # Host header values a browser sends to a loopback server


def is_loopback(address: str) -> bool:
    """Return whether a peer address (as a socket reports it) is on loopback: 127.0.0.0/8 or ::1."""
    return address.startswith("127.") or address == "::1"


__all__ = ["LOOPBACK_HOST", "LOOPBACK_NAMES", "is_loopback"]
