"""Distribution properties of the balancing policies (pure: no sockets)."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import pytest

from statelab.balancer.policies import (POLICY_NAMES, ConsistentHash, CookieSticky, IpHash, LeastConnections,
                                        PowerOfTwoChoices, RoundRobin, make_policy)


@dataclass
class B:
    id: str
    active: int = 0


def backends(n: int) -> tuple[B, ...]:
    return tuple(B(f"app-{i}") for i in range(1, n + 1))


def test_every_name_makes_its_policy() -> None:
    for name in POLICY_NAMES:
        assert make_policy(name).name == name
    with pytest.raises(ValueError, match="round-robin"):
        make_policy("roundrobin")


def test_round_robin_is_even() -> None:
    cands, rr = backends(3), RoundRobin()
    counts = Counter(rr.pick(cands, "c").id for _ in range(300))
    assert set(counts.values()) == {100}


def test_least_connections_picks_the_minimum() -> None:
    cands = backends(4)
    for b, n in zip(cands, (5, 2, 7, 3)):
        b.active = n
    lc = LeastConnections()
    assert {lc.pick(cands, "c").id for _ in range(20)} == {"app-2"}


def test_least_connections_rotates_ties() -> None:
    cands, lc = backends(3), LeastConnections()
    assert Counter(lc.pick(cands, "c").id for _ in range(300)) == {"app-1": 100, "app-2": 100, "app-3": 100}


def test_ip_hash_is_stable_per_client_and_spreads_clients() -> None:
    cands, ih = backends(4), IpHash()
    clients = [f"127.{a}.{b}.1" for a in range(10) for b in range(40)]
    first = {c: ih.pick(cands, c).id for c in clients}
    assert all(ih.pick(cands, c).id == first[c] for c in clients)
    counts = Counter(first.values())
    assert len(counts) == 4 and min(counts.values()) > 0.15 * len(clients)
    # the full address counts, not just the /24 (nginx's ip_hash would put these together)
    assert len({ih.pick(cands, f"127.0.0.{d}").id for d in range(1, 40)}) == 4


def test_cookie_sticks_and_reroutes_when_the_backend_leaves() -> None:
    cands, ck = backends(3), CookieSticky()
    first, must_set = ck.pick_sticky(cands, "c", None)
    assert must_set
    for _ in range(10):
        assert ck.pick_sticky(cands, "c", first.id) == (first, False)
    remaining = tuple(b for b in cands if b is not first)  # first is drained: no longer a candidate
    again, must_set = ck.pick_sticky(remaining, "c", first.id)
    assert again is not first and must_set
    assert ck.pick_sticky(remaining, "c", "app-99")[1]  # unknown id: re-route and re-set


def test_consistent_hash_remaps_few_keys_when_a_backend_is_added() -> None:
    ch = ConsistentHash()
    keys = [f"127.0.{i // 250}.{i % 250}" for i in range(2000)]
    four, five = backends(4), backends(5)
    before = {k: ch.pick(four, k).id for k in keys}
    after = {k: ch.pick(five, k).id for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert all(after[k] == "app-5" for k in moved)  # keys move only to the new backend
    assert 0.1 * len(keys) < len(moved) < 0.32 * len(keys)  # about 1/5, far from a full reshuffle


def test_consistent_hash_bounds_the_load() -> None:
    ch = ConsistentHash(balance_factor=1.25)
    cands = backends(4)
    # every client hashes to the same point: without the bound one backend would take all
    for _ in range(400):
        ch.pick(cands, "127.0.0.1").active += 1
    cap = 1.25 * 400 / 4
    assert max(b.active for b in cands) <= cap + 1


def test_p2c_keeps_max_load_below_random() -> None:
    def max_load(pick_one: object) -> int:
        cands = backends(10)
        for _ in range(1000):
            pick_one(cands).active += 1  # type: ignore[operator]
        return max(b.active for b in cands)

    rng = random.Random(7)
    p2c = PowerOfTwoChoices(random.Random(7))
    random_max = max_load(lambda cs: cs[rng.randrange(len(cs))])
    p2c_max = max_load(lambda cs: p2c.pick(cs, "c"))
    assert p2c_max < random_max
    assert p2c_max <= 100 + 5  # nearly perfectly even (mean is 100)


def test_p2c_with_one_backend() -> None:
    only = backends(1)
    assert PowerOfTwoChoices().pick(only, "c") is only[0]
