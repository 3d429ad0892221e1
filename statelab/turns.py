"""Turn-taking for a scenario's cases run side by side: labs start together, traffic goes one case at a time.

The runner binds each case thread to its turn (`Turns`, `bind_case`); the scenarios' harness calls
`case_lab_ready`, `case_wait_turn` and `case_traffic_done`, no-ops outside side-by-side runs.
`ABORT` is set on Ctrl-C so waiting cases stop and clean up.
"""

from __future__ import annotations

import threading
import time

from statelab.errors import ScenarioError

ABORT = threading.Event()  # set on Ctrl-C: running cases stop waiting and clean up
TURN_TIMEOUT_S = 600.0
_case = threading.local()


class Turns:
    """Let a scenario's cases start their labs together but send traffic one at a time, in order.

    Starting labs is most of a case's time and costs little CPU once done; measuring must not
    overlap, or one app's latency would include the other's load. Case i sends traffic when every
    lab is up (or failed) and cases 0..i-1 have finished their traffic.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self.ready: set[int] = set()
        self.next = 0
        self.cv = threading.Condition()

    def lab_ready(self, i: int) -> None:
        with self.cv:
            self.ready.add(i)
            self.cv.notify_all()

    def wait_turn(self, i: int) -> None:
        with self.cv:
            self.ready.add(i)
            self.cv.notify_all()
            t0 = time.monotonic()
            ok = self.cv.wait_for(lambda: ABORT.is_set() or (len(self.ready) >= self.n and self.next >= i),
                                  timeout=TURN_TIMEOUT_S)
            _case.waited_s = getattr(_case, "waited_s", 0.0) + time.monotonic() - t0
        if ABORT.is_set():
            raise KeyboardInterrupt
        if not ok:
            raise ScenarioError(f"waited {TURN_TIMEOUT_S:.0f} s for the other cases of this scenario")

    def done(self, i: int) -> None:
        with self.cv:
            self.ready.add(i)
            self.next = max(self.next, i + 1)
            self.cv.notify_all()


# --- the runner's side: which turn this thread's case holds, and how long it waited for it ----------

def bind_case(turns: Turns, i: int) -> None:
    """Make this thread's case case i of turns (its hooks now wait for that turn)."""
    _case.turns, _case.index, _case.waited_s = turns, i, 0.0


def unbind_case() -> None:
    """Detach this thread from its turns (the hooks become no-ops again)."""
    _case.turns = None


def reset_case_wait() -> None:
    """Start counting this thread's case's waiting time from zero."""
    _case.waited_s = 0.0


def case_waited_s() -> float:
    """Return how long this thread's case has waited for its turn, so the runner can leave it out of wall time."""
    return float(_case.waited_s)


# --- the case's side: hooks the scenarios' harness calls ---------------------------------------------

def case_lab_ready() -> None:
    """Tell the runner this thread's case has its lab up (no-op outside side-by-side runs)."""
    turns = getattr(_case, "turns", None)
    if turns is not None:
        turns.lab_ready(_case.index)


def case_wait_turn() -> None:
    """Block until this case may send traffic (no-op outside side-by-side runs)."""
    turns = getattr(_case, "turns", None)
    if turns is not None:
        turns.wait_turn(_case.index)


def case_traffic_done() -> None:
    """Let the next case send traffic (no-op outside side-by-side runs)."""
    turns = getattr(_case, "turns", None)
    if turns is not None:
        turns.done(_case.index)
