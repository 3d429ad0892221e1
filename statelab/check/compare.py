"""Comparing failure kinds between a phase and the baseline, and judging each check: pure, no I/O.

A failure kind is the journey's own words for what went wrong on one request name ("logged out"
on GET /me). The baseline (users pinned to one instance, no fault) gives each kind's rate per
request on its own; a check's phase *raised* a kind when it saw clearly more of it than that
rate predicts for the phase's requests. "Clearly": at least MIN_EXCESS more, and more than
SIGMAS standard deviations of a Poisson count at the expected rate, so an app's own flaky route
(1 % of requests in the baseline, 1.3 % in a phase) is not blamed on the check, while one user's
lost session in an app that otherwise never fails is (three of them are).
"""

from __future__ import annotations

import math
from typing import Sequence

from statelab.check.result import CheckResult, DiskFile, KindChange, PhaseStats

MIN_EXCESS = 3  # failures above the baseline's expectation before a kind "rose"
SIGMAS = 3.0


def rose(count: int, expected: float) -> bool:
    """Return whether count failures are clearly more than the expected number."""
    return count - expected >= max(MIN_EXCESS, SIGMAS * math.sqrt(max(expected, 0.0)))


def compare(baseline: PhaseStats, phase: PhaseStats) -> tuple[KindChange, ...]:
    """Return every answered failure kind of the baseline or the phase, compared; risen kinds first.

    A kind is the journey's error text on any request: "logged out" on GET /cart and on GET /me
    is one user experience, counted together, and broken down by request in `where`.
    """
    errors = list(dict.fromkeys([f.error for f in phase.answered] + [f.error for f in baseline.answered]))
    changes = []
    for error in errors:
        b_count, count = baseline.count(error), phase.count(error)
        b_rate = b_count / baseline.requests if baseline.requests else 0.0
        expected = b_rate * phase.requests
        names = dict.fromkeys((f.method, f.name) for f in (*phase.answered, *baseline.answered) if f.error == error)
        where = tuple(sorted(((m, n, _count(phase, m, n, error), _count(baseline, m, n, error)) for m, n in names),
                             key=lambda w: (-w[2], -w[3], w[1])))
        examples = tuple(e for f in phase.answered if f.error == error for e in f.examples)
        changes.append(KindChange(error, b_count, b_rate, count, count / phase.requests if phase.requests else 0.0,
                                  expected, rose(count, expected), where, tuple(sorted(examples, key=lambda e: e.t_s))))
    return tuple(sorted(changes, key=lambda c: (not c.rose, -c.excess, c.error)))


def _count(phase: PhaseStats, method: str, name: str, error: str) -> int:
    return sum(f.count for f in phase.answered if (f.method, f.name, f.error) == (method, name, error))


def judge_phase(name: str, title: str, baseline: PhaseStats, phase: PhaseStats) -> CheckResult:
    """Return a phase's check: failed when any failure kind rose above the baseline."""
    changes = compare(baseline, phase)
    risen = [c for c in changes if c.rose]
    if risen:
        kinds = "; ".join(f"{c.error!r} {c.count} times ({_pct(c.rate)} of requests; baseline {_pct(c.baseline_rate)})"
                          for c in risen)
        summary = f"users lost state: {kinds}"
    else:
        summary = f"no failure kind rose above the baseline in {phase.requests} requests"
        if phase.unanswered:
            n = phase.unanswered
            summary += f" ({n} request{'s' if n != 1 else ''} got no answer from the app: not lost state)"
    return CheckResult(name, title, "failed" if risen else "passed", summary, phase, changes)


def judge_disk(files: Sequence[DiskFile]) -> CheckResult:
    """Return the local-disk check: failed when an instance left files it wrote while serving."""
    during = [f for f in files if f.during_run]
    title = "what each instance wrote to its own local disk"
    if during:
        instances = sorted({f.instance for f in during})
        size = sum(f.size for f in during)
        summary = (f"{len(during)} files ({_bytes(size)}) written while serving, on {len(instances)} instances' own "
                   f"disks ({', '.join(instances)}): another instance cannot read them, a new one starts without them")
        return CheckResult("local-disk", title, "failed", summary, files=tuple(files))
    started = len(files)
    summary = "no file written while serving" + (f" ({started} written at start-up only)" if started else "")
    return CheckResult("local-disk", title, "passed", summary, files=tuple(files))


def _pct(rate: float) -> str:
    return f"{100 * rate:.1f}%"


def _bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    size = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024 or unit == "GiB":
            break
    return f"{size:.1f} {unit}"


__all__ = ["MIN_EXCESS", "SIGMAS", "compare", "judge_disk", "judge_phase", "rose"]
