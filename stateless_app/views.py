"""The HTTP contract: the stateful app's routes, in the same order and with the same JSON, then the JWT routes.

Views stay short: they check input, call the one module that owns each piece of state, and shape
the answer. Errors are raised with abort() and rendered as JSON by errors.py.
"""

from __future__ import annotations

import os
from importlib import resources
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Response, abort, current_app, jsonify, request

from stateless_app import db
from stateless_app.errors import error_response
from stateless_app.sessions import COOKIE_NAME

if TYPE_CHECKING:
    from stateless_app import Lab
    from stateless_app.tokens import Tokens

bp = Blueprint("lab", __name__)
MAX_QTY = 100


def _lab() -> "Lab":
    return current_app.extensions["lab"]  # type: ignore[no-any-return]


def _json_object() -> dict[str, Any]:
    body = request.get_json()  # 415 unless the body is declared JSON, 400 when it does not parse
    if not isinstance(body, dict):
        abort(400, "expected a JSON object body")
    return body


def _positive_int(body: dict[str, Any], name: str, high: int = db.PG_INT_MAX) -> int:
    value = body.get(name)
    if type(value) is float and value.is_integer():  # JSON has one number type: 2.0 is the integer 2
        value = int(value)
    if type(value) is not int or not 1 <= value <= high:  # bool is an int subclass: refuse it too
        abort(400, f"{name} must be an integer in 1..{high}")
    return value


def _bearer() -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _current_user() -> dict[str, Any] | None:
    lab = _lab()
    bearer = _bearer()
    if lab.tokens is not None and bearer is not None:  # jwt mode: no lookup but the denylist, if any
        return lab.tokens.user_of(bearer)
    return lab.sessions.get(request.cookies.get(COOKIE_NAME))


def _require_user() -> dict[str, Any]:
    user = _current_user()
    if user is None:
        abort(401, "log in first")
    return user


@bp.post("/login")
def login() -> Response:
    body = _json_object()
    username, password = body.get("username"), body.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        abort(400, "username and password must be strings")
    user = db.find_user(_lab().db, username, password)
    if user is None:
        abort(401, "bad username or password")
    tokens = _lab().tokens
    if tokens is not None:  # jwt mode: the client carries the proof, no session is stored
        return jsonify(user=user, **tokens.issue(user))
    response = jsonify(user=user)
    # No Secure flag: the lab serves plain HTTP on loopback. The cookie holds only an opaque id.
    response.set_cookie(COOKIE_NAME, _lab().sessions.create(user), max_age=_lab().sessions.ttl_s,
                        httponly=True, samesite="Lax")
    return response


@bp.post("/logout")
def logout() -> Response:
    tokens, bearer = _lab().tokens, _bearer()
    if tokens is not None and bearer is not None:
        tokens.logout(bearer)
    _lab().sessions.delete(request.cookies.get(COOKIE_NAME))
    response = Response(status=204)
    response.delete_cookie(COOKIE_NAME, httponly=True, samesite="Lax")
    return response


@bp.get("/me")
def me() -> Response:
    return jsonify(user=_require_user())


@bp.get("/products/<int:product_id>")
def product(product_id: int) -> Response:
    lab = _lab()
    found = lab.cache.get_or_load(product_id, lambda: db.get_product(lab.db, product_id))
    if found is None:
        abort(404, f"no product {product_id}")
    return jsonify(found)


@bp.get("/cart")
def cart() -> Response:
    return jsonify(items=_lab().carts.items(_require_user()["id"]))


@bp.post("/cart/items")
def add_to_cart() -> tuple[Response, int]:
    user = _require_user()
    body = _json_object()
    product_id, qty = _positive_int(body, "product_id"), _positive_int(body, "qty", MAX_QTY)
    if not db.product_exists(_lab().db, product_id):
        abort(404, f"no product {product_id}")
    return jsonify(items=_lab().carts.add(user["id"], product_id, qty)), 201


@bp.post("/uploads")
def upload() -> tuple[Response, int]:
    user = _require_user()
    if request.mimetype != "multipart/form-data":
        abort(415, "expected a multipart/form-data body")
    file = request.files.get("file")
    if file is None:
        abort(400, "expected a multipart field named 'file'")
    stored = _lab().uploads.save(user["id"], file.filename, file.read())
    return jsonify(key=stored.key, size=stored.size, sha256=stored.sha256), 201


@bp.get("/uploads/<key>")
def download(key: str) -> Response:
    lab, user = _lab(), _require_user()
    if lab.config.s3_downloads == "presigned":  # the bytes go from S3 to the client, not through us
        url = lab.uploads.presigned_url(key, user["id"])
        if url is None:
            abort(404, "no such upload")
        response = jsonify(url=url)
        response.status_code, response.headers["Location"] = 302, url
        return response
    data = lab.uploads.read(key, user["id"])
    if data is None:
        abort(404, "no such upload")
    return Response(data, mimetype="application/octet-stream")


@bp.post("/uploads/<key>/process")
def process(key: str) -> tuple[Response, int]:
    user = _require_user()
    if not _lab().uploads.exists(key, user["id"]):
        abort(404, "no such upload")
    return jsonify(job_id=_lab().jobs.submit_process(key, user["id"])), 202


@bp.get("/jobs/<job_id>")
def job(job_id: str) -> Response:
    found = _lab().jobs.status(job_id)
    if found is None:
        abort(404, f"no job {job_id}")
    return jsonify(found)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> Response | tuple[Response, int]:
    for store, ping in (("postgres", lambda: db.ping(_lab().db)), ("redis", _lab().redis.ping),
                        ("s3", _lab().uploads.ping)):
        try:
            ping()
        except Exception as exc:  # any failure means "not ready"; the message names the store
            return error_response(503, f"{store} unreachable: {exc}")
    return jsonify(status="ok")


@bp.get("/stats")
def stats() -> Response:
    lab = _lab()
    return jsonify(instance_id=lab.config.instance_id, pid=os.getpid(), app="stateless",
                   sessions_in_memory=lab.sessions.count(), cache_hits=lab.cache.hits,
                   cache_misses=lab.cache.misses, db_queries=lab.db.queries,
                   db_time_ms=round(lab.db.time_ms, 3), local_files=lab.uploads.count(),
                   jobs_queued=lab.jobs.queued)


@bp.get("/openapi.json")
def openapi() -> Response:
    # The contract as OpenAPI 3.1, kept next to this module as package data (tests/test_openapi.py checks it).
    return Response(resources.files(__package__).joinpath("openapi.json").read_bytes(), mimetype="application/json")


# --- stateless only: the JWT mode (see tokens.py) -----------------------------------------------

def _require_tokens() -> "Tokens":
    tokens = _lab().tokens
    if tokens is None:
        abort(404, "token routes exist only in jwt mode (LAB_AUTH_MODE=jwt)")
    return tokens


@bp.post("/token/refresh")
def refresh_token() -> Response:
    tokens = _require_tokens()
    token = _json_object().get("refresh_token")
    if not isinstance(token, str) or not token:
        abort(400, "refresh_token must be a non-empty string")
    user, pair = tokens.refresh(token)
    return jsonify(user=user, **pair)


@bp.post("/token/revoke")
def revoke_token() -> Response:
    tokens = _require_tokens()
    body = _json_object() if request.get_data(cache=True) else {}  # a body, if any, is a JSON object
    token = body["token"] if "token" in body else _bearer()
    if token is None:
        abort(401, "no token: give it as {\"token\": ...} or as the bearer")
    if not isinstance(token, str) or not token:
        abort(400, "token must be a non-empty string")
    tokens.revoke(token)
    return Response(status=204)
