"""What keeps the time to a verdict short, held by structure rather than by seconds (no timing bounds).

A lab starts its instances and its balancer while its stores start, and each instance joins the
balancer once the lab saw it ready; the balancer admits a new backend at once, without waiting for
its own health checks to rise; a lab takes the run's shared stores except those its scenario must
own; what a lab killed with SIGKILL left in /dev/shm or /tmp is tidied by the next one. The live
side (stores started once per run, clean tenancies, forked instances) is in test_speed_live.py.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from statelab.balancer.pool import RISE, Pool
from statelab.errors import ConfigError, ControlError
from statelab.procs import OWNER_FILE, free_port, owned_tempdir
from statelab.topology import Lab, LabSpec
from tests.support.labs import FAKE_BACKING, LabFakes


@pytest.mark.parametrize(("spec", "shared"), [
    (LabSpec(app="stateless"), ("postgres", "redis", "s3")),
    (LabSpec(app="stateful"), ("postgres",)),
    (LabSpec(app="stateless", own_stores=("redis",)), ("postgres", "s3")),  # redis-outage, jwt-theft
    (LabSpec(app="stateless", redis="aof"), ("postgres", "s3")),
    (LabSpec(app="stateless", redis="sentinel"), ("postgres", "s3")),
    (LabSpec(app="stateless", s3_faults=True), ("postgres", "redis")),  # s3-latency
    (LabSpec(app="stateless", own_stores=("postgres", "redis", "s3")), ()),
])
def test_a_lab_shares_every_store_but_those_its_scenario_touches(spec: LabSpec, shared: tuple[str, ...]) -> None:
    assert spec.shareable_stores() == shared


def test_own_stores_takes_store_names_only() -> None:
    with pytest.raises(ConfigError, match="own_stores takes store names"):
        LabSpec(app="stateless", own_stores=("mysql",)).validate()


def test_the_balancer_starts_beside_the_instances_and_each_joins_once_ready(tmp_path: Path) -> None:
    fakes = LabFakes()
    with Lab(LabSpec(app="stateless", instances=3, run_dir=tmp_path), start_instance=fakes.start_instance,
             engine_factory=fakes.engine_factory) as lab:
        lab.start(backing=FAKE_BACKING)
        lines = fakes.journal.lines
        balancer = lines.index("balancer ")  # started empty, not after the instances with their list
        adds = [i for i, line in enumerate(lines) if line.startswith("add ")]
        starts = [i for i, line in enumerate(lines) if line.startswith("start ")]
        assert len(adds) == 3 and min(adds) > max(starts) and min(adds) > balancer
        steps = [what for _, what in lab.timeline]
        assert steps.index("instances and balancer starting") < steps.index("instances in rotation")


def test_a_lab_refuses_to_kill_or_restart_a_store_it_shares(tmp_path: Path) -> None:
    fakes = LabFakes()
    lab = Lab(LabSpec(app="stateless", instances=1, run_dir=tmp_path), start_instance=fakes.start_instance,
              engine_factory=fakes.engine_factory)
    lab.start(backing=FAKE_BACKING)
    try:
        lab.shared_stores = ("redis",)
        lab.stores["redis"] = lab.instances["app-1"].service  # stands for the run's Redis: nothing may signal it
        with pytest.raises(ControlError, match="own_stores"):
            lab.kill_store("redis")
        with pytest.raises(ControlError, match="own_stores"):
            lab.restart_store("redis")
        assert lab.instances["app-1"].service.process.alive()
    finally:
        lab.stores.clear()
        lab.stop()


def test_the_pool_admits_a_new_backend_at_once_without_waiting_for_its_checks_to_rise() -> None:
    async def scenario() -> tuple[bool, bool]:
        pool = Pool((), health_interval_s=60.0)  # no check will have run when we look
        pool.start_checks()
        try:
            pool.add("app-1", f"127.0.0.1:{free_port()}")
            admitted = [b.id for b in pool.eligible] == ["app-1"]
            await asyncio.sleep(0)  # let its first check start (it cannot have finished: nothing listens)
            still = [b.id for b in pool.eligible] == ["app-1"]
            return admitted, still
        finally:
            pool.stop_checks()

    admitted, still = asyncio.run(scenario())
    assert RISE > 1 and admitted and still


def test_statelab_lb_needs_a_backend_or_an_admin_port_to_add_them() -> None:
    result = subprocess.run([sys.executable, "-m", "statelab", "lb", "--port", "0"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert "--backend" in result.stderr and "--admin-port" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_lab_removes_the_scratch_directories_of_labs_that_died_without_tidying(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    dead_pid = int(done.stdout)  # that process has exited: its directory is an orphan
    orphan, mine, unowned = (tmp_path / "statelab-x-orphan", tmp_path / "statelab-x-mine",
                             tmp_path / "statelab-x-unowned")
    for path, owner in ((orphan, dead_pid), (mine, os.getpid()), (unowned, None)):
        path.mkdir()
        (path / "data").write_text("42 MB of a PostgreSQL cluster")
        if owner is not None:
            (path / OWNER_FILE).write_text(str(owner))
    fresh = owned_tempdir("statelab-x-", tmp_path)
    assert not orphan.exists() and mine.exists() and unowned.exists()  # never another's, never one without owner
    assert (fresh / OWNER_FILE).read_text() == str(os.getpid())
