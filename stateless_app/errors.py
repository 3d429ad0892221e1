"""JSON errors: every HTTP error and every unexpected exception answers {"error": "..."}.

    Exception
     +-- HTTPException               its own status (400, 401, 404, 405, 413, ...)
     +-- psycopg.OperationalError    503 "postgres unreachable: ..." (PoolTimeout is one too)
     +-- redis ConnectionError, TimeoutError    503 "redis unreachable: ..."
     +-- urllib3 HTTPError, minio ServerError   503 "s3 unreachable: ..." (S3 down or answering 5xx)
     +-- anything else               500 "internal error" (traceback logged, never sent)
"""

from __future__ import annotations

import psycopg
import redis
import urllib3
from flask import Flask, Response, current_app, jsonify
from minio.error import MinioException, S3Error
from werkzeug.exceptions import HTTPException


def error_response(status: int, message: str) -> tuple[Response, int]:
    """Return the contract's error body with a status."""
    return jsonify(error=message), status


def _http_error(exc: HTTPException) -> HTTPException | tuple[Response, int]:
    if exc.code is None or exc.code < 400:  # routing redirects are not errors
        return exc
    response, status = error_response(exc.code, exc.description or exc.name)
    # Keep the headers the error comes with, such as the Allow of a 405 (RFC 9110); the body is ours.
    response.headers.extend((k, v) for k, v in exc.get_headers() if k.lower() != "content-type")
    return response, status


def store_down(store: str, exc: Exception) -> tuple[Response, int]:
    """Return the 503 that names the unreachable store."""
    first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    current_app.logger.warning("%s unreachable: %s", store, first_line)
    return error_response(503, f"{store} unreachable: {first_line}")


def _s3_down(exc: Exception) -> tuple[Response, int]:
    if isinstance(exc, S3Error):  # S3 answered, but not as the app expects (a denied or missing bucket)
        return store_down("s3", Exception(f"{exc.code}: {exc.message}"))
    return store_down("s3", exc)


def _unexpected(exc: Exception) -> tuple[Response, int]:
    current_app.logger.exception("unexpected error")
    return error_response(500, "internal error")


def register(app: Flask) -> None:
    """Install the JSON error handlers on app."""
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(psycopg.OperationalError, lambda exc: store_down("postgres", exc))
    app.register_error_handler(redis.ConnectionError, lambda exc: store_down("redis", exc))
    app.register_error_handler(redis.TimeoutError, lambda exc: store_down("redis", exc))
    app.register_error_handler(urllib3.exceptions.HTTPError, _s3_down)
    app.register_error_handler(MinioException, _s3_down)
    app.register_error_handler(Exception, _unexpected)
