"""Whether a latency difference between two cases is a price or noise, from the run's own spread.

The journal keeps each case's p50, p99 and request count, not its samples, so a bootstrap is out
of reach. Latencies are modelled as log-normal, the usual shape of request times: the median's
position is ln(p50), the spread s = (ln p99 - ln p50) / 2.326. The standard error of a sample
quantile q from n values is sqrt(q(1-q)/n) / density, which in log space is 1.2533 s/sqrt(n) at
the median and 3.733 s/sqrt(n) at p99. A difference is "within noise" when it is smaller than
1.96 times the combined standard error of the two cases (a 95% band).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Z_99 = 2.326  # the standard normal's 99th percentile
SE_FACTOR = {"p50": 1.2533, "p99": 3.733}  # standard error of the quantile, in units of s/sqrt(n)
BAND_Z = 1.96


@dataclass(frozen=True)
class CaseLatency:
    """One case's latency summary, as the journal has it."""

    p50_ms: float
    p99_ms: float
    requests: int


@dataclass(frozen=True)
class Difference:
    """stateless minus stateful at one percentile, and the 95% noise band around it (NaN: unknown)."""

    percentile: str
    extra_ms: float
    band_ms: float

    @property
    def within_noise(self) -> bool:
        return not math.isnan(self.band_ms) and abs(self.extra_ms) <= self.band_ms

    def describe(self) -> str:
        """Say what the difference is in a few words: a price, noise, or stateless being faster."""
        band = "" if math.isnan(self.band_ms) else f" (± {_ms(self.band_ms)} ms)"
        if math.isnan(self.extra_ms):
            return f"{self.percentile} n/a"
        if self.within_noise:
            return f"{self.percentile} within noise: {_signed(self.extra_ms)} ms{band}"
        if self.extra_ms < 0 and not math.isnan(self.band_ms):
            return f"{self.percentile} {_signed(self.extra_ms)} ms{band}: stateless was faster in this run"
        return f"{self.percentile} {_signed(self.extra_ms)} ms{band}"


def quantile_se_ms(case: CaseLatency, percentile: str) -> float:
    """Return the standard error of a case's p50 or p99 in ms (NaN when the case does not allow one)."""
    p50, p99, n = case.p50_ms, case.p99_ms, case.requests
    if not (n >= 2 and p50 > 0 and p99 >= p50 and math.isfinite(p99)):
        return math.nan
    spread = (math.log(p99) - math.log(p50)) / Z_99
    value = p50 if percentile == "p50" else p99
    log_se = SE_FACTOR[percentile] * spread / math.sqrt(n)
    return value * (math.exp(log_se) - 1)  # one standard error up from the value, back in ms


def difference(stateful: CaseLatency, stateless: CaseLatency, percentile: str) -> Difference:
    """Return stateless minus stateful at p50 or p99, with its 95% noise band."""
    pick = (lambda c: c.p50_ms) if percentile == "p50" else (lambda c: c.p99_ms)
    extra = pick(stateless) - pick(stateful)
    se = math.hypot(quantile_se_ms(stateful, percentile), quantile_se_ms(stateless, percentile))
    return Difference(percentile, extra, BAND_Z * se)


def describe_price(stateful: CaseLatency, stateless: CaseLatency) -> str:
    """Return the stateless price at p50 and p99 in one line, each a price, noise, or a gain."""
    return ", ".join(difference(stateful, stateless, p).describe() for p in ("p50", "p99"))


def _ms(value: float) -> str:
    return f"{value:.1f}" if abs(value) < 100 else f"{value:.0f}"


def _signed(value: float) -> str:
    return ("+" if value >= 0 else "−") + _ms(abs(value))


__all__ = ["CaseLatency", "Difference", "describe_price", "difference", "quantile_se_ms"]
