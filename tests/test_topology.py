"""A lab's choreography with fake processes and a fake balancer (no process, milliseconds): deploy, scale, crash.

`Lab` takes the function that starts an instance and the balancer engine factory as seams, the way
honcho's `Manager` takes its process constructor; these tests check the order of every step.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Iterator

import pytest

from statelab.topology import Lab, LabSpec
from tests.support.labs import FAKE_BACKING, LabFakes

DEADLINE_S = 5.0  # generous: the supervisor checks every 0.2 s


@pytest.fixture
def fakes() -> LabFakes:
    return LabFakes()


@pytest.fixture
def lab(fakes: LabFakes, tmp_path: Path) -> Iterator[Lab]:
    """A started stateful lab of three fake instances behind the fake balancer."""
    lab = Lab(LabSpec(app="stateful", instances=3, run_dir=tmp_path), start_instance=fakes.start_instance,
              engine_factory=fakes.engine_factory)
    lab.start(backing=FAKE_BACKING)
    fakes.journal.lines.clear()
    yield lab
    lab.stop()


def kinds(lab: Lab, since: int = 0) -> list[str]:
    return [f"{e.kind} {e.target}" for e in lab.events[since:]]


def test_start_puts_every_ready_instance_behind_the_balancer(fakes: LabFakes, tmp_path: Path) -> None:
    with Lab(LabSpec(app="stateful", instances=2, run_dir=tmp_path), start_instance=fakes.start_instance,
             engine_factory=fakes.engine_factory) as lab:
        lab.start(backing=FAKE_BACKING)
        # the balancer starts beside the instances, empty; each instance joins once the lab saw it ready
        assert sorted(fakes.journal.lines[:3]) == ["balancer ", "start app-1", "start app-2"]
        assert fakes.journal.lines[3:] == ["add app-1", "add app-2"]
        assert [i.id for i in lab.status().instances] == ["app-1", "app-2"]
        assert kinds(lab) == ["started lab"]
    assert fakes.engine.stopped and not any(p.alive() for p in fakes.processes.values())


def test_a_deploy_drains_stops_starts_and_readds_one_instance_at_a_time(lab: Lab, fakes: LabFakes) -> None:
    lab.deploy(batch=1, drain=True)
    for iid in ("app-1", "app-2", "app-3"):
        assert fakes.journal.of(iid) == ["state drain", "state maint", "stop", "start", "state ready"]
    # one at a time: app-2 is drained only once app-1 is back in rotation
    assert fakes.journal.index("state app-1 ready") < fakes.journal.index("state app-2 drain")
    assert fakes.journal.index("state app-2 ready") < fakes.journal.index("state app-3 drain")
    assert kinds(lab, since=1) == ["deploy lab"] + [f"{k} app-{n}" for n in (1, 2, 3)
                                                    for k in ("draining", "stopped", "ready")] + ["deployed lab"]
    assert [i.generation for i in lab.instances.values()] == [2, 2, 2]


def test_draining_waits_until_no_request_is_in_flight_before_stopping(lab: Lab, fakes: LabFakes) -> None:
    fakes.engine.in_flight["app-1"] = [2, 1]
    lab.restart_instance("app-1")
    assert fakes.journal.of("app-1") == ["state drain", "poll 2", "poll 1", "poll 0", "state maint", "stop",
                                         "start", "state ready"]


def test_a_deploy_in_batches_restarts_a_batch_together_then_the_next(lab: Lab, fakes: LabFakes) -> None:
    lab.deploy(batch=2, drain=True)
    first_of_batch_2 = fakes.journal.index("state app-3 drain")
    assert max(fakes.journal.index(f"state {iid} ready") for iid in ("app-1", "app-2")) < first_of_batch_2
    assert [e.detail for e in lab.events if e.kind == "deploy"] == ["batch=2 drain=True"]


def test_a_deploy_without_drain_stops_at_once(lab: Lab, fakes: LabFakes) -> None:
    lab.deploy(batch=1, drain=False)
    for iid in ("app-1", "app-2", "app-3"):
        assert fakes.journal.of(iid) == ["stop", "start", "state ready"]
    assert "draining" not in {e.kind for e in lab.events}


def test_a_restart_on_a_taken_port_moves_the_instance_and_tells_the_balancer(lab: Lab, fakes: LabFakes) -> None:
    before = lab.instances["app-2"].address
    fakes.fail_next_start["app-2"] = "bind: address already in use"
    lab.restart_instance("app-2")
    assert fakes.journal.of("app-2")[-5:] == ["start", "start", "remove", "add", "state ready"]
    assert lab.instances["app-2"].address != before
    assert fakes.engine.addresses["app-2"] == lab.instances["app-2"].address


def test_scaling_up_adds_new_instances_only_once_they_are_ready(lab: Lab, fakes: LabFakes) -> None:
    lab.scale(5)
    assert sorted(fakes.journal.lines[:2]) == ["start app-4", "start app-5"]
    assert fakes.journal.lines[2:] == ["add app-4", "add app-5"]
    assert kinds(lab)[-3:] == ["joined app-4", "joined app-5", "scaled lab"]
    assert lab.events[-1].detail == "3 -> 5"
    assert list(lab.instances) == ["app-1", "app-2", "app-3", "app-4", "app-5"]


def test_scaling_down_drains_then_removes_then_stops_the_last_instances(lab: Lab, fakes: LabFakes) -> None:
    fakes.engine.in_flight["app-2"] = [1]
    lab.scale(1)
    assert fakes.journal.of("app-2") == ["state drain", "poll 1", "poll 0", "remove", "stop"]
    assert fakes.journal.of("app-3") == ["state drain", "remove", "stop"]
    assert fakes.journal.index("stop app-2") < fakes.journal.index("state app-3 drain")
    assert list(lab.instances) == ["app-1"] and set(fakes.engine.addresses) == {"app-1"}
    assert kinds(lab)[-3:] == ["removed app-2", "removed app-3", "scaled lab"]


def test_a_crashed_instance_is_taken_out_of_rotation_and_restarted_by_the_same_sequence(
        lab: Lab, fakes: LabFakes) -> None:
    lab.kill("app-2", signal.SIGKILL)
    deadline = time.monotonic() + DEADLINE_S
    while "restarted app-2" not in kinds(lab):
        assert time.monotonic() < deadline, f"no restart within {DEADLINE_S} s: {kinds(lab)}"
        time.sleep(0.02)
    assert fakes.journal.of("app-2") == ["signal SIGKILL", "state maint", "stop", "start", "state ready"]
    assert kinds(lab)[-3:] == ["killed app-2", "crashed app-2", "restarted app-2"]
    assert lab.instances["app-2"].generation == 2 and lab.instances["app-2"].state == "ready"


def test_the_options_a_scenario_needs_reach_the_instances_and_the_balancer(fakes: LabFakes, tmp_path: Path) -> None:
    spec = LabSpec(app="stateless", instances=2, run_dir=tmp_path, workers=4, health_path="/readyz",
                   side_instances=(("probe", (("LAB_AUTH_MODE", "jwt"),)),))
    with Lab(spec, start_instance=fakes.start_instance, engine_factory=fakes.engine_factory) as lab:
        lab.start(backing=FAKE_BACKING)
        assert fakes.health_paths == ["/readyz"]
        assert {iid: w["workers"] for iid, w in fakes.started_with.items()} == {"app-1": 4, "app-2": 4, "probe": 4}
        assert fakes.started_with["probe"]["env"]["LAB_AUTH_MODE"] == "jwt"  # type: ignore[index]
        assert fakes.started_with["app-1"]["env"]["LAB_AUTH_MODE"] == "session"  # type: ignore[index]
        assert set(lab.side) == {"probe"} and "add probe" not in fakes.journal.lines  # not balanced
        assert sorted(line for line in fakes.journal.lines if line.startswith("add")) == ["add app-1", "add app-2"]
    assert not fakes.processes["probe"].alive()  # stopped with the lab


def test_a_lab_without_a_balancer_is_reached_at_its_instance_and_still_restarts_crashes(
        fakes: LabFakes, tmp_path: Path) -> None:
    with Lab(LabSpec(app="stateful", instances=1, run_dir=tmp_path, balancer=False),
             start_instance=fakes.start_instance, engine_factory=fakes.engine_factory) as lab:
        lab.start(backing=FAKE_BACKING)
        assert lab.engine is None and fakes.health_paths == []
        assert lab.entry_url == lab.instances["app-1"].url and lab.balancer_url == ""
        lab.kill("app-1", signal.SIGKILL)
        deadline = time.monotonic() + DEADLINE_S
        while "restarted app-1" not in kinds(lab):
            assert time.monotonic() < deadline, f"no restart within {DEADLINE_S} s: {kinds(lab)}"
            time.sleep(0.02)
        assert fakes.journal.of("app-1") == ["start", "signal SIGKILL", "stop", "start"]  # no balancer to tell


def test_bad_lab_options_are_refused(tmp_path: Path) -> None:
    from statelab.errors import ConfigError

    with pytest.raises(ConfigError, match="redis mode"):
        LabSpec(app="stateless", redis="cluster").validate()
    with pytest.raises(ConfigError, match="workers"):
        LabSpec(app="stateful", workers=0).validate()
