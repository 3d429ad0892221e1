"""The stateless app: the same Flask shop, keeping nothing in itself between two requests.

Run by gunicorn as `stateless_app:create_app()`. Sessions, carts, the cache and the job queue live
in Redis, uploads in S3, the rest in PostgreSQL; so any instance can serve any request, and
instances can be added, removed or restarted without anyone noticing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

import redis
from flask import Flask, Response
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from stateless_app import errors, views
from stateless_app.cache import ProductCache
from stateless_app.carts import CartStore
from stateless_app.config import Config
from stateless_app.db import Database
from stateless_app.jobs import JobRunner
from stateless_app.sessions import SessionStore
from stateless_app.tokens import Tokens
from stateless_app.uploads import UploadStore, connect_s3


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
    redis: redis.Redis
    tokens: Tokens | None  # None in session mode

    def close(self) -> None:
        """Release the database pool and the Redis connections (tests; gunicorn just exits)."""
        self.jobs.close()
        self.db.close()
        self.redis.close()


def connect_redis(config: Config) -> redis.Redis:
    """Return a Redis client that fails fast when Redis is down (one immediate retry, no backoff).

    With LAB_REDIS_SENTINELS, the client asks the Sentinels where the master is, and asks again
    after a failed call: after a failover, the retry already reaches the new master.
    """
    timeouts = {"socket_timeout": config.store_timeout_s, "socket_connect_timeout": config.store_timeout_s}
    if config.redis_sentinels:
        sentinel = Sentinel(list(config.redis_sentinels), sentinel_kwargs=timeouts, **timeouts)
        return sentinel.master_for(config.redis_master, retry=Retry(NoBackoff(), 1), health_check_interval=30)
    return redis.Redis.from_url(config.redis_url, retry=Retry(NoBackoff(), 1), health_check_interval=30, **timeouts)


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app; LAB_* keys in test_config override the environment, other keys go to app.config."""
    overrides = dict(test_config or {})
    config = Config.from_env({**os.environ, **{k: str(v) for k, v in overrides.items() if k.startswith("LAB_")}})
    app = Flask(__name__)
    app.config.update({k: v for k, v in overrides.items() if not k.startswith("LAB_")})
    app.config["MAX_CONTENT_LENGTH"] = config.max_upload_bytes
    client = connect_redis(config)
    s3 = connect_s3(config.s3_endpoint, config.s3_access_key, config.s3_secret_key, config.store_timeout_s)
    presigner = s3 if config.s3_public_endpoint == config.s3_endpoint else connect_s3(
        config.s3_public_endpoint, config.s3_access_key, config.s3_secret_key, config.store_timeout_s)
    uploads = UploadStore(s3, config.s3_bucket, presigner, config.s3_presign_ttl_s, config.s3_read_cache_bytes)
    try:
        uploads.ensure_bucket()
    except Exception as exc:  # S3 may come up after the app; the first upload tries again
        app.logger.warning("s3 bucket %s not ready at start: %s", config.s3_bucket, exc)
    app.extensions["lab"] = Lab(
        config=config,
        db=Database(config.database_url, config.store_timeout_s),
        sessions=SessionStore(client, config.session_ttl_s),
        carts=CartStore(client, config.cart_mode),
        cache=ProductCache(client, config.cache_ttl_s, config.stampede_protection),
        uploads=uploads,
        jobs=JobRunner(client),
        redis=client,
        tokens=Tokens(client, config.secret_key, config.jwt_access_ttl_s, config.jwt_refresh_ttl_s,
                      config.jwt_revocation, config.jwt_reuse_detection) if config.auth_mode == "jwt" else None,
    )
    errors.register(app)
    app.register_blueprint(views.bp)

    @app.after_request
    def served_by(response: Response) -> Response:
        response.headers["X-Served-By"] = config.instance_id
        return response

    return app
