"""Counting the processes a test leaves behind."""

from __future__ import annotations

import os

import psutil


def live_children() -> set[int]:
    """Return the pids of this test process's descendants that still run (zombies excluded)."""
    me = psutil.Process(os.getpid())
    return {p.pid for p in me.children(recursive=True) if p.is_running() and p.status() != psutil.STATUS_ZOMBIE}
