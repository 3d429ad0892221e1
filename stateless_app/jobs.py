"""Background jobs: RQ jobs in Redis (queue statelab-jobs), run by separate worker processes.

Any instance can queue a job and any instance can report on it; the worker reads the upload from
S3, so it does not matter which instance received the upload. Workers run `process_upload`.

Delivery is at least once: a worker that dies mid-job stops its heartbeat, RQ then finds the job
abandoned and, since it was queued with retries, queues it again (here within seconds, see
LabWorker). So a job may run twice, and its effect must be idempotent: it is applied once per job
id (LAB_JOB_IDEMPOTENT=0 shows what happens otherwise).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import threading
import time
from typing import Any, Sequence

import redis
from rq import Queue, Retry, SimpleWorker, get_current_job
from rq.exceptions import NoSuchJobError
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.worker import WorkerStatus

from stateless_app.config import Config
from stateless_app.uploads import UploadStore, connect_s3

JOB_QUEUE = "statelab-jobs"
JOB_ID_PATTERN = re.compile(r"[0-9a-f]{32}")
JOB_TIMEOUT_S = 60
JOB_RETRIES = 2  # re-deliveries after a crash (or a failure) before the job counts as failed
RESULT_TTL_S = 3600
HEARTBEAT_INTERVAL_S = 1.0
HEARTBEAT_TTL_S = 3  # a job whose worker stopped beating this long is abandoned
MAINTENANCE_INTERVAL_S = 1  # how often an idle worker looks for abandoned jobs
STATUS_NAMES = {JobStatus.STARTED: "running", JobStatus.FINISHED: "done", JobStatus.FAILED: "failed",
                JobStatus.STOPPED: "failed", JobStatus.CANCELED: "failed"}
# The job's effect stands for anything that must happen once per job (charge a card, send a mail):
# a counter per job. Idempotent: a marker set in the same atomic script makes a second run a no-op.
APPLY_EFFECT = """
if ARGV[1] == '1' and not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[2]) then return 0 end
redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
"""

log = logging.getLogger(__name__)


def summarise(data: bytes) -> dict[str, Any]:
    """Return the line count, word count, size and sha256 of an upload (the job's work)."""
    return {"lines": data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0),
            "words": len(data.split()), "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _key(job_id: str, what: str) -> str:
    return f"job:{job_id}:{what}"


def process_upload(key: str, owner_id: int) -> dict[str, Any]:
    """Summarise an upload and apply the job's effect; runs in a worker, configured by the same LAB_* variables.

    With LAB_JOB_DELAY_S the job then lingers: a worker killed in that window has applied the
    effect but not reported the job done, which is when at-least-once delivery runs it again.
    """
    config = Config.from_env(os.environ)
    job = get_current_job()
    assert job is not None, "process_upload runs inside an RQ worker"
    store = job.connection
    store.incr(_key(job.id, "attempts"))
    store.expire(_key(job.id, "attempts"), RESULT_TTL_S)
    client = connect_s3(config.s3_endpoint, config.s3_access_key, config.s3_secret_key, config.store_timeout_s)
    data = UploadStore(client, config.s3_bucket).read(key, owner_id)
    if data is None:
        raise FileNotFoundError(f"upload {key} is not in bucket {config.s3_bucket}")
    summary = summarise(data)
    store.eval(APPLY_EFFECT, 2, _key(job.id, "once"), _key(job.id, "effects"),
               "1" if config.job_idempotent else "0", RESULT_TTL_S)
    if config.job_delay_s:
        time.sleep(config.job_delay_s)
    return summary


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
                            result_ttl=RESULT_TTL_S, failure_ttl=RESULT_TTL_S, retry=Retry(max=JOB_RETRIES))
        with self._lock:
            self.queued += 1
        return job_id

    def status(self, job_id: str) -> dict[str, Any] | None:
        """Return {"status", "result", "attempts", "effects"} of a job, else None."""
        if not JOB_ID_PATTERN.fullmatch(job_id):
            return None
        try:
            job = Job.fetch(job_id, connection=self._redis)
        except NoSuchJobError:
            return None
        attempts, effects = (int(v or 0) for v in self._redis.mget(_key(job_id, "attempts"), _key(job_id, "effects")))
        status = STATUS_NAMES.get(job.get_status(), "queued")
        result: Any = None
        if status == "done":
            result = job.return_value()
        elif status == "failed":
            latest = job.latest_result()
            last_line = (latest.exc_string or "").strip().splitlines()[-1:] if latest else []
            result = {"error": last_line[0] if last_line else "job failed"}
        return {"status": status, "result": result, "attempts": attempts, "effects": effects}

    def close(self) -> None:
        """Nothing to release: the queue lives in Redis."""


class LabWorker(SimpleWorker):
    """An RQ worker (no fork per job) whose jobs come back within seconds if it dies mid-job.

    RQ already re-queues an abandoned job that has retries left (StartedJobRegistry.cleanup), but a
    SimpleWorker's job is only abandoned after its timeout + 60 s, and maintenance runs every 10
    minutes. Here a thread keeps the job's heartbeat while it runs (lapsing HEARTBEAT_TTL_S after
    the worker dies), and idle workers run maintenance every MAINTENANCE_INTERVAL_S.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("maintenance_interval", MAINTENANCE_INTERVAL_S)
        super().__init__(*args, **kwargs)

    @property
    def dequeue_timeout(self) -> int:
        return 1  # wake up every second, so that maintenance can run

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return HEARTBEAT_TTL_S

    def execute_job(self, job: Job, queue: Queue) -> None:
        execution = self.prepare_execution(job)
        stop = threading.Event()
        beat = threading.Thread(target=self._beat, args=(job, execution, stop), name="job-heartbeat", daemon=True)
        beat.start()
        try:
            self.perform_job(job, queue, execution)
        finally:
            stop.set()
            beat.join()
        self.set_state(WorkerStatus.IDLE)

    def _beat(self, job: Job, execution: Execution, stop: threading.Event) -> None:
        while not stop.wait(HEARTBEAT_INTERVAL_S):
            try:
                self.maintain_heartbeats(job, execution)
            except redis.RedisError as exc:  # Redis away for a moment: the next beat tries again
                log.warning("job %s: heartbeat failed: %s", job.id, exc)


def run_worker(argv: Sequence[str]) -> int:
    """Run a LabWorker named argv[0] until SIGTERM; it finds Redis as the app does (URL or Sentinel)."""
    from stateless_app import connect_redis

    config = Config.from_env(os.environ)
    connection = connect_redis(config)
    name = argv[0] if argv else f"worker-{os.getpid()}"
    worker = LabWorker([Queue(JOB_QUEUE, connection=connection)], connection=connection, name=name)
    worker.work(logging_level="WARNING")
    return 0

