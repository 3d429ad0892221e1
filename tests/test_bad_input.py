"""Hostile and malformed input, as a table run against both apps: every case is a 4xx with a JSON
`error`, never a 5xx, and no upload ever writes a file outside the upload directory.
"""

from __future__ import annotations

import base64
import io
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import jwt
import pytest
from flask import Flask
from flask.testing import FlaskClient

from statelab.config import APP_KINDS, BackingUrls
from statelab.seed import SEED_PASSWORD, username
from tests.support.apps import app_test_config, login, make_app

SECRET = "bad-input-test-secret-key-0123456789abcdef"
MAX_UPLOAD_BYTES = 64 * 1024


@dataclass(frozen=True)
class Case:
    """One request that must be refused with a 4xx."""

    name: str
    method: str
    path: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    logged_in: bool = True
    status: int | None = None  # the exact status, where the contract names one (else any 4xx)

    def __str__(self) -> str:
        return self.name


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "1", "username": username(1), "typ": "access", "jti": "0" * 32, "iat": now, "nbf": now,
            "exp": now + 300, **overrides}


def _raw_json(text: str) -> dict[str, Any]:
    """Send text as the JSON body verbatim (for what json= cannot produce, such as a lone surrogate)."""
    return {"data": text, "content_type": "application/json"}


def _bearer(token: str) -> dict[str, Any]:
    return {"headers": {"Authorization": f"Bearer {token}"}}


NOW = int(time.time())
JWT_CASES = [
    Case("jwt-forged", "GET", "/me", _bearer(jwt.encode(_claims(), "another-secret-of-enough-length-0123456789"))),
    Case("jwt-expired", "GET", "/me", _bearer(jwt.encode(_claims(exp=NOW - 10, iat=NOW - 400, nbf=NOW - 400), SECRET))),
    Case("jwt-alg-none", "GET", "/me", _bearer(f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(_claims())}.")),
    Case("jwt-wrong-alg", "GET", "/me", _bearer(jwt.encode(_claims(), SECRET + SECRET, algorithm="HS512"))),
    Case("jwt-nbf-future", "GET", "/me", _bearer(jwt.encode(_claims(nbf=NOW + 3600), SECRET))),
    Case("jwt-refresh-as-access", "GET", "/me", _bearer(jwt.encode(_claims(typ="refresh"), SECRET))),
    Case("jwt-missing-jti", "GET", "/me", _bearer(jwt.encode({k: v for k, v in _claims().items() if k != "jti"}, SECRET))),
    Case("jwt-garbage", "GET", "/me", _bearer("not.a.token")),
    Case("jwt-bad-subject", "GET", "/me", _bearer(jwt.encode(_claims(sub="root"), SECRET))),
    Case("jwt-no-username", "GET", "/me", _bearer(jwt.encode({**_claims(), "username": None}, SECRET))),
]
# The stateless app (in jwt mode here) answers each with `status`; the stateful app has no token routes: 404.
TOKEN_ROUTE_CASES = [
    Case("refresh-lone-surrogate", "POST", "/token/refresh", _raw_json('{"refresh_token": "\\ud800"}'), False, 401),
    Case("refresh-empty", "POST", "/token/refresh", {"json": {"refresh_token": ""}}, False, 400),
    Case("refresh-form-not-json", "POST", "/token/refresh", {"data": {"refresh_token": "x"}}, False, 415),
    Case("revoke-no-token-at-all", "POST", "/token/revoke", {}, False, 401),
    Case("revoke-empty-object", "POST", "/token/revoke", {"json": {}}, False, 401),
    Case("revoke-token-null", "POST", "/token/revoke", {"json": {"token": None}}, False, 401),
    Case("revoke-token-number", "POST", "/token/revoke", {"json": {"token": 5}}, False, 400),
    Case("revoke-body-array", "POST", "/token/revoke", {"json": ["x"]}, False, 400),
    Case("revoke-form-not-json", "POST", "/token/revoke", {"data": {"token": "x"}}, False, 415),
    Case("revoke-lone-surrogate", "POST", "/token/revoke", _raw_json('{"token": "\\ud800"}'), False, 401),
]
CASES = [
    Case("login-malformed-json", "POST", "/login", {"data": "{", "content_type": "application/json"}, False),
    Case("login-json-array", "POST", "/login", {"json": [username(1), SEED_PASSWORD]}, False),
    Case("login-wrong-types", "POST", "/login", {"json": {"username": 1, "password": ["x"]}}, False),
    Case("login-missing-password", "POST", "/login", {"json": {"username": username(1)}}, False),
    Case("login-form-not-json", "POST", "/login", {"data": {"username": username(1), "password": SEED_PASSWORD}},
         False, status=415),
    Case("login-no-content-type", "POST", "/login", {"data": '{"username": "%s", "password": "x"}' % username(1)},
         False, status=415),
    Case("login-oversized", "POST", "/login", {"json": {"username": "u", "password": "x" * MAX_UPLOAD_BYTES}}, False,
         status=413),
    Case("login-lone-surrogate", "POST", "/login", _raw_json('{"username": "\\ud800", "password": "x"}'), False,
         status=401),
    Case("login-huge-username", "POST", "/login", {"json": {"username": "u" * 10_000, "password": "x"}}, False),
    Case("login-nul-username", "POST", "/login", {"json": {"username": "user\x000001", "password": SEED_PASSWORD}},
         False),
    Case("cart-malformed-json", "POST", "/cart/items", {"data": "{'product_id': 1", "content_type": "application/json"}),
    Case("cart-missing-qty", "POST", "/cart/items", {"json": {"product_id": 1}}),
    Case("cart-qty-string", "POST", "/cart/items", {"json": {"product_id": 1, "qty": "2"}}),
    Case("cart-qty-float", "POST", "/cart/items", {"json": {"product_id": 1, "qty": 1.5}}),
    Case("cart-qty-infinite", "POST", "/cart/items", _raw_json('{"product_id": 1, "qty": Infinity}')),
    Case("cart-form-not-json", "POST", "/cart/items", {"data": {"product_id": "1", "qty": "1"}}, status=415),
    Case("cart-qty-bool", "POST", "/cart/items", {"json": {"product_id": 1, "qty": True}}),
    Case("cart-qty-zero", "POST", "/cart/items", {"json": {"product_id": 1, "qty": 0}}),
    Case("cart-qty-101", "POST", "/cart/items", {"json": {"product_id": 1, "qty": 101}}),
    Case("cart-product-negative", "POST", "/cart/items", {"json": {"product_id": -1, "qty": 1}}),
    Case("cart-product-huge", "POST", "/cart/items", {"json": {"product_id": 2**63, "qty": 1}}),
    Case("cart-product-unknown", "POST", "/cart/items", {"json": {"product_id": 999_999, "qty": 1}}),
    Case("cart-not-logged-in", "POST", "/cart/items", {"json": {"product_id": 1, "qty": 1}}, False),
    Case("product-not-a-number", "GET", "/products/abc"),
    Case("product-unknown", "GET", "/products/999999"),
    Case("product-beyond-int32", "GET", "/products/99999999999999999999"),
    Case("product-negative", "GET", "/products/-1"),
    Case("upload-no-file-field", "POST", "/uploads", {"data": {"other": (b"x", "x.txt")}}),
    Case("upload-not-multipart", "POST", "/uploads", {"json": {"file": "x"}}, status=415),
    Case("upload-oversized", "POST", "/uploads", {"data": {"file": (b"x" * (MAX_UPLOAD_BYTES + 1), "big")}},
         status=413),
    Case("upload-key-traversal", "GET", "/uploads/..%2F..%2Fetc%2Fpasswd"),
    Case("upload-key-not-hex", "GET", "/uploads/" + "z" * 32),
    Case("upload-key-unknown", "GET", "/uploads/" + "a" * 32),
    Case("process-unknown-upload", "POST", "/uploads/" + "b" * 32 + "/process"),
    Case("job-unknown", "GET", "/jobs/" + "c" * 32),
    Case("job-traversal", "GET", "/jobs/..%2F..%2Fetc%2Fpasswd"),
    Case("method-not-allowed", "PUT", "/cart", status=405),
    Case("method-not-allowed-with-body", "DELETE", "/login", {"json": {"username": username(1)}}, status=405),
    Case("route-unknown", "GET", "/admin"),
    *JWT_CASES,
    *TOKEN_ROUTE_CASES,
]
HOSTILE_NAMES = ["../../etc/passwd", "/etc/passwd", "a\x00b.txt", "x" * 10_000, "..", "", "C:\\Windows\\win.ini",
                 "..\\..\\boot.ini", "ü\u202e.txt"]


@pytest.fixture(scope="module")
def upload_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bad-input-uploads")


@pytest.fixture(scope="module")
def apps(backing: BackingUrls, upload_root: Path) -> Iterator[dict[str, Flask]]:
    """Both apps with a small upload limit; the stateless one in jwt mode so that JWTs are checked."""
    built = {kind: make_app(kind, app_test_config(kind, backing, upload_root / kind,
                                                  LAB_MAX_UPLOAD_BYTES=MAX_UPLOAD_BYTES, LAB_AUTH_MODE="jwt",
                                                  LAB_SECRET_KEY=SECRET))
             for kind in APP_KINDS}
    yield built
    for app in built.values():
        app.extensions["lab"].close()


def _client(app: Flask, username: str, logged_in: bool) -> FlaskClient:
    client = app.test_client()
    if logged_in:
        body = login(client, username)
        if "access_token" in body:  # jwt mode
            client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {body['access_token']}"
    return client


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("kind", APP_KINDS)
def test_bad_input_is_a_json_4xx(kind: str, case: Case, apps: dict[str, Flask], username: str) -> None:
    client = _client(apps[kind], username, case.logged_in and not case.name.startswith("jwt-"))
    response = client.open(case.path, method=case.method, **_fresh(case.kwargs))
    assert 400 <= response.status_code < 500, (response.status_code, response.data[:300])
    assert response.is_json and isinstance(response.get_json().get("error"), str), response.data[:300]
    if case.name.startswith("jwt-"):
        assert response.status_code == 401
    elif case in TOKEN_ROUTE_CASES and kind == "stateful":
        assert response.status_code == 404
    elif case.status is not None:
        assert response.status_code == case.status, response.get_json()
    if response.status_code == 405:
        assert response.headers["Allow"], "a 405 names the methods the path has (RFC 9110)"


@pytest.mark.parametrize("kind", APP_KINDS)
def test_hostile_file_names_stay_metadata(kind: str, apps: dict[str, Flask], username: str, upload_root: Path,
                                          run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    app = apps[kind]
    # Other engineers' tests may write into /tmp and the checkout meanwhile: there, look for our names only.
    shared_dirs = [Path.cwd(), Path("/tmp")]
    own_dir = tmp_path_factory.getbasetemp()
    before = {d: _files(d) for d in [own_dir, *shared_dirs]}
    passwd_mtime = os.stat("/etc/passwd").st_mtime_ns
    client = _client(app, username, logged_in=True)
    keys = []
    for name in HOSTILE_NAMES:
        response = client.post("/uploads", data={"file": (io.BytesIO(b"payload"), name)})
        assert response.status_code == 201, (name, response.get_json())
        keys.append(response.get_json()["key"])
        assert client.get(f"/uploads/{keys[-1]}").data == b"payload"
    upload_dir = upload_root / kind  # the stateless app writes no local file at all (S3's own data is in run_dir)
    new_here = {p for p in _files(own_dir) - before[own_dir] if run_dir not in p.parents}
    assert all(upload_dir in p.parents for p in new_here), sorted(new_here)[:5]
    hostile = ("passwd", "win.ini", "boot.ini", "xxxxxxxxxx", "a\x00b")
    for d in shared_dirs:
        suspicious = {p for p in _files(d) - before[d] if any(h in str(p) for h in hostile)}
        assert not suspicious, f"files written outside the upload dir: {sorted(suspicious)[:5]}"
    assert os.stat("/etc/passwd").st_mtime_ns == passwd_mtime
    if kind == "stateful":
        stored = sorted(p.name for p in upload_dir.iterdir())
        assert stored == sorted([f"{k}.bin" for k in keys] + [f"{k}.json" for k in keys])
        for key in keys:
            meta = json.loads((upload_dir / f"{key}.json").read_text())
            assert "/" not in meta["filename"] and "\\" not in meta["filename"] and "\x00" not in meta["filename"]
            assert not meta["filename"].startswith(".") and len(meta["filename"]) <= 100


def _fresh(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Return request kwargs with a new stream per (bytes, name) file: the client closes each it sends."""
    data = kwargs.get("data")
    if not isinstance(data, dict):
        return kwargs
    files = {k: (io.BytesIO(v[0]), v[1]) if isinstance(v, tuple) else v for k, v in data.items()}
    return {**kwargs, "data": files}


def _files(root: Path) -> set[Path]:
    found = set()
    for dirpath, _, filenames in os.walk(root):
        if "/proc" in dirpath or "statelab-pg" in dirpath:
            continue
        found.update(Path(dirpath, f) for f in filenames)
    return found
