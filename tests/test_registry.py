"""The scenario registry: names and groups, what `statelab run NAME` chooses, and what `all` means."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from scenarios import DISASTERS, REGISTRY
from statelab.errors import ConfigError
from statelab.runner import find_scenarios
from statelab.scenario import Registry


@dataclass(frozen=True)
class Named:
    """Just enough of a scenario for the registry: a name."""

    name: str


def test_all_is_the_four_classic_disasters_in_order() -> None:
    assert REGISTRY.groups()[0] == DISASTERS
    assert [s.name for s in REGISTRY.find("all")] == ["rolling-deploy", "nat-hotspot", "local-disk-upload",
                                                      "cold-cache-autoscale"]
    assert [s.name for s in find_scenarios("all")] == [s.name for s in REGISTRY.group(DISASTERS)]


def test_a_name_chooses_one_scenario_and_an_unknown_one_is_refused_with_the_choices() -> None:
    assert [s.name for s in find_scenarios("nat-hotspot")] == ["nat-hotspot"]
    with pytest.raises(ConfigError, match="no scenario 'nope'.*rolling-deploy.*all"):
        find_scenarios("nope")


def test_a_new_group_runs_by_its_name_and_leaves_all_unchanged() -> None:
    entries = (("disasters", Named("a")), ("disasters", Named("b")), ("costs", Named("c")), ("costs", Named("d")))
    reg = Registry(entries)  # type: ignore[arg-type]
    assert [s.name for s in reg.find("all")] == ["a", "b"]
    assert [s.name for s in reg.find("costs")] == ["c", "d"]
    assert [s.name for s in reg] == ["a", "b", "c", "d"]
    assert reg.get("c") == Named("c") and reg.get("x") is None


def test_names_are_unique_and_never_a_group_or_all() -> None:
    with pytest.raises(ValueError, match="unique"):
        Registry((("g", Named("a")), ("g", Named("a"))))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="group"):
        Registry((("g", Named("g")),))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="group"):
        Registry((("g", Named("all")),))  # type: ignore[arg-type]
