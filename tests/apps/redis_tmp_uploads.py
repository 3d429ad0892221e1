"""Sessions in Redis, done right; uploads written under /tmp, which is not.

A half-stateless app: logins survive anything, because every instance reads sessions from
REDIS_URL; but an upload is saved on the disk of the instance that took it, and a download that
lands on another instance is a 404. On one machine all instances would share /tmp and the bug
would hide: `statelab check` gives each instance its own /tmp, and must fail it.
`statelab check redis_tmp_uploads:app --journey journey_upload.py`
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import redis
from flask import Flask, jsonify, request, send_file

UPLOAD_DIR = Path("/tmp/uploads")  # the bug: local disk
SESSION_TTL_S = 3600

app = Flask(__name__)
store = redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=2, socket_connect_timeout=2)


def _user() -> str | None:
    sid = request.cookies.get("sid", "")
    name = store.get(f"session:{sid}") if sid else None
    return name.decode() if name else None


@app.post("/login")
def login():
    body = request.get_json(silent=True) or {}
    if not body.get("username") or not body.get("password"):
        return jsonify(error="username and password required"), 400
    sid = secrets.token_hex(16)
    store.set(f"session:{sid}", body["username"], ex=SESSION_TTL_S)
    response = jsonify(user={"username": body["username"]})
    response.set_cookie("sid", sid, httponly=True)
    return response


@app.get("/me")
def me():
    user = _user()
    if user is None:
        return jsonify(error="not logged in"), 401
    return jsonify(user={"username": user})


@app.post("/uploads")
def upload():
    user = _user()
    if user is None:
        return jsonify(error="not logged in"), 401
    file = request.files.get("file")
    if file is None:
        return jsonify(error="multipart field `file` required"), 400
    key = secrets.token_hex(16)
    UPLOAD_DIR.mkdir(parents=True, exist_ok=True)
    file.save(UPLOAD_DIR / key)
    store.set(f"upload-owner:{key}", user)
    return jsonify(key=key, size=(UPLOAD_DIR / key).stat().st_size), 201


@app.get("/uploads/<key>")
def download(key: str):
    user = _user()
    if user is None:
        return jsonify(error="not logged in"), 401
    path = UPLOAD_DIR / key
    owner = store.get(f"upload-owner:{key}")
    if owner is None or owner.decode() != user or not key.isalnum() or not path.exists():
        return jsonify(error="no such upload"), 404
    return send_file(path, mimetype="application/octet-stream")
