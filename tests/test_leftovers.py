"""What runs leave behind: nothing of SeaweedFS in /tmp, no uploads after a case, and `statelab clean` for the rest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from statelab import runs, services
from statelab.runner import CASE_DATA_DIRS, run_case
from statelab.scenario import AppCase, CaseContext, Measurements, Profile, Verdict
from statelab.topology import Lab, LabSpec


def _weed_leftovers(ports: set[int], pid: int, tmp: Path = Path("/tmp")) -> list[str]:
    """Return /tmp entries SeaweedFS made for this server: sockets named by its ports, logs named by its pid.

    Other labs on this machine may write /tmp too, so only this server's names count.
    """
    names = []
    for entry in tmp.iterdir():
        n = entry.name
        if n.startswith("seaweedfs-") and n.endswith(".sock") and int(n.rsplit("-", 1)[1].split(".")[0]) in ports:
            names.append(n)
        elif n.startswith("weed.") and n.endswith(f".{pid}"):
            names.append(n)
    return sorted(names)


@pytest.mark.live
def test_a_stateless_lab_leaves_nothing_of_seaweedfs_in_tmp(tmp_path: Path) -> None:
    lab = Lab(LabSpec(app="stateless", instances=1, run_dir=tmp_path / "run", job_workers=0))
    try:
        lab.start()
        s3 = lab.stores["s3"]
        ports, pid = set(json.loads(s3.extra["ports"]).values()), s3.process.pid
        assert pid is not None
        running = _weed_leftovers(ports, pid)
        assert any(n.startswith("seaweedfs-master-grpc-") for n in running), running  # the names we match are real
    finally:
        lab.stop()
    assert _weed_leftovers(ports, pid) == []
    assert "weed" in (tmp_path / "run" / "logs" / "s3.log").read_text()  # its log went to the run directory


def test_removing_weed_sockets_touches_only_this_servers_sockets(tmp_path: Path) -> None:
    import socket

    mine, other = tmp_path / "seaweedfs-master-grpc-4001.sock", tmp_path / "seaweedfs-master-grpc-4002.sock"
    for path in (mine, other):
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(path))
    regular = tmp_path / "seaweedfs-notes-4001.sock"
    regular.write_text("not a socket")
    assert services.remove_weed_sockets([4001], tmp_path) == [mine]
    assert not mine.exists() and other.exists() and regular.exists()


class _Uploader:
    """A stand-in scenario that stores what a lab stores: uploads per instance, S3 data, a database, logs."""

    name = "uploader"

    def run(self, ctx: CaseContext) -> Measurements:
        for part in ("uploads/app-1/a.txt", "s3/volume.dat", "postgres/data/base", "logs/app-1.log"):
            (ctx.run_dir / part).parent.mkdir(parents=True, exist_ok=True)
            (ctx.run_dir / part).write_text("x" * 1000)
        return Measurements(())

    def verdict(self, m: Measurements) -> Verdict:
        return Verdict("survived", "")


def test_a_case_deletes_the_uploads_and_data_its_lab_stored_and_keeps_its_logs(tmp_path: Path) -> None:
    ctx = CaseContext(app=AppCase("stateless"), profile=Profile(1, 1, 1.0), seed=1, run_dir=tmp_path,
                      progress=_Quiet())
    run_case(_Uploader(), ctx)  # type: ignore[arg-type]
    assert [d for d in CASE_DATA_DIRS if (tmp_path / d).exists()] == []
    assert (tmp_path / "logs" / "app-1.log").exists()


class _Quiet:
    def phase(self, text: str) -> None:
        pass

    def watch(self, counters: object) -> None:
        pass


def _run_dir(root: Path, name: str, kb: int, age_s: float) -> Path:
    d = root / name
    (d / "logs").mkdir(parents=True)
    (d / "logs" / "x.log").write_bytes(b"x" * kb * 1024)
    t = time.time() - age_s
    os.utime(d, (t, t))
    return d


def test_clean_keeps_the_newest_the_running_lab_and_dirs_in_use(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    old, used, lab, new = (_run_dir(root, n, 100, age) for n, age in
                           (("old", 400), ("used", 300), ("lab", 200), ("new", 100)))
    state = tmp_path / "lab.json"
    state.write_text(json.dumps({"pid": os.getpid(), "run_dir": str(lab)}))
    outside = tmp_path / "precious"
    outside.mkdir()
    (root / "link").symlink_to(outside)  # a symlink in the run root is not a run dir: never followed
    sleeper = subprocess.Popen(["sleep", "30"], cwd=used)  # a process working in a run dir: a run going on
    try:
        plan = runs.plan_clean(root, keep=1, state_file=state)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert [d.path.name for d in plan.doomed] == ["old"]
    assert {d.path.name: why for d, why in plan.kept} == {
        "new": "one of the newest", "lab": "the running lab's", "used": "in use by a running process"}
    assert plan.doomed_mb == pytest.approx(100 / 1024, rel=0.01)
    runs.clean(plan)
    assert not old.exists() and used.exists() and lab.exists() and new.exists() and outside.exists()


def test_a_dead_labs_state_file_protects_nothing(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    state = tmp_path / "lab.json"
    state.write_text(json.dumps({"pid": dead.pid, "run_dir": str(tmp_path)}))
    assert runs.running_lab_dir(state) is None
    assert runs.running_lab_dir(tmp_path / "missing.json") is None


def test_statelab_clean_dry_run_then_clean(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    for name, age in (("20261129-100000-run-all", 300), ("20261129-110000-run-all", 200),
                      ("20261129-120000-up-stateful", 100)):
        _run_dir(root, name, 2048, age)
    env = {**os.environ, "LAB_RUN_ROOT": str(root)}
    cmd = [sys.executable, "-m", "statelab", "clean", "--keep", "1", "--state-file", str(tmp_path / "none.json")]
    dry = subprocess.run([*cmd, "--dry-run"], capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert "would delete 20261129-100000-run-all" in dry.stdout and "2.0 MB" in dry.stdout
    assert "Would delete 2 run directories (4.0 MB)" in " ".join(dry.stdout.split())
    assert len(list(root.iterdir())) == 3
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path)
    assert done.returncode == 0 and "Deleted 2 run directories" in " ".join(done.stdout.split()), done.stdout
    assert [d.name for d in root.iterdir()] == ["20261129-120000-up-stateful"]
