"""Toxics: what a fault proxy does to the bytes of a link, in Toxiproxy's vocabulary. Pure, no I/O.

A toxic has a type, a stream (`upstream` = client to server, `downstream` = server to client, the
default), a `toxicity` (the probability that it applies to a given link, rolled once per link) and
integer attributes:

    latency     latency, jitter (ms)   each chunk arrives latency +/- jitter later, in order
    bandwidth   rate (KB/s, 1 KB = 1000 bytes)   the stream is paced to that rate
    slow_close  delay (ms)             the close (EOF) of the stream is forwarded delay later
    timeout     timeout (ms)           the stream's data is dropped; the link closes after timeout
                                       (0: it hangs until the toxic is removed)
    reset_peer  timeout (ms)           the link is reset (TCP RST to the client) after timeout (0: at once)
    limit_data  bytes                  the link closes once the stream has passed this many bytes

"down" is not a toxic: a proxy with enabled=false refuses connections and drops its links.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

STREAMS = ("upstream", "downstream")
ATTRIBUTES: Mapping[str, Mapping[str, int]] = {  # type -> attribute defaults
    "latency": {"latency": 0, "jitter": 0},
    "bandwidth": {"rate": 0},
    "slow_close": {"delay": 0},
    "timeout": {"timeout": 0},
    "reset_peer": {"timeout": 0},
    "limit_data": {"bytes": 0},
}
LINK_TOXICS = ("timeout", "reset_peer")  # these act on the whole link on a timer, not per chunk
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_ATTRIBUTE = 10**12


class ToxicError(ValueError):
    """A toxic or proxy description is malformed (the API answers 400 with this message)."""


@dataclass(frozen=True)
class Toxic:
    """One toxic as configured; immutable, so a link can tell an updated toxic from the one it rolled."""

    name: str
    type: str
    stream: str = "downstream"
    toxicity: float = 1.0
    attributes: Mapping[str, int] = field(default_factory=dict)

    def attr(self, name: str) -> int:
        return self.attributes[name]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "stream": self.stream, "toxicity": self.toxicity,
                "attributes": dict(self.attributes)}

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> "Toxic":
        """Validate a toxic as the API receives it; the name defaults to <type>_<stream>."""
        kind = body.get("type")
        if not isinstance(kind, str) or kind not in ATTRIBUTES:
            raise ToxicError(f"type must be one of {', '.join(ATTRIBUTES)}, not {kind!r}")
        stream = body.get("stream", "downstream")
        if stream not in STREAMS:
            raise ToxicError(f"stream must be upstream or downstream, not {stream!r}")
        name = body.get("name") or f"{kind}_{stream}"
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            raise ToxicError("name must be 1-64 letters, digits, '_', '.' or '-'")
        return cls(name, kind, stream, _toxicity(body.get("toxicity", 1.0)),
                   _attributes(kind, body.get("attributes") or {}, dict(ATTRIBUTES[kind])))

    def updated(self, body: Mapping[str, Any]) -> "Toxic":
        """Return this toxic with the toxicity and attributes of body changed (type, stream and name stay)."""
        unknown = set(body) - {"toxicity", "attributes", "name", "type", "stream"}
        if unknown:
            raise ToxicError(f"unknown field(s): {', '.join(sorted(unknown))}")
        for fixed in ("type", "stream", "name"):
            if fixed in body and body[fixed] != getattr(self, fixed):
                raise ToxicError(f"a toxic's {fixed} cannot change: delete it and add another")
        toxicity = _toxicity(body["toxicity"]) if "toxicity" in body else self.toxicity
        return Toxic(self.name, self.type, self.stream, toxicity,
                     _attributes(self.type, body.get("attributes") or {}, dict(self.attributes)))


def _toxicity(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ToxicError(f"toxicity must be a number in 0..1, not {value!r}")
    return float(value)


def _attributes(kind: str, given: Any, base: dict[str, int]) -> dict[str, int]:
    if not isinstance(given, Mapping):
        raise ToxicError("attributes must be an object")
    for key, value in given.items():
        if key not in base:
            raise ToxicError(f"{kind} has no attribute {key!r} (it has: {', '.join(base)})")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value != int(value) or not 0 <= value <= MAX_ATTRIBUTE:
            raise ToxicError(f"{kind}.{key} must be a non-negative integer, not {value!r}")
        base[key] = int(value)
    if kind == "bandwidth" and base["rate"] <= 0:
        raise ToxicError("bandwidth.rate must be at least 1 KB/s (use a timeout toxic to stop data)")
    return base


def parse_address(text: Any, what: str) -> tuple[str, int]:
    """Return (host, port) from "host:port"; the host must be a loopback IPv4 address."""
    if not isinstance(text, str):
        raise ToxicError(f"{what} must be a string like 127.0.0.1:8333")
    host, _, port = text.rpartition(":")
    if not host.startswith("127.") or not re.fullmatch(r"127(\.\d{1,3}){3}", host):
        raise ToxicError(f"{what} must be a loopback address like 127.0.0.1:8333, not {text!r}")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ToxicError(f"{what} has no valid port: {text!r}")
    return host, int(port)


def chunk_delay_s(toxic: Toxic, uniform: float) -> float:
    """Return the latency toxic's delay for one chunk; uniform is a draw in [-1, 1] for the jitter."""
    return max(0.0, toxic.attr("latency") + uniform * toxic.attr("jitter")) / 1000.0


def transmit_s(toxic: Toxic, nbytes: int) -> float:
    """Return how long nbytes take at the bandwidth toxic's rate."""
    return nbytes / (toxic.attr("rate") * 1000.0)
