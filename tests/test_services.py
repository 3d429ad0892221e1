"""Service recipes: real servers on loopback, a port clash survived, secrets kept out of sight."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import psutil
import pytest
import redis

from statelab import services


def test_a_port_taken_meanwhile_is_survived_on_fresh_ports(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        svc = services.start_redis(tmp_path, port=taken)
        try:
            svc.wait_ready(10)
            assert svc.extra["port"] != str(taken)
            assert redis.Redis.from_url(svc.url, socket_timeout=2).ping()
        finally:
            svc.stop()
    assert not svc.process.alive()


@pytest.mark.skipif(os.geteuid() != 0, reason="only as root does PostgreSQL run as another user")
def test_postgres_runs_unprivileged_and_its_temp_dir_goes_with_it(backing_services: dict[str, services.Service]) -> None:
    pg = backing_services["postgres"]
    assert psutil.Process(pg.process.pid).username() == "nobody"
    assert all(d.exists() for d in pg.cleanup_dirs)


def test_s3_enforces_credentials_and_remembers_its_ports(backing_services: dict[str, services.Service]) -> None:
    import io
    import json

    from minio import Minio
    from minio.error import S3Error

    s3 = backing_services["s3"]
    host = s3.url.removeprefix("http://")
    assert set(json.loads(s3.extra["ports"])) == set(services.S3_PORT_NAMES)
    good = Minio(host, access_key=s3.extra["access_key"], secret_key=s3.extra["secret_key"], secure=False)
    if not good.bucket_exists("svc-test"):
        good.make_bucket("svc-test")
    good.put_object("svc-test", "k", io.BytesIO(b"hello"), 5)
    assert good.get_object("svc-test", "k").read() == b"hello"
    bad = Minio(host, access_key=s3.extra["access_key"], secret_key="wrong", secure=False)
    with pytest.raises(S3Error):
        bad.get_object("svc-test", "k")


def test_status_never_shows_the_database_password(backing_services: dict[str, services.Service]) -> None:
    from statelab.topology import _public_url

    url = backing_services["postgres"].url
    password = url.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
    assert password not in _public_url(url)


def test_a_lab_database_is_a_seeded_copy_of_one_template_with_a_password_of_its_own(tmp_path: Path) -> None:
    import psycopg

    from statelab import seed

    template = services.postgres_template(seed.SEED_USERS, seed.SEED_PRODUCTS)
    assert services.postgres_template(seed.SEED_USERS, seed.SEED_PRODUCTS) == template  # built once, then reused
    assert len(list((template / "data" / "pg_wal").glob("0*"))) == 1  # copies write one WAL segment, not 32 MB
    copies = [services.start_postgres(tmp_path / name, template=template) for name in ("a", "b")]
    try:
        for pg in copies:
            pg.wait_ready()
            shared = pg.url
            services.rotate_password(pg)
            assert pg.url != shared
            with pytest.raises(psycopg.OperationalError):
                psycopg.connect(shared.rsplit("/", 1)[0] + "/statelab", connect_timeout=5).close()
            with psycopg.connect(services.create_database(pg.url), connect_timeout=5) as conn:
                assert conn.execute("SELECT count(*) FROM users").fetchone() == (seed.SEED_USERS,)
                if pg is copies[0]:
                    conn.execute("DELETE FROM reviews")
        with psycopg.connect(services.create_database(copies[1].url), connect_timeout=5) as conn:
            assert conn.execute("SELECT count(*) FROM reviews").fetchone()[0] > 0  # each copy is its own
    finally:
        for pg in copies:
            pg.stop()
