"""The contract as OpenAPI 3.1: each app serves its description, the two agree on everything but where
state lives, and the README table, the apps' routes and their 503s are all as described. Then
schemathesis, run against a live lab of each app through the balancer, finds nothing: no 5xx, only
documented statuses, headers and bodies as described, malformed input refused with a 4xx.
"""

from __future__ import annotations

import io
import json
import re
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterator

import hypothesis
import jwt
import pytest
import requests
import schemathesis
from flask import Flask
from flask.testing import FlaskClient
from openapi_spec_validator import validate
from schemathesis.config import SchemathesisConfig

from statelab.config import APP_KINDS, BackingUrls
from statelab.procs import free_port
from statelab.seed import SEED_PASSWORD, username
from tests.support.apps import app_test_config, make_app

README = Path(__file__).resolve().parent.parent / "README.md"
# What only the stateless app has: the JWT mode, and Redis/S3 as dependencies (the 503s). All else is shared.
JWT_PATHS = {"/token/refresh", "/token/revoke"}
JWT_SCHEMAS = {"Jwt", "TokenPair", "RefreshRequest", "RevokeRequest"}
# The operations whose store can be down, per app: the lesson of the two descriptions' diff.
STORE_DOWN = {
    "stateful": {"login", "getProduct", "addToCart", "readyz"},
    "stateless": {"login", "logout", "me", "getProduct", "getCart", "addToCart", "upload", "download",
                  "processUpload", "getJob", "readyz", "refreshToken", "revokeToken"},
}
METHODS = ("get", "put", "post", "delete", "patch")


def description(kind: str) -> dict[str, Any]:
    """Return an app's OpenAPI document as its package ships it."""
    return json.loads(resources.files(f"{kind}_app").joinpath("openapi.json").read_text())  # type: ignore[no-any-return]


def operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method in METHODS:
            if method in item:
                yield method.upper(), path, item[method]


# --- the documents ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", APP_KINDS)
def test_each_description_is_valid_openapi_3_1(kind: str) -> None:
    doc = description(kind)
    assert doc["openapi"].startswith("3.1.")
    validate(doc)  # openapi-spec-validator picks the 3.1 meta-schema from the version field
    assert len({op["operationId"] for _, _, op in operations(doc)}) == len(list(operations(doc)))


def _without_prose(node: Any) -> Any:
    """Return a copy of a document without its descriptions: prose may tell each app's story, structure may not."""
    if isinstance(node, dict):
        return {k: _without_prose(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [_without_prose(v) for v in node]
    return node


def _shared_part(doc: dict[str, Any]) -> dict[str, Any]:
    """Return the structure both apps must share: doc without its prose, info, JWT mode and 503s."""
    doc = _without_prose(doc)
    del doc["info"]
    for path in JWT_PATHS:
        doc["paths"].pop(path, None)
    components = doc["components"]
    components["securitySchemes"].pop("bearerAuth", None)
    for name in JWT_SCHEMAS:
        components["schemas"].pop(name, None)
    for token in ("access_token", "refresh_token"):
        components["schemas"]["LoginResult"]["properties"].pop(token, None)
    doc["security"] = [s for s in doc["security"] if "bearerAuth" not in s]
    for _, _, op in operations(doc):
        if "security" in op:
            op["security"] = [s for s in op["security"] if "bearerAuth" not in s]
        op["responses"].pop("503", None)  # compared below: which operations a store outage reaches
        if op["operationId"] == "logout":
            op["responses"].pop("401", None)  # jwt mode: logging out revokes the bearer token, which may be bad
        if op["operationId"] == "download":
            op["responses"].pop("302", None)  # LAB_S3_DOWNLOADS=presigned: S3 serves the bytes itself
    return doc


def test_the_two_descriptions_differ_only_where_state_lives() -> None:
    stateful, stateless = description("stateful"), description("stateless")
    assert _shared_part(stateless) == _shared_part(stateful)
    for kind, doc in (("stateful", stateful), ("stateless", stateless)):
        down = {op["operationId"] for _, _, op in operations(doc) if "503" in op["responses"]}
        assert down == STORE_DOWN[kind], f"{kind}: the operations that answer 503 when a store is down"


def _readme_routes() -> set[tuple[str, str]]:
    """Return every (METHOD, /path) the README's contract section names, path parameters as {}."""
    text = README.read_text()
    section = text[text.index("## The HTTP contract"):]
    section = section[:section.index("\n## ", 1)]
    return {(method, re.sub(r"<\w+>", "{}", path))
            for method, path in re.findall(r"`(GET|POST|PUT|DELETE|PATCH) (/[^` ]*)`", section)}


def test_the_readme_and_the_descriptions_name_the_same_routes() -> None:
    readme = _readme_routes()
    for kind in APP_KINDS:
        described = {(method, re.sub(r"{\w+}", "{}", path)) for method, path, _ in operations(description(kind))}
        expected = readme if kind == "stateless" else {r for r in readme if r[1] not in JWT_PATHS}
        assert described == expected, f"{kind}: README only {expected - described}, described only {described - expected}"


# --- the apps against their descriptions -----------------------------------------------------------

def test_every_route_of_each_app_is_described(client: FlaskClient) -> None:
    """The description and the app's routing table name the same operations (HEAD and OPTIONS are Flask's)."""
    app: Flask = client.application
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        routes |= {(method, path) for method in rule.methods or () if method not in ("HEAD", "OPTIONS")}
    kind = "stateful" if app.import_name == "stateful_app" else "stateless"
    assert routes == {(method, path) for method, path, _ in operations(description(kind))}


def test_each_app_serves_its_description(client: FlaskClient) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    assert response.headers["X-Served-By"]
    kind = "stateful" if client.application.import_name == "stateful_app" else "stateless"
    assert response.get_json() == description(kind)


def _dead_url(scheme: str) -> str:
    """Return a URL on a loopback port nothing listens on (a store that is down)."""
    return f"{scheme}://127.0.0.1:{free_port()}"


def _signed_token(kind: str, secret: str) -> str:
    """Return a well-formed JWT of this kind ("access" or "refresh") signed with secret."""
    now = int(time.time())
    return jwt.encode({"sub": "1", "username": username(1), "typ": kind, "jti": "0" * 32, "fam": "1" * 32,
                       "iat": now, "nbf": now, "exp": now + 300}, secret)


def _sample_requests(secret: str) -> dict[str, tuple[str, str, dict[str, Any]]]:
    """Return one plausible request per operation: logged in by cookie, with a well-formed body."""
    key = "0" * 32
    return {
        "login": ("POST", "/login", {"json": {"username": username(1), "password": SEED_PASSWORD}}),
        "me": ("GET", "/me", {}),
        "getProduct": ("GET", "/products/1", {}),
        "getCart": ("GET", "/cart", {}),
        "addToCart": ("POST", "/cart/items", {"json": {"product_id": 1, "qty": 1}}),
        "upload": ("POST", "/uploads", {"data": {"file": (io.BytesIO(b"x"), "x.txt")}}),
        "download": ("GET", f"/uploads/{key}", {}),
        "processUpload": ("POST", f"/uploads/{key}/process", {}),
        "getJob": ("GET", f"/jobs/{key}", {}),
        "healthz": ("GET", "/healthz", {}),
        "readyz": ("GET", "/readyz", {}),
        "stats": ("GET", "/stats", {}),
        "openapi": ("GET", "/openapi.json", {}),
        "refreshToken": ("POST", "/token/refresh", {"json": {"refresh_token": _signed_token("refresh", secret)}}),
        "revokeToken": ("POST", "/token/revoke", {"json": {"token": _signed_token("access", secret)}}),
        "logout": ("POST", "/logout", {}),  # last: it ends the session the others use
    }


@pytest.mark.parametrize("kind", APP_KINDS)
def test_the_503s_are_where_the_description_says(kind: str, backing: BackingUrls, tmp_path: Path) -> None:
    """With every store but PostgreSQL down (stateless) or PostgreSQL down (stateful), exactly the operations
    the description gives a 503 answer one, naming the store, in the described body."""
    secret = "openapi-test-secret-0123456789abcdefghij"
    dead = {"LAB_STORE_TIMEOUT_S": "0.1", "LAB_SECRET_KEY": secret}
    if kind == "stateful":
        dead["LAB_DATABASE_URL"] = _dead_url("postgresql") + "/lab"
    else:
        dead |= {"LAB_REDIS_URL": _dead_url("redis"), "LAB_S3_ENDPOINT": _dead_url("http")}
    down = set()
    for auth_mode in ("session", "jwt") if kind == "stateless" else ("session",):
        app = make_app(kind, app_test_config(kind, backing, tmp_path / auth_mode, LAB_AUTH_MODE=auth_mode, **dead))
        try:
            client = app.test_client()
            # A live session: the stateful app holds it in memory (PostgreSQL is down, so no login); in the
            # stateless app any id will do, since Redis, where it would be looked up, is down.
            session_id = app.extensions["lab"].sessions.create({"id": 1, "username": username(1)}) \
                if kind == "stateful" else "a-session-id"
            client.set_cookie("lab_session", session_id)
            for operation, (method, path, kwargs) in _sample_requests(secret).items():
                response = client.open(path, method=method, **kwargs)
                assert response.status_code < 500 or response.status_code == 503, (operation, response.data[:200])
                if response.status_code == 503:
                    assert response.get_json()["error"].split()[0] in ("postgres", "redis", "s3")
                    assert response.headers["X-Served-By"]
                    down.add(operation)
        finally:
            app.extensions["lab"].close()
    assert down == STORE_DOWN[kind]


# --- schemathesis against live labs ----------------------------------------------------------------

# Schemathesis reads each description from the package file at import (the file the app serves, as
# checked above) and builds its coverage cases while pytest collects, before any lab runs; so the lab's
# URL and a real login are given at call time. (schemathesis.pytest.from_fixture, which would load the
# schema from a fixture instead, fails under pytest 9.2: "'Function' object has no attribute '_nodeid'".)
SEED = 20240917
MAX_EXAMPLES = 20  # per operation, in the fuzzing phase; the coverage phase adds its own fixed set
STATEFUL_EXAMPLES, STATEFUL_STEPS = 10, 6
USER, PASSWORD = username(7), SEED_PASSWORD
PLACEHOLDER = "filled-in-at-call-time"  # what protected cases carry until the test logs them in
# All on by default in schemathesis 4; named so that the intent survives a change of defaults.
CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance", "response_schema_conformance",
          "response_headers_conformance", "negative_data_rejection", "positive_data_acceptance",
          "unsupported_method", "ignored_auth", "use_after_free", "ensure_resource_availability")
ENDS_LOGIN = {"/logout", "/token/revoke"}  # these get a login of their own, not the shared one


class PlaceholderAuth:
    """Mark a case as logged in, both ways (cookie and bearer): the lab's auth mode is known only at call time."""

    def get(self, case: Any, context: Any) -> str:
        return PLACEHOLDER

    def set(self, case: Any, data: str, context: Any) -> None:
        case.cookies = {**(case.cookies or {}), "lab_session": data}
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


def _schema(kind: str) -> Any:
    """Load an app's description as schemathesis sees it: a fixed seed and a bounded number of examples."""
    config = SchemathesisConfig.from_dict({
        "seed": SEED,
        "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "database": "none"},  # positive and negative
        "checks": {name: {"enabled": True} for name in CHECKS},
        "request-timeout": 10,
        # In multipart/form-data every part is bytes: a "boolean" or "object" file is a file whose
        # content reads `false` or `{}`, which the upload rightly stores. No such request violates the
        # contract, so negative data is not judged on the upload (its missing-file 400 has a test of its own).
        "operations": [{"include-path": "/uploads", "include-method": "POST",
                        "checks": {"negative_data_rejection": {"enabled": False}}}],
    })
    schema = schemathesis.openapi.from_path(str(resources.files(f"{kind}_app").joinpath("openapi.json")),
                                            config=config)
    schema.auth(refresh_interval=None)(PlaceholderAuth)
    return schema


@dataclass
class LiveLab:
    """A running lab, seen from outside: the balancer's URL, its auth mode and a logged-in test user."""

    name: str
    base_url: str
    auth_mode: str
    shared_login: str | None = None

    def login(self) -> str:
        """Log the test user in through the balancer; return the session id or the access token."""
        response = requests.post(f"{self.base_url}/login", json={"username": USER, "password": PASSWORD}, timeout=10)
        assert response.status_code == 200, response.text
        return response.json()["access_token"] if self.auth_mode == "jwt" else response.cookies["lab_session"]

    def log_in(self, case: Any) -> None:
        """Replace a case's placeholder credentials with a real login, the way this lab authenticates."""
        cookies, headers = case.cookies or {}, case.headers or {}
        if cookies.get("lab_session") != PLACEHOLDER and headers.get("Authorization") != f"Bearer {PLACEHOLDER}":
            return  # schemathesis meant this case to go without credentials
        if case.operation.path in ENDS_LOGIN:
            credential = self.login()
        else:
            self.shared_login = self.shared_login or self.login()
            credential = self.shared_login
        cookies.pop("lab_session", None)
        headers.pop("Authorization", None)
        if self.auth_mode == "jwt":
            headers["Authorization"] = f"Bearer {credential}"
        else:
            cookies["lab_session"] = credential
        case.cookies, case.headers = cookies, headers


@pytest.fixture(scope="module")
def live_lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveLab]:
    """A real lab (2 instances behind the balancer) named `app-authmode`, stopped at the end of the module.

    The stateful lab runs behind ip-hash: its sessions live in one instance's memory, so without
    stickiness every other request would be a 401 and the protected routes would be half tested.
    """
    from statelab.topology import Lab, LabSpec

    app, auth_mode = request.param.split("-")
    with Lab(LabSpec(app=app, instances=2, auth_mode=auth_mode, policy="ip-hash" if app == "stateful" else "round-robin",
                     run_dir=tmp_path_factory.mktemp(f"openapi-{request.param}"), seed_users=50,
                     seed_products=50)) as lab:
        lab.start()
        yield LiveLab(request.param, lab.balancer_url, auth_mode)


@pytest.mark.live
@pytest.mark.parametrize("live_lab", ["stateful-session"], indirect=True)
@_schema("stateful").parametrize()
def test_schemathesis_finds_nothing_in_the_stateful_app(case: Any, live_lab: LiveLab) -> None:
    """One test per operation: its coverage cases, then MAX_EXAMPLES fuzzed ones, each through the balancer."""
    live_lab.log_in(case)
    case.call_and_validate(base_url=live_lab.base_url)


@pytest.mark.live
@pytest.mark.parametrize("live_lab", ["stateless-session", "stateless-jwt"], indirect=True)
@_schema("stateless").parametrize()
def test_schemathesis_finds_nothing_in_the_stateless_app(case: Any, live_lab: LiveLab) -> None:
    """The same for the stateless app, in session mode (cookie) and in jwt mode (bearer, token routes)."""
    live_lab.log_in(case)
    case.call_and_validate(base_url=live_lab.base_url)


@pytest.mark.live
@pytest.mark.parametrize("live_lab", ["stateful-session", "stateless-session", "stateless-jwt"], indirect=True)
def test_schemathesis_follows_the_links(live_lab: LiveLab) -> None:
    """Upload, download, process, poll the job: the description's links, with real keys and job ids."""
    kind = live_lab.name.split("-")[0]
    base = _schema(kind).as_state_machine()

    class Journeys(base):  # type: ignore[misc, valid-type]  (a class built at run time)
        def before_call(self, case: Any) -> None:
            live_lab.log_in(case)

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"base_url": live_lab.base_url}

    Journeys.run(settings=hypothesis.settings(max_examples=STATEFUL_EXAMPLES, stateful_step_count=STATEFUL_STEPS,
                                              derandomize=True, database=None, deadline=None))
