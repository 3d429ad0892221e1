"""Who is in a crowd: the `Population`, its members (`UserSpec`) and their loopback addresses.

Each distinct user gets its own /24 so an address-hashing balancer sees it as its own client;
NAT users share one address.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from requests.adapters import HTTPAdapter

from statelab.seed import SEED_USERS, username
_SLASH24S = 199 * 256  # 127.1.0.x .. 127.199.255.x; 127.200+ is left for NAT addresses


class SourceAddressAdapter(HTTPAdapter):
    """A requests adapter whose connections all leave from one source address (the Locust files' users)."""

    def __init__(self, address: str) -> None:
        self.source_address = (address, 0)  # set before super().__init__, which builds the pool
        super().__init__(pool_connections=1, pool_maxsize=1)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **kwargs: Any) -> None:
        kwargs["source_address"] = self.source_address
        super().init_poolmanager(connections, maxsize, block, **kwargs)


def user_address(index: int) -> str:
    """Return user ``index``'s loopback source address, each of the first 50,944 in its own /24.

    nginx's ip_hash keys on the first three octets, so distinct /24s are what make users
    distinct clients to it: 0 -> 127.1.0.1, 1 -> 127.1.1.1, 256 -> 127.2.0.1.
    """
    if index < 0 or index >= _SLASH24S * 254:
        raise ValueError(f"no loopback address for user index {index}")
    slot, host = index % _SLASH24S, 1 + index // _SLASH24S
    return f"127.{1 + slot // 256}.{slot % 256}.{host}"


def zipf_cumulative(n: int, s: float = 1.1) -> list[float]:
    """Return the cumulative Zipf(s) weights of items 1..n: a few products are most of the views."""
    total, out = 0.0, []
    for k in range(1, n + 1):
        total += 1.0 / k**s
        out.append(total)
    return out


@dataclass(frozen=True)
class UserSpec:
    index: int
    username: str
    address: str | None  # source address to bind, None = let the kernel choose
    behind_nat: bool


@dataclass(frozen=True)
class Population:
    """Who is in the crowd: users with their own address, plus users sharing one NAT address.

    ``Population(distinct_users=300, nat_users=2000, nat_address="127.200.0.1")`` is 2,300 people,
    2,000 of whom look like one client to an address-hashing balancer. Every user has its own
    account (user0001..user5000), so carts never mix legitimately.
    """

    distinct_users: int = 0
    nat_users: int = 0
    nat_address: str = "127.200.0.1"
    auth: str = "cookie"  # "cookie" (lab_session) or "jwt" (bearer tokens)
    think_s: float = 1.0  # mean pause between steps (exponential, capped at 5x)
    steps: int | None = None  # journey steps per user; None = until the crowd is stopped
    bind_addresses: bool = True  # False for a non-loopback target
    first_account: int = 1

    def __post_init__(self) -> None:
        if self.distinct_users < 0 or self.nat_users < 0 or self.size == 0:
            raise ValueError("a population needs at least one user")
        if self.first_account < 1 or self.first_account - 1 + self.size > SEED_USERS:
            raise ValueError(f"only {SEED_USERS} accounts exist ({username(1)}..{username(SEED_USERS)})")
        if self.auth not in ("cookie", "jwt"):
            raise ValueError(f"auth must be 'cookie' or 'jwt', not {self.auth!r}")
        if self.think_s < 0:
            raise ValueError("think_s must be >= 0")
        if not ipaddress.ip_address(self.nat_address).is_loopback:
            raise ValueError(f"nat_address must be a loopback address, not {self.nat_address}")

    @property
    def size(self) -> int:
        return self.distinct_users + self.nat_users

    def members(self) -> list[UserSpec]:
        """Return every user, distinct-address users first, in a stable order."""
        specs = []
        for i in range(self.size):
            nat = i >= self.distinct_users
            address = self.nat_address if nat else user_address(i)
            specs.append(UserSpec(i, username(self.first_account + i),
                                  address if self.bind_addresses else None, nat))
        return specs
