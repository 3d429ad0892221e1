"""Background jobs: a thread pool in this process and a dict of job records.

The queue and its results live and die with this process: a job queued here is unknown to other
instances, it can only read uploads on this instance's disk, and a restart or a crash loses every
job, the running ones included. Nothing runs a job twice, so its effect needs no guard; nothing
runs a lost job again either.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from stateful_app.uploads import UploadStore

JOB_ID_PATTERN = re.compile(r"[0-9a-f]{32}")


def summarise(data: bytes) -> dict[str, Any]:
    """Return the line count, word count, size and sha256 of an upload (the job's work)."""
    return {"lines": data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0),
            "words": len(data.split()), "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def process_upload(uploads: UploadStore, key: str, owner_id: int) -> dict[str, Any]:
    """Summarise an upload; it must be on this instance's disk."""
    data = uploads.read(key, owner_id)
    if data is None:
        raise FileNotFoundError(f"upload {key} is not on this instance's disk")
    return summarise(data)


class JobRunner:
    """Runs jobs on worker threads of this process and remembers their status and result."""

    def __init__(self, uploads: UploadStore, workers: int = 2, delay_s: float = 0.0) -> None:
        self._uploads = uploads
        self._delay_s = delay_s
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lab-job")
        self._jobs: dict[str, dict[str, Any]] = {}
        self._effects: dict[str, int] = {}  # the job's effect (see the stateless app), in this process
        self._lock = threading.Lock()
        self.queued = 0

    def submit_process(self, key: str, owner_id: int) -> str:
        """Queue the processing of an upload and return the new job's id."""
        job_id = secrets.token_hex(16)
        with self._lock:
            self._jobs[job_id] = {"status": "queued", "result": None}
            self.queued += 1
        self._executor.submit(self._run, job_id, key, owner_id)
        return job_id

    def _run(self, job_id: str, key: str, owner_id: int) -> None:
        self._set(job_id, "running", None)
        try:
            summary = process_upload(self._uploads, key, owner_id)
            with self._lock:
                self._effects[job_id] = self._effects.get(job_id, 0) + 1
            time.sleep(self._delay_s)  # LAB_JOB_DELAY_S: a window in which a crash loses the job
            self._set(job_id, "done", summary)
        except Exception as exc:  # a failed job is a result, not a crash of the worker thread
            self._set(job_id, "failed", {"error": f"{type(exc).__name__}: {exc}"})

    def _set(self, job_id: str, status: str, result: Any) -> None:
        with self._lock:
            self._jobs[job_id] = {"status": status, "result": result}

    def status(self, job_id: str) -> dict[str, Any] | None:
        """Return {"status", "result", "attempts", "effects"} of a job this process knows, else None."""
        if not JOB_ID_PATTERN.fullmatch(job_id):
            return None
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            return {**job, "attempts": 0 if job["status"] == "queued" else 1, "effects": self._effects.get(job_id, 0)}

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
