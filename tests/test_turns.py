"""Side-by-side cases: labs start together, traffic goes one case at a time, and an abort stops the waiting.

Every wait here has its own short deadline, so a broken turn fails its test in seconds, never
through the suite's 300 s timeout.
"""

from __future__ import annotations

import threading
import time

import pytest

from statelab.errors import ScenarioError
from statelab.turns import TOGETHER, Turn, Turns

DEADLINE_S = 5.0


def test_turns_let_cases_send_traffic_in_order_after_every_lab_is_up() -> None:
    turns, order, lock = Turns(3, timeout_s=DEADLINE_S), [], threading.Lock()

    def case(i: int, start_delay: float) -> None:
        time.sleep(start_delay)  # labs come up in any order
        turn = turns.turn(i)
        turn.lab_ready()
        turn.wait()
        with lock:
            order.append(i)
        turn.done()

    threads = [threading.Thread(target=case, args=(i, d)) for i, d in ((0, 0.05), (1, 0.0), (2, 0.02))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(2 * DEADLINE_S)
    assert order == [0, 1, 2]


def test_a_case_whose_lab_failed_does_not_block_the_others() -> None:
    turns = Turns(2, timeout_s=DEADLINE_S)
    turns.done(0)  # case 0 broke before its lab was up
    t0 = time.monotonic()
    turns.turn(1).wait()  # returns at once; were it blocked, the deadline would raise ScenarioError
    assert time.monotonic() - t0 < DEADLINE_S


def test_a_turn_that_never_comes_is_an_error_at_its_deadline() -> None:
    turns = Turns(2, timeout_s=0.2)
    with pytest.raises(ScenarioError, match="waited"):
        turns.turn(1).wait()  # case 0 never finishes


def test_an_abort_wakes_a_waiting_case_and_stops_it() -> None:
    turns = Turns(2, threading.Event(), timeout_s=DEADLINE_S)
    seen: list[BaseException] = []

    def waiting_case() -> None:
        try:
            turns.turn(1).wait()
        except BaseException as exc:  # KeyboardInterrupt is what the case's cleanup runs on
            seen.append(exc)

    thread = threading.Thread(target=waiting_case)
    thread.start()
    time.sleep(0.05)
    turns.abort.set()
    turns.wake()
    thread.join(DEADLINE_S)
    assert not thread.is_alive() and [type(e) for e in seen] == [KeyboardInterrupt]


def test_a_solo_turn_never_waits_and_counts_no_waiting_time() -> None:
    turn = Turn.solo()
    turn.lab_ready()
    turn.wait()
    turn.done()
    assert turn.waited_s == 0.0 and not turn.aborted


def test_waiting_time_is_counted_so_the_runner_can_leave_it_out() -> None:
    turns = Turns(2, timeout_s=DEADLINE_S)
    second = turns.turn(1)
    threading.Timer(0.2, turns.done, args=(0,)).start()
    second.wait()
    assert 0.1 < second.waited_s < DEADLINE_S


def test_together_cases_wait_for_every_lab_then_send_traffic_at_once() -> None:
    turns = Turns(3, timeout_s=DEADLINE_S, traffic=TOGETHER)
    started: list[int] = []
    gate = threading.Barrier(3, timeout=DEADLINE_S)  # each case holds its traffic until all three are in it

    def case(i: int, start_delay: float) -> None:
        time.sleep(start_delay)
        turn = turns.turn(i)
        turn.lab_ready()
        turn.wait()
        started.append(i)
        gate.wait()  # in turns, case 1 could never get here before case 0 is done: a BrokenBarrierError
        turn.done()

    threads = [threading.Thread(target=case, args=(i, d)) for i, d in ((0, 0.1), (1, 0.0), (2, 0.05))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(2 * DEADLINE_S)
    assert sorted(started) == [0, 1, 2] and not gate.broken


def test_together_still_waits_for_the_slowest_lab() -> None:
    turns = Turns(2, timeout_s=DEADLINE_S, traffic=TOGETHER)
    first = turns.turn(0)
    threading.Timer(0.2, turns.lab_ready, args=(1,)).start()
    first.wait()
    assert 0.1 < first.waited_s < DEADLINE_S


def test_an_unknown_traffic_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="in-turns"):
        Turns(2, traffic="sometimes")
