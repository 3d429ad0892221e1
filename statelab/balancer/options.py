"""What one builtin balancer process is told: ports, backends, policy, limits and timeouts."""

from __future__ import annotations

from dataclasses import dataclass

from statelab.balancer.records import DEFAULT_RECORDS_MAX


@dataclass(frozen=True)
class BalancerOptions:
    """Everything one balancer process needs; `statelab lb` builds it from argv."""

    port: int
    backends: tuple[tuple[str, str], ...]
    policy: str
    admin_port: int | None
    host: str = "127.0.0.1"
    health_interval_s: float = 1.0
    health_path: str = "/healthz"
    trust_forwarded_for: bool = False
    use_uvloop: bool = True
    hash_balance_factor: float = 1.25
    max_connections: int = 10_000
    max_header_bytes: int = 16 * 1024
    max_headers: int = 100
    header_timeout_s: float = 10.0
    idle_timeout_s: float = 60.0
    connect_timeout_s: float = 2.0
    backend_timeout_s: float = 60.0  # time to the first response byte
    body_timeout_s: float = 30.0  # longest pause between two pieces of a request body
    # A lingering close (nginx's lingering_time / lingering_timeout): after an answer that ends the
    # connection, keep reading and dropping what the client still sends, so that closing does not
    # reset the connection before the client has read the answer. Bounded in time and bytes.
    linger_time_s: float = 10.0
    linger_timeout_s: float = 2.0  # longest pause between two reads while lingering
    linger_max_bytes: int = 64 << 20
    records_max: int = DEFAULT_RECORDS_MAX
    shutdown_timeout_s: float = 5.0
