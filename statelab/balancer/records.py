"""The bounded ring of per-request records, cheap to append and formatted only when read.

The proxy appends one raw tuple per request (monotonic start, client, backend id, request
line, status, latency, bytes); sequence numbers, wall-clock times and JSON shapes are computed
on read so that the hot path pays for one tuple and one deque append.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from typing import Any

DEFAULT_RECORDS_MAX = 100_000

# (t_monotonic, client, backend_id, request_line, status, latency_s, bytes)
RawRecord = tuple[float, str, str, bytes, int, float, int]


class RecordRing:
    """Keep the last `maxlen` request records; `total` counts every record ever appended."""

    def __init__(self, maxlen: int = DEFAULT_RECORDS_MAX) -> None:
        self.ring: deque[RawRecord] = deque(maxlen=maxlen)
        self.total = 0
        self._wall_offset = time.time() - time.monotonic()

    def add(self, rec: RawRecord) -> None:
        """Append one record (the proxy inlines this: `ring.append(rec); total += 1`)."""
        self.ring.append(rec)
        self.total += 1

    def read(self, since: int = 0, limit: int = 1000) -> dict[str, Any]:
        """Return records with seq >= since (seq starts at 1), how many of those were dropped, and the next seq."""
        first = self.total - len(self.ring) + 1  # seq of ring[0]
        since = max(since, 1)
        dropped = max(0, first - since)
        start = max(since, first) - first
        out = []
        seq = first + start
        for rec in itertools.islice(self.ring, start, start + max(0, limit)):
            out.append(self.format(seq, rec))
            seq += 1
        return {"next": seq, "dropped": dropped, "records": out}

    def format(self, seq: int, rec: RawRecord) -> dict[str, Any]:
        t, client, backend, line, status, latency_s, nbytes = rec
        parts = line.split(b" ")
        method = parts[0].decode("latin-1")
        path = parts[1].decode("latin-1") if len(parts) > 1 else ""
        return {"seq": seq, "t": round(t + self._wall_offset, 6), "client": client, "backend": backend,
                "method": method, "path": path, "status": status, "latency_ms": round(latency_s * 1000, 3),
                "bytes": nbytes}

    def latencies(self, last: int = 20_000) -> dict[str, list[float]]:
        """Return latency samples in ms per backend id over the last `last` records."""
        n = len(self.ring)
        per: dict[str, list[float]] = {}
        for rec in itertools.islice(self.ring, max(0, n - last), n):
            per.setdefault(rec[2], []).append(rec[5] * 1000)
        return per


def percentile(samples: list[float], q: float) -> float | None:
    """Return the q-quantile (0..1) by nearest rank, or None without samples."""
    if not samples:
        return None
    s = sorted(samples)
    return round(s[min(len(s) - 1, max(0, int(q * len(s) + 0.5) - 1))], 3)
