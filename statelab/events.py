"""The timeline record: one thing a lab or a scenario did, at t seconds since a known start.

A lab keeps its events (deploys, drains, crashes, restarts, scaling) in seconds since it started;
a scenario's harness shifts them onto its own clock and adds its phase marks, so reports draw one
timeline. One type for both, so the two can never drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Event:
    """Something that happened at t seconds: its kind (e.g. `draining`, `phase`), on what, and details."""

    t: float
    kind: str  # a lab's: started, draining, stopped, ready, crashed, restarted, joined, scaled...; a scenario's: phase
    target: str
    detail: str = ""

    def shifted(self, offset_s: float) -> "Event":
        """Return this event on another clock (offset_s seconds later)."""
        return Event(round(self.t + offset_s, 3), self.kind, self.target, self.detail)

    def to_json(self) -> dict[str, object]:
        return {"t": round(self.t, 3), "kind": self.kind, "target": self.target, "detail": self.detail}


__all__ = ["Event"]
