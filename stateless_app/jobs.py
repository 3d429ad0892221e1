"""Background jobs: RQ jobs in Redis (queue statelab-jobs), run by separate worker processes.

Any instance can queue a job and any instance can report on it; the worker reads the upload from
S3, so it does not matter which instance received the upload. Workers run `process_upload`.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import threading
from typing import Any

import redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from stateless_app.config import Config
from stateless_app.uploads import UploadStore, connect_s3

JOB_QUEUE = "statelab-jobs"
JOB_ID_PATTERN = re.compile(r"[0-9a-f]{32}")
JOB_TIMEOUT_S = 60
RESULT_TTL_S = 3600
STATUS_NAMES = {JobStatus.STARTED: "running", JobStatus.FINISHED: "done", JobStatus.FAILED: "failed",
                JobStatus.STOPPED: "failed", JobStatus.CANCELED: "failed"}


def summarise(data: bytes) -> dict[str, Any]:
    """Return the line count, word count, size and sha256 of an upload (the job's work)."""
    return {"lines": data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0),
            "words": len(data.split()), "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def process_upload(key: str, owner_id: int) -> dict[str, Any]:
    """Summarise an upload; runs in an RQ worker, which finds S3 through the same LAB_* variables."""
    config = Config.from_env(os.environ)
    client = connect_s3(config.s3_endpoint, config.s3_access_key, config.s3_secret_key, config.store_timeout_s)
    data = UploadStore(client, config.s3_bucket).read(key, owner_id)
    if data is None:
        raise FileNotFoundError(f"upload {key} is not in bucket {config.s3_bucket}")
    return summarise(data)


class JobRunner:
    """Queues jobs on RQ and reads their status back from Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._queue = Queue(JOB_QUEUE, connection=client)
        self._lock = threading.Lock()
        self.queued = 0

    def submit_process(self, key: str, owner_id: int) -> str:
        """Queue the processing of an upload and return the new job's id."""
        job_id = secrets.token_hex(16)
        self._queue.enqueue(process_upload, key, owner_id, job_id=job_id, job_timeout=JOB_TIMEOUT_S,
                            result_ttl=RESULT_TTL_S, failure_ttl=RESULT_TTL_S)
        with self._lock:
            self.queued += 1
        return job_id

    def status(self, job_id: str) -> dict[str, Any] | None:
        """Return {"status", "result"} of a job, else None."""
        if not JOB_ID_PATTERN.fullmatch(job_id):
            return None
        try:
            job = Job.fetch(job_id, connection=self._redis)
        except NoSuchJobError:
            return None
        status = STATUS_NAMES.get(job.get_status(), "queued")
        if status == "done":
            return {"status": status, "result": job.return_value()}
        if status == "failed":
            latest = job.latest_result()
            last_line = (latest.exc_string or "").strip().splitlines()[-1:] if latest else []
            return {"status": status, "result": {"error": last_line[0] if last_line else "job failed"}}
        return {"status": status, "result": None}

    def close(self) -> None:
        """Nothing to release: the queue lives in Redis."""
