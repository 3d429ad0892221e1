"""Each instance's own local disk, and what the instances wrote to theirs.

On one machine every instance would share `/tmp` and the project directory, and the most common
local-disk bug (an upload saved under /tmp, read back by another instance) would hide. So every
process of every instance (each *generation*: a restart is a new machine, as a new container
would be) gets its own disk, by the strongest means the OS allows, probed once per check:

    private   a private mount namespace (`unshare -m` as root, `unshare -rm` otherwise): its own
              /tmp (a bind mount), and the project directory overlaid (overlayfs) so that the
              instance reads the project's files but everything it writes there stays its own
    tmp-only  a private mount namespace without overlayfs: its own /tmp; its own working
              directory (see below); absolute paths into the project directory are shared
    env-only  no namespace: its own TMPDIR and working directory; absolute paths (/tmp/...,
              the project directory) are shared, and the report says so

The working directory of the weaker modes is a fresh directory with a symlink to every entry of
the project directory: relative paths find the project's files, and files created at its top
level (or under an imported module's own path) are the instance's own.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal

from statelab.check.result import DiskFile

Mode = Literal["private", "tmp-only", "env-only"]
PROBE_TIMEOUT_S = 10.0
IGNORED_DIRS = frozenset(("__pycache__",))
IGNORED_SUFFIXES = (".pyc",)

# Positional arguments keep paths out of the script's text: no quoting to get wrong.
_PRIVATE = ('mount --make-rprivate / && mount -t overlay overlay -o "lowerdir=$1,upperdir=$2,workdir=$3" "$1" '
            '&& mount --bind "$4" /tmp && cd "$1" && shift 4 && exec "$@"')
_TMP_ONLY = 'mount --make-rprivate / && mount --bind "$1" /tmp && cd "$2" && shift 2 && exec "$@"'
NOTES = {
    "private": "each instance has its own /tmp and its own copy-on-write view of the project directory "
               "(private mount namespace)",
    "tmp-only": "each instance has its own /tmp and working directory (private mount namespace, no overlayfs); "
                "WARNING: absolute paths into the project directory are shared by all instances",
    "env-only": "no private mount namespace here: each instance has its own TMPDIR and working directory only; "
                "WARNING: absolute paths (/tmp/..., the project directory) are shared by all instances, so a "
                "local-disk bug that writes there may go unnoticed",
}


@dataclass
class Disk:
    """One generation of one instance: its directories, and when it started serving."""

    instance: str
    generation: int
    home: Path
    ready_at: float | None = None  # wall clock

    @property
    def tmp(self) -> Path:
        return self.home / "tmp"

    @property
    def upper(self) -> Path:
        return self.home / "upper"

    @property
    def work(self) -> Path:
        return self.home / "work"

    @property
    def cwd(self) -> Path:
        return self.home / "cwd"


def _unshare() -> list[str]:
    return ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-rm"]


def _symlink_farm(target: Path, project: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for entry in project.iterdir():
        if entry.name != ".statelab":
            (target / entry.name).symlink_to(entry)


@dataclass
class Disks:
    """The disks of one check: its isolation mode, every generation's directories, and the scan."""

    mode: Mode
    root: Path
    project: Path
    disks: list[Disk] = field(default_factory=list)

    @property
    def note(self) -> str:
        return NOTES[self.mode]

    def new(self, instance: str) -> Disk:
        """Make the directories of instance's next generation."""
        generation = 1 + sum(1 for d in self.disks if d.instance == instance)
        disk = Disk(instance, generation, self.root / f"{instance}.{generation}")
        for d in (disk.tmp, disk.upper, disk.work) if self.mode == "private" else (disk.tmp,):
            d.mkdir(parents=True)
        os.chmod(disk.tmp, 0o1777)
        if self.mode != "private":
            _symlink_farm(disk.cwd, self.project)
        self.disks.append(disk)
        return disk

    def wrap(self, disk: Disk, argv: list[str]) -> tuple[list[str], dict[str, str], Path]:
        """Return (argv, extra environment, working directory) that run argv on disk."""
        if self.mode == "private":
            return ([*_unshare(), "sh", "-c", _PRIVATE, "sh", str(self.project), str(disk.upper), str(disk.work),
                     str(disk.tmp), *argv], {"TMPDIR": "/tmp"}, self.project)
        if self.mode == "tmp-only":
            return ([*_unshare(), "sh", "-c", _TMP_ONLY, "sh", str(disk.tmp), str(disk.cwd), *argv],
                    {"TMPDIR": "/tmp"}, disk.cwd)
        return argv, {"TMPDIR": str(disk.tmp)}, disk.cwd

    def scan(self) -> tuple[DiskFile, ...]:
        """Return every file each generation left on its own disk, paths as that instance saw them."""
        files = []
        for disk in self.disks:
            for root, shown in self._roots(disk):
                for path, st in _walk(root):
                    ready = disk.ready_at if disk.ready_at is not None else float("inf")
                    files.append(DiskFile(disk.instance, disk.generation, str(shown / path.relative_to(root)),
                                          st.st_size, during_run=st.st_mtime >= ready))
        return tuple(files)

    def _roots(self, disk: Disk) -> list[tuple[Path, Path]]:
        if self.mode == "private":
            return [(disk.tmp, Path("/tmp")), (disk.upper, self.project)]
        tmp_shown = Path("/tmp") if self.mode == "tmp-only" else Path("$TMPDIR")
        return [(disk.tmp, tmp_shown), (disk.cwd, Path("."))]

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _walk(root: Path) -> Iterator[tuple[Path, os.stat_result]]:
    """Yield the regular files under root (no symlinks, no overlayfs whiteouts, no bytecode caches)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in IGNORED_DIRS and not os.path.islink(os.path.join(dirpath, d))]
        for name in filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            if stat.S_ISREG(st.st_mode) and not name.endswith(IGNORED_SUFFIXES):
                yield path, st


def _works(argv: list[str], cwd: Path) -> bool:
    try:
        return subprocess.run(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=PROBE_TIMEOUT_S).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def prepare(project: Path, forced: Mode | None = None) -> Disks:
    """Return the disks of a check, in the strongest mode that works here (probed with `true`).

    The project directory must not be under /tmp for the namespace modes (the instance's own /tmp
    would hide it), nor may the disks be inside the project (overlayfs refuses overlapping layers).
    """
    project = project.resolve()
    root = Path(tempfile.mkdtemp(prefix=f"statelab-check-{int(time.time())}-"))
    disks = Disks("env-only", root, project)
    if forced is not None:
        disks.mode = forced
        return disks
    tmp_root = Path(tempfile.gettempdir()).resolve()
    usable = shutil.which("unshare") and shutil.which("mount") and not project.is_relative_to(Path("/tmp"))
    usable = usable and not project.is_relative_to(tmp_root) and not root.resolve().is_relative_to(project)
    candidates: tuple[Mode, ...] = ("private", "tmp-only")  # the probe decides: overlayfs may be refused
    if usable:
        for mode in candidates:
            disks.mode = mode
            probe = disks.new("probe")
            ok = _works(disks.wrap(probe, ["true"])[0], project)
            disks.disks.clear()
            shutil.rmtree(probe.home, ignore_errors=True)
            if ok:
                return disks
    disks.mode = "env-only"
    return disks


__all__ = ["NOTES", "Disk", "Disks", "Mode", "prepare"]
