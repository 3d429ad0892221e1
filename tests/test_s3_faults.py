"""S3 behind the fault proxy: what latency costs uploads and downloads, the two mitigations (presigned
downloads, a read cache), and a dead, hung or cut-off S3: 503 JSON fast, never a hang, never half a file.
"""

from __future__ import annotations

import io
import itertools
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from minio import Minio

from statelab import services
from statelab.config import BackingUrls
from statelab.faults import FaultClient
from tests.support.apps import app_test_config, login, make_app

pytestmark = pytest.mark.live
STORE_TIMEOUT_S = 0.5
FAST_S = 4 * STORE_TIMEOUT_S  # generous: a 503 must come long before any client would give up
_proxies = itertools.count(1)


@pytest.fixture(scope="module")
def fault_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultClient]:
    service = services.start_faults(tmp_path_factory.mktemp("s3-faults"), {}).wait_ready()
    try:
        yield FaultClient(service.url)
    finally:
        service.stop()


@pytest.fixture
def s3_proxy(fault_server: FaultClient, backing: BackingUrls) -> Iterator[str]:
    """A fresh proxy in front of the session's S3; yields its name (its address is in fault_server)."""
    assert backing.s3_endpoint
    name = f"s3-{next(_proxies)}"
    fault_server.create_proxy(name, backing.s3_endpoint.removeprefix("http://"))
    yield name
    fault_server.delete_proxy(name)


@pytest.fixture
def app_via(fault_server: FaultClient, s3_proxy: str, backing: BackingUrls,
            tmp_path: Path) -> Iterator[Callable[..., Flask]]:
    """Build stateless apps whose S3 is behind the proxy."""
    built: list[Flask] = []

    def build(**env: str) -> Flask:
        endpoint = f"http://{fault_server.proxy(s3_proxy).listen}"
        config = app_test_config("stateless", backing, tmp_path / "uploads", LAB_S3_ENDPOINT=endpoint,
                                 LAB_STORE_TIMEOUT_S=str(STORE_TIMEOUT_S), **env)
        built.append(make_app("stateless", config))
        return built[-1]

    yield build
    for app in built:
        app.extensions["lab"].close()


@pytest.fixture
def bucket(backing: BackingUrls) -> Callable[[], set[str]]:
    """List the bucket's object names straight from S3 (not through the proxy)."""
    assert backing.s3_endpoint and backing.s3_access_key and backing.s3_secret_key
    client = Minio(backing.s3_endpoint.removeprefix("http://"), access_key=backing.s3_access_key,
                   secret_key=backing.s3_secret_key.value, secure=False, region="us-east-1")
    return lambda: {o.object_name for o in client.list_objects(backing.s3_bucket) if o.object_name}


def _upload(client: FlaskClient, data: bytes) -> Any:
    return client.post("/uploads", data={"file": (io.BytesIO(data), "f.bin")})


def _timed(call: Callable[[], Any]) -> tuple[Any, float]:
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


def _assert_503_fast(call: Callable[[], Any]) -> None:
    response, elapsed = _timed(call)
    assert response.status_code == 503, (response.status_code, response.data[:200])
    assert response.get_json()["error"].startswith("s3 unreachable"), response.get_json()
    assert elapsed < FAST_S, elapsed


def test_latency_is_paid_on_every_s3_call(app_via: Callable[..., Flask], fault_server: FaultClient, s3_proxy: str,
                                          username: str, capsys: pytest.CaptureFixture[str]) -> None:
    client = app_via().test_client()
    login(client, username)
    data = os.urandom(100_000)

    def p50_ms() -> tuple[float, float]:
        ups, downs = [], []
        for _ in range(15):
            response, up_s = _timed(lambda: _upload(client, data))
            assert response.status_code == 201
            got, down_s = _timed(lambda: client.get(f"/uploads/{response.get_json()['key']}"))
            assert got.status_code == 200 and got.data == data
            ups.append(up_s)
            downs.append(down_s)
        return statistics.median(ups) * 1000, statistics.median(downs) * 1000

    base = p50_ms()
    with fault_server.toxic(s3_proxy, "latency", attributes={"latency": 50}):
        slow = p50_ms()
    assert slow[0] - base[0] >= 45 and slow[1] - base[1] >= 90, (base, slow)  # 1 call up, 2 calls down
    with capsys.disabled():
        print(f"\nS3 100 KB p50: upload {base[0]:.1f} -> {slow[0]:.1f} ms, download {base[1]:.1f} -> {slow[1]:.1f} ms "
              "with +50 ms on S3")


def test_a_presigned_download_redirects_the_owner_to_s3(app_via: Callable[..., Flask], username: str) -> None:
    app = app_via(LAB_S3_DOWNLOADS="presigned", LAB_S3_PRESIGN_TTL_S="30")
    client = app.test_client()
    login(client, username)
    data = os.urandom(50_000)
    key = _upload(client, data).get_json()["key"]
    response = client.get(f"/uploads/{key}")
    assert response.status_code == 302 and response.get_json()["url"] == response.headers["Location"]
    assert requests.get(response.headers["Location"], timeout=5).content == data  # S3 serves the bytes
    other = app.test_client()
    assert other.get(f"/uploads/{key}").status_code == 401
    login(other, f"user{int(username[4:]) % 1000 + 1:04d}")
    assert other.get(f"/uploads/{key}").status_code == 404  # not the owner: no URL
    second = _upload(client, b"another").get_json()["key"]
    forged = response.headers["Location"].replace(key, second)
    assert requests.get(forged, timeout=5).status_code == 403  # a URL is good for its one object only


def test_the_read_cache_serves_repeat_downloads_without_s3(app_via: Callable[..., Flask], fault_server: FaultClient,
                                                           s3_proxy: str, username: str) -> None:
    app = app_via(LAB_S3_READ_CACHE_BYTES=str(4 << 20))
    client = app.test_client()
    login(client, username)
    data = os.urandom(20_000)
    key = _upload(client, data).get_json()["key"]
    assert client.get(f"/uploads/{key}").data == data  # a miss: read from S3, kept
    other = app.test_client()
    login(other, f"user{int(username[4:]) % 1000 + 1:04d}")
    with fault_server.down(s3_proxy):
        assert client.get(f"/uploads/{key}").data == data  # a hit: S3 is not asked
        assert other.get(f"/uploads/{key}").status_code == 404  # still only for its owner
        _assert_503_fast(lambda: _upload(client, b"x"))


def test_s3_down_or_hung_answers_503_fast(app_via: Callable[..., Flask], fault_server: FaultClient,
                                          s3_proxy: str, username: str) -> None:
    client = app_via().test_client()
    login(client, username)
    key = _upload(client, b"kept").get_json()["key"]
    with fault_server.down(s3_proxy):
        _assert_503_fast(lambda: _upload(client, b"lost"))
        _assert_503_fast(lambda: client.get(f"/uploads/{key}"))
        _assert_503_fast(lambda: client.get("/readyz"))
    with fault_server.toxic(s3_proxy, "timeout", attributes={"timeout": 0}):  # S3 accepts, then says nothing
        _assert_503_fast(lambda: _upload(client, b"lost"))
        _assert_503_fast(lambda: client.get(f"/uploads/{key}"))
    assert client.get(f"/uploads/{key}").data == b"kept"


def test_an_upload_cut_off_midway_leaves_nothing_behind(app_via: Callable[..., Flask], fault_server: FaultClient,
                                                        s3_proxy: str, username: str,
                                                        bucket: Callable[[], set[str]]) -> None:
    client = app_via().test_client()
    login(client, username)
    data = os.urandom(300_000)
    before = bucket()
    with fault_server.toxic(s3_proxy, "limit_data", stream="upstream", attributes={"bytes": 100_000}):
        _assert_503_fast(lambda: _upload(client, data))
    with fault_server.toxic(s3_proxy, "bandwidth", stream="upstream", attributes={"rate": 500}), \
            fault_server.toxic(s3_proxy, "reset_peer", attributes={"timeout": 200}):
        _assert_503_fast(lambda: _upload(client, data))  # reset 200 ms into a 600 ms upload
    assert bucket() == before  # no object, not even a partial one
    assert _upload(client, data).status_code == 201


def test_a_download_cut_off_midway_is_an_error_not_a_short_file(app_via: Callable[..., Flask],
                                                                fault_server: FaultClient, s3_proxy: str,
                                                                username: str) -> None:
    client = app_via().test_client()
    login(client, username)
    data = os.urandom(300_000)
    key = _upload(client, data).get_json()["key"]
    with fault_server.toxic(s3_proxy, "limit_data", attributes={"bytes": 150_000}):
        _assert_503_fast(lambda: client.get(f"/uploads/{key}"))
    assert client.get(f"/uploads/{key}").data == data
