"""The run directories under the run root (`LAB_RUN_ROOT`, default `.statelab/runs`): sizes, which are in use, tidying.

`statelab clean` deletes old run directories and keeps the newest N, never one in use (the
running lab's, per its state file, or any a live process still has a file open in), and never
anything outside the run root: only its direct subdirectories, never through a symlink.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

log = logging.getLogger(__name__)

MB = 1024 * 1024


@dataclass(frozen=True)
class RunDir:
    path: Path
    bytes: int
    mtime: float

    @property
    def mb(self) -> float:
        return self.bytes / MB


@dataclass(frozen=True)
class CleanPlan:
    """What `statelab clean` deletes and keeps, and why each kept one stays."""

    root: Path
    doomed: tuple[RunDir, ...]
    kept: tuple[tuple[RunDir, str], ...]  # (run dir, why it stays)

    @property
    def doomed_mb(self) -> float:
        return sum(d.bytes for d in self.doomed) / MB


def dir_bytes(path: Path) -> int:
    """Return the bytes of the regular files under path (symlinks not followed)."""
    total = 0
    for base, _, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(base, name))
            except OSError:
                continue
            total += st.st_size
    return total


def run_dirs(root: Path) -> list[RunDir]:
    """Return the run directories directly under root, newest first (symlinks and files are not run dirs)."""
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        if child.is_symlink() or not child.is_dir():
            continue
        found.append(RunDir(child, dir_bytes(child), child.stat().st_mtime))
    return sorted(found, key=lambda d: d.mtime, reverse=True)


def running_lab_dir(state_file: Path) -> Path | None:
    """Return the run directory of the lab `statelab up` runs (from its state file), if that process is alive."""
    try:
        state = json.loads(state_file.read_text())
        pid, run_dir = int(state["pid"]), Path(state["run_dir"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return run_dir.resolve() if _alive(pid) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _paths_in_use(proc_root: Path = Path("/proc")) -> Iterator[str]:
    """Yield every live process's cwd and open files (Linux /proc; others' processes we may not read are skipped)."""
    for pid_dir in proc_root.iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            yield os.readlink(pid_dir / "cwd")
            for fd in (pid_dir / "fd").iterdir():
                yield os.readlink(fd)
        except OSError:
            continue


def dirs_in_use(candidates: Iterable[Path]) -> set[Path]:
    """Return the candidates some live process works in: its cwd or an open file lies inside (a run going on)."""
    wanted = [str(c.resolve()) for c in candidates]
    busy: set[Path] = set()
    for path in _paths_in_use():
        for c in wanted:
            if path == c or path.startswith(c + os.sep):
                busy.add(Path(c))
    return busy


def plan_clean(root: Path, keep: int, state_file: Path) -> CleanPlan:
    """Decide which run directories under root go: all but the newest `keep` and those in use."""
    dirs = run_dirs(root)
    lab = running_lab_dir(state_file)
    busy = dirs_in_use(d.path for d in dirs)
    doomed, kept = [], []
    for i, d in enumerate(dirs):
        real = d.path.resolve()
        if real == lab:
            kept.append((d, "the running lab's"))
        elif real in busy:
            kept.append((d, "in use by a running process"))
        elif i < keep:
            kept.append((d, "one of the newest"))
        else:
            doomed.append(d)
    return CleanPlan(root, tuple(doomed), tuple(kept))


def clean(plan: CleanPlan) -> None:
    """Delete the plan's doomed run directories (only direct subdirectories of its root)."""
    root = plan.root.resolve()
    for d in plan.doomed:
        real = d.path.resolve()
        if real.parent != root or d.path.is_symlink():  # never outside the run root
            log.warning("not deleting %s: not a run directory under %s", d.path, root)
            continue
        shutil.rmtree(real, ignore_errors=True)


__all__ = ["CleanPlan", "RunDir", "clean", "dir_bytes", "dirs_in_use", "plan_clean", "run_dirs", "running_lab_dir"]
