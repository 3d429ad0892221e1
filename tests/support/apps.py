"""The two apps under test: their test_config, building one, and logging in as a seeded user."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from statelab.config import BackingUrls
from statelab.seed import SEED_PASSWORD


def app_test_config(kind: str, backing: BackingUrls, upload_dir: Path, **overrides: Any) -> dict[str, Any]:
    """Return the test_config for create_app: the backing stores' LAB_* variables plus overrides."""
    return {"TESTING": True, **backing.app_env(), "LAB_INSTANCE_ID": f"{kind}-test",
            "LAB_UPLOAD_DIR": str(upload_dir), **overrides}


def make_app(kind: str, config: dict[str, Any]) -> Flask:
    """Build one of the two apps from a test_config."""
    if kind == "stateful":
        import stateful_app

        return stateful_app.create_app(config)
    import stateless_app

    return stateless_app.create_app(config)


def login(client: FlaskClient, name: str) -> dict[str, Any]:
    """Log client in as a seeded user and return the response body."""
    response = client.post("/login", json={"username": name, "password": SEED_PASSWORD})
    assert response.status_code == 200, response.get_json()
    return response.get_json()  # type: ignore[no-any-return]


def random_key() -> str:
    return secrets.token_hex(16)
