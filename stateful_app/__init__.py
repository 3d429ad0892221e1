"""The stateful app: a Flask shop that keeps sessions, carts, its cache, uploads and jobs in itself.

Run by gunicorn as `stateful_app:create_app()`, one worker with threads, so that one instance is
one memory. Everything that is not in PostgreSQL lives in this process (or on this host's disk):
that is what breaks when a load balancer spreads users over several instances.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

from flask import Flask, Response

from stateful_app import errors, views
from stateful_app.cache import ProductCache
from stateful_app.carts import CartStore
from stateful_app.config import Config
from stateful_app.db import Database
from stateful_app.jobs import JobRunner
from stateful_app.sessions import SessionStore
from stateful_app.uploads import UploadStore


@dataclass(frozen=True)
class Lab:
    """Everything one app instance owns, kept in app.extensions["lab"]."""

    config: Config
    db: Database
    sessions: SessionStore
    carts: CartStore
    cache: ProductCache
    uploads: UploadStore
    jobs: JobRunner

    def close(self) -> None:
        """Release the pool and the job threads (tests; gunicorn just exits)."""
        self.jobs.close()
        self.db.close()


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app; LAB_* keys in test_config override the environment, other keys go to app.config."""
    overrides = dict(test_config or {})
    config = Config.from_env({**os.environ, **{k: str(v) for k, v in overrides.items() if k.startswith("LAB_")}})
    app = Flask(__name__)
    app.config.update({k: v for k, v in overrides.items() if not k.startswith("LAB_")})
    app.config["MAX_CONTENT_LENGTH"] = config.max_upload_bytes
    uploads = UploadStore(config.upload_dir)
    app.extensions["lab"] = Lab(
        config=config,
        db=Database(config.database_url, config.store_timeout_s),
        sessions=SessionStore(config.session_ttl_s),
        carts=CartStore(),
        cache=ProductCache(config.cache_ttl_s),
        uploads=uploads,
        jobs=JobRunner(uploads, delay_s=config.job_delay_s),
    )
    errors.register(app)
    app.register_blueprint(views.bp)

    @app.after_request
    def served_by(response: Response) -> Response:
        response.headers["X-Served-By"] = config.instance_id
        return response

    return app
