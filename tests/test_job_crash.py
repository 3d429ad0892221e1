"""A job's worker killed with SIGKILL mid-job: the stateless queue runs it again within seconds (at
least once) and its effect happens once (idempotent); the stateful in-process queue loses it.

The stateless side runs on a Redis of its own, so that no other worker of the test session can take
the job; LAB_JOB_DELAY_S keeps each job running after its effect, the window in which it is killed.
"""

from __future__ import annotations

import io
import signal
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import redis
import requests
from flask.testing import FlaskClient
from rq.job import Job

from statelab import services
from statelab.config import BackingUrls
from statelab.seed import SEED_PASSWORD
from tests.support.apps import app_test_config, login, make_app

pytestmark = pytest.mark.live
JOB_DELAY_S = 2.0
REDELIVERY_LIMIT_S = 8.0  # heartbeat lapse (3 s) + maintenance (1 s), with room for a busy machine


def _until(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (found := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return found


class Queue:
    """A Redis of its own, an app (Flask test client) and two workers on it."""

    def __init__(self, stack: ExitStack, run_dir: Path, backing: BackingUrls, **env: str) -> None:
        self.redis = services.start_redis(run_dir, name="redis-jobs").wait_ready()
        stack.callback(self.redis.stop)
        urls = BackingUrls(backing.database_url, self.redis.url, backing.s3_endpoint, backing.s3_access_key,
                           backing.s3_secret_key)
        config = app_test_config("stateless", urls, run_dir / "uploads", **env)
        self.app = make_app("stateless", config)
        stack.callback(self.app.extensions["lab"].close)
        worker_env = {k: str(v) for k, v in config.items() if k.startswith("LAB_")}
        self.workers = {}
        for name in ("worker-a", "worker-b"):
            worker = services.start_worker(name, run_dir, worker_env)
            stack.callback(worker.stop)
            self.workers[name] = worker
        self.store = redis.Redis.from_url(self.redis.url, socket_timeout=2)

    def worker_of(self, job_id: str) -> services.Service:
        name = Job.fetch(job_id, connection=self.store).worker_name or ""
        return next(w for n, w in self.workers.items() if name.startswith(n + "-"))


@pytest.fixture
def queue_factory(backing: BackingUrls, tmp_path: Path) -> Iterator[Callable[..., Queue]]:
    with ExitStack() as stack:
        yield lambda **env: Queue(stack, tmp_path, backing, **env)


def _submit(client: FlaskClient, username: str) -> str:
    login(client, username)
    key = client.post("/uploads", data={"file": (io.BytesIO(b"a b c\nd"), "a.txt")}).get_json()["key"]
    response = client.post(f"/uploads/{key}/process")
    assert response.status_code == 202
    return str(response.get_json()["job_id"])


def _kill_after_the_effect(queue: Queue, client: FlaskClient, job_id: str) -> tuple[float, dict[str, Any]]:
    """SIGKILL the worker running job_id once its effect is applied; return (seconds to re-delivery, final status)."""
    _until(lambda: client.get(f"/jobs/{job_id}").get_json()["effects"] == 1, 10, "the job's effect")
    victim = queue.worker_of(job_id)
    victim.process.signal(signal.SIGKILL)
    killed_at = time.monotonic()
    _until(lambda: client.get(f"/jobs/{job_id}").get_json()["attempts"] == 2, 30, "the job to run again")
    redelivered_s = time.monotonic() - killed_at
    done = _until(lambda: (body := client.get(f"/jobs/{job_id}").get_json())["status"] in ("done", "failed") and body,
                  30, "the job to finish")
    assert queue.worker_of(job_id) is not victim
    return redelivered_s, done


def test_a_killed_workers_job_runs_again_and_its_effect_happens_once(queue_factory: Callable[..., Queue],
                                                                    username: str,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    queue = queue_factory(LAB_JOB_DELAY_S=str(JOB_DELAY_S))
    client = queue.app.test_client()
    job_id = _submit(client, username)
    redelivered_s, done = _kill_after_the_effect(queue, client, job_id)
    assert done["status"] == "done" and done["result"]["words"] == 4
    assert done["attempts"] == 2 and done["effects"] == 1  # ran twice, took effect once
    assert redelivered_s < REDELIVERY_LIMIT_S
    with capsys.disabled():
        print(f"\nworker SIGKILLed mid-job: re-delivered after {redelivered_s:.2f} s, attempts 2, effects 1")


def test_without_idempotence_the_effect_happens_twice(queue_factory: Callable[..., Queue], username: str) -> None:
    queue = queue_factory(LAB_JOB_DELAY_S=str(JOB_DELAY_S), LAB_JOB_IDEMPOTENT="0")
    client = queue.app.test_client()
    job_id = _submit(client, username)
    _, done = _kill_after_the_effect(queue, client, job_id)
    assert done["status"] == "done" and done["attempts"] == 2 and done["effects"] == 2


def test_the_stateful_in_process_queue_loses_a_job_when_its_instance_dies(backing: BackingUrls, tmp_path: Path,
                                                                       username: str) -> None:
    env = {**backing.app_env(), "LAB_UPLOAD_DIR": str(tmp_path / "uploads"), "LAB_JOB_DELAY_S": str(JOB_DELAY_S)}
    app = services.start_app("stateful", "app-jobs", tmp_path, env).wait_ready()
    port = int(app.extra["port"])
    try:
        http = requests.Session()
        assert http.post(f"{app.url}/login", json={"username": username, "password": SEED_PASSWORD}, timeout=5).ok
        key = http.post(f"{app.url}/uploads", files={"file": ("a.txt", b"a b c")}, timeout=5).json()["key"]
        job_id = http.post(f"{app.url}/uploads/{key}/process", timeout=5).json()["job_id"]
        _until(lambda: http.get(f"{app.url}/jobs/{job_id}", timeout=5).json()["effects"] == 1, 10, "the job's effect")
        app.process.signal(signal.SIGKILL)
        app.stop()  # reaps it
        app = services.start_app("stateful", "app-jobs", tmp_path, env, port=port).wait_ready()
        time.sleep(JOB_DELAY_S + 0.5)  # long after the job would have finished
        assert requests.get(f"{app.url}/jobs/{job_id}", timeout=5).status_code == 404  # lost, with its effect
    finally:
        app.stop()
