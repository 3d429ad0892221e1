"""Load shapes for the scenario phases: warm-up, steady, spike, and all of them in a row.

Each shape scales with the `--users` and `--spawn-rate` given to Locust (`use_common_options`), so
`statelab load --users 50` means "50 users at the steady level" whatever the shape. The locustfile
exposes the one named by LAB_LOCUST_SHAPE (or all of them, for the web UI's `--class-picker`).
"""

from __future__ import annotations

from dataclasses import dataclass

from locust import LoadTestShape

WARM_UP_S = 30.0
STEADY_S = 60.0
SPIKE_S = 20.0
SPIKE_FACTOR = 4.0
WARM_UP_START_FRACTION = 0.1


@dataclass(frozen=True)
class Phase:
    """Hold `users_factor` x the base user count until `until_s` seconds into the run."""

    name: str
    until_s: float
    users_factor: float
    rate_factor: float = 1.0


def phase_at(phases: tuple[Phase, ...], t_s: float) -> Phase | None:
    """Return the phase running at t_s seconds, or None once every phase is over."""
    for phase in phases:
        if t_s < phase.until_s:
            return phase
    return None


class _PhasedShape(LoadTestShape):
    """A shape made of phases, scaled by the command line's --users and --spawn-rate."""

    abstract = True
    use_common_options = True
    phases: tuple[Phase, ...] = ()
    repeat = False  # True: start again after the last phase (for a web UI session of any length)

    def _options(self) -> object:
        return self.runner.environment.parsed_options if self.runner else None

    def _base(self) -> tuple[int, float]:
        options = self._options()
        users = int(getattr(options, "num_users", 0) or 10)
        rate = float(getattr(options, "spawn_rate", 0) or 10)
        return users, rate

    def tick(self) -> tuple[int, float] | None:
        t_s = self.get_run_time()
        # Headless Locust applies --run-time only after a shape has ended: the shape honours it itself.
        limit_s = getattr(self._options(), "run_time", None)
        if limit_s and t_s >= float(limit_s):
            return None
        if self.repeat and self.phases:
            t_s %= self.phases[-1].until_s
        phase = phase_at(self.phases, t_s)
        if phase is None:
            return None
        users, rate = self._base()
        return max(1, round(users * phase.users_factor)), rate * phase.rate_factor


class WarmUpShape(_PhasedShape):
    """Start at a tenth of the users and ramp to all of them, then hold (a cold start)."""

    phases = tuple(
        Phase("warm-up", WARM_UP_S * (i + 1) / 5, WARM_UP_START_FRACTION + (1 - WARM_UP_START_FRACTION) * i / 4)
        for i in range(5)
    ) + (Phase("steady", WARM_UP_S + STEADY_S, 1.0),)


class SteadyShape(_PhasedShape):
    """Hold the base user count, forever: stop it with Ctrl-C, the web UI or --run-time."""

    phases = (Phase("steady", STEADY_S, 1.0),)
    repeat = True


class SpikeShape(_PhasedShape):
    """Steady, then a flash crowd of SPIKE_FACTOR x the users arriving fast, then steady again; repeats."""

    phases = (
        Phase("steady", STEADY_S / 2, 1.0),
        Phase("spike", STEADY_S / 2 + SPIKE_S, SPIKE_FACTOR, rate_factor=SPIKE_FACTOR),
        Phase("after", STEADY_S + SPIKE_S, 1.0),
    )
    repeat = True


class PhasesShape(_PhasedShape):
    """The scenario's whole story once: warm-up, steady, spike, steady again; then stop."""

    phases = WarmUpShape.phases + tuple(
        Phase(p.name, WarmUpShape.phases[-1].until_s + p.until_s, p.users_factor, p.rate_factor)
        for p in SpikeShape.phases
    )


SHAPES: dict[str, type[LoadTestShape]] = {
    "warm-up": WarmUpShape,
    "steady": SteadyShape,
    "spike": SpikeShape,
    "phases": PhasesShape,
}
