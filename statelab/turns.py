"""Turn-taking for a scenario's cases run side by side: labs start together, traffic goes one case at a time.

The runner makes one `Turns` per scenario and hands each case its `Turn` in the case's context;
the harness calls `lab_ready`, `wait` and `done` on it. A case run on its own gets `Turn.solo()`,
which never waits. Every turn carries the run's abort signal (set on Ctrl-C), so waiting cases stop
and clean up.

A scenario that measures counts rather than latency (users logged out, items lost, jobs lost)
declares `traffic = TOGETHER`: its cases still wait until every lab is up, then all send traffic
at once. One that measures latency keeps the default, `IN_TURNS`, so one app's latency never
includes the other's load.
"""

from __future__ import annotations

import threading
import time

from statelab.errors import ScenarioError

TURN_TIMEOUT_S = 600.0
IN_TURNS, TOGETHER = "in-turns", "together"  # how a scenario's cases send traffic (`Scenario.traffic`)
TRAFFIC_MODES = (IN_TURNS, TOGETHER)


class Turns:
    """Let a scenario's cases start their labs together but send traffic one at a time, in order.

    Starting labs is most of a case's time and costs little CPU once done; measuring must not
    overlap, or one app's latency would include the other's load. Case i sends traffic when every
    lab is up (or failed) and cases 0..i-1 have finished their traffic; with traffic=TOGETHER (a
    scenario that counts losses, not latency), as soon as every lab is up.
    """

    def __init__(self, n: int, abort: threading.Event | None = None, timeout_s: float = TURN_TIMEOUT_S,
                 traffic: str = IN_TURNS) -> None:
        if traffic not in TRAFFIC_MODES:
            raise ValueError(f"traffic must be one of {', '.join(TRAFFIC_MODES)}, not {traffic!r}")
        self.n = n
        self.abort = abort or threading.Event()
        self.timeout_s = timeout_s
        self.together = traffic == TOGETHER
        self.ready: set[int] = set()
        self.next = 0
        self.cv = threading.Condition()

    def turn(self, i: int) -> "Turn":
        """Return case i's turn."""
        return Turn(self.abort, self, i)

    def lab_ready(self, i: int) -> None:
        with self.cv:
            self.ready.add(i)
            self.cv.notify_all()

    def wait_turn(self, i: int) -> float:
        """Block until case i may send traffic (every lab is up and, in turns, cases before i are done).

        KeyboardInterrupt when the run is aborted; ScenarioError after timeout_s.
        """
        with self.cv:
            self.ready.add(i)
            self.cv.notify_all()
            t0 = time.monotonic()
            ok = self.cv.wait_for(lambda: self.abort.is_set() or (
                len(self.ready) >= self.n and (self.together or self.next >= i)), timeout=self.timeout_s)
            waited = time.monotonic() - t0
        if self.abort.is_set():
            raise KeyboardInterrupt
        if not ok:
            raise ScenarioError(f"waited {self.timeout_s:.0f} s for the other cases of this scenario")
        return waited

    def done(self, i: int) -> None:
        with self.cv:
            self.ready.add(i)
            self.next = max(self.next, i + 1)
            self.cv.notify_all()

    def wake(self) -> None:
        """Wake every waiting case (after setting the abort signal)."""
        with self.cv:
            self.cv.notify_all()


class Turn:
    """One case's place in its scenario's turns (none when it runs alone), and the run's abort signal."""

    def __init__(self, abort: threading.Event, turns: Turns | None = None, index: int = 0) -> None:
        self.abort = abort
        self.turns = turns
        self.index = index
        self.waited_s = 0.0  # time spent waiting for the turn: the runner leaves it out of the case's wall time

    @classmethod
    def solo(cls, abort: threading.Event | None = None) -> "Turn":
        """Return the turn of a case that runs alone: it never waits."""
        return cls(abort or threading.Event())

    @property
    def aborted(self) -> bool:
        return self.abort.is_set()

    def lab_ready(self) -> None:
        """Tell the other cases this case has its lab up."""
        if self.turns is not None:
            self.turns.lab_ready(self.index)

    def wait(self) -> None:
        """Block until this case may send traffic (at once when alone; KeyboardInterrupt on abort)."""
        if self.turns is not None:
            self.waited_s += self.turns.wait_turn(self.index)
        elif self.aborted:
            raise KeyboardInterrupt

    def done(self) -> None:
        """Let the next case send traffic."""
        if self.turns is not None:
            self.turns.done(self.index)


__all__ = ["IN_TURNS", "TOGETHER", "TRAFFIC_MODES", "TURN_TIMEOUT_S", "Turn", "Turns"]
