"""The lab's own two apps, brought to `statelab check` as a user would bring theirs.

They read LAB_* variables and need the lab's schema and seed; `statelab check` gives every app the
conventional names and an empty database. These factories translate the names and seed the
database once (the first instance to start does it, under a PostgreSQL advisory lock), then build
the app: `statelab check 'lab_apps:stateful()' --journey journey_cart.py`.
"""

from __future__ import annotations

import os

import psycopg
from flask import Flask

from statelab import seed

SEED_USERS = 200
SEED_PRODUCTS = 50
_LOCK = 424242


def _lab_env() -> None:
    os.environ.update({
        "LAB_DATABASE_URL": os.environ["DATABASE_URL"],
        "LAB_REDIS_URL": os.environ["REDIS_URL"],
        "LAB_S3_ENDPOINT": os.environ["AWS_ENDPOINT_URL_S3"],
        "LAB_S3_ACCESS_KEY": os.environ["AWS_ACCESS_KEY_ID"],
        "LAB_S3_SECRET_KEY": os.environ["AWS_SECRET_ACCESS_KEY"],
        "LAB_S3_BUCKET": os.environ["S3_BUCKET"],
        "LAB_SECRET_KEY": os.environ["SECRET_KEY"],
        "LAB_INSTANCE_ID": f"port-{os.environ['PORT']}",
    })


def _seed_once() -> None:
    url = os.environ["DATABASE_URL"]
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK,))
        try:
            if conn.execute("SELECT to_regclass('public.users')").fetchone() == (None,):
                seed.seed(url, users=SEED_USERS, products=SEED_PRODUCTS)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK,))


def stateful() -> Flask:
    _lab_env()
    _seed_once()
    import stateful_app

    return stateful_app.create_app()


def stateless() -> Flask:
    _lab_env()
    _seed_once()
    import stateless_app

    return stateless_app.create_app()
