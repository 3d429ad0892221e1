"""The fault proxy: each toxic measurably does what it says, on real sockets through a real child process.

One fault server runs for the module (`statelab faults` started by services.start_faults); each test
creates its own proxy in front of small in-process TCP servers (echo, a byte source, an HTTP server).
Bounds are one-sided where the machine's noise could only make things slower.
"""

from __future__ import annotations

import itertools
import os
import socket
import socketserver
import statistics
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest
import requests

from statelab import services
from statelab.errors import ControlError
from statelab.faults import FaultClient
from statelab.faults.toxics import Toxic, ToxicError, chunk_delay_s, parse_address, transmit_s

SOURCE_BYTES = 200_000
_names = itertools.count(1)


# --- pure model ------------------------------------------------------------------------------------

def test_toxic_defaults_and_validation() -> None:
    toxic = Toxic.from_json({"type": "latency", "attributes": {"latency": 50}})
    assert (toxic.name, toxic.stream, toxic.toxicity, dict(toxic.attributes)) == \
        ("latency_downstream", "downstream", 1.0, {"latency": 50, "jitter": 0})
    for bad in ({"type": "netem"}, {"type": "latency", "stream": "sideways"},
                {"type": "latency", "toxicity": 1.5}, {"type": "latency", "attributes": {"delay": 1}},
                {"type": "latency", "attributes": {"latency": -1}}, {"type": "latency", "attributes": {"latency": 1.5}},
                {"type": "latency", "attributes": {"latency": True}}, {"type": "bandwidth"},
                {"type": "latency", "name": "../x"}):
        with pytest.raises(ToxicError):
            Toxic.from_json(bad)
    updated = toxic.updated({"attributes": {"jitter": 5}, "toxicity": 0.5})
    assert dict(updated.attributes) == {"latency": 50, "jitter": 5} and updated.toxicity == 0.5
    with pytest.raises(ToxicError, match="cannot change"):
        toxic.updated({"type": "bandwidth"})


def test_delays_and_rates() -> None:
    toxic = Toxic.from_json({"type": "latency", "attributes": {"latency": 50, "jitter": 10}})
    assert chunk_delay_s(toxic, -1.0) == pytest.approx(0.040) and chunk_delay_s(toxic, 1.0) == pytest.approx(0.060)
    assert transmit_s(Toxic.from_json({"type": "bandwidth", "attributes": {"rate": 100}}), 50_000) == pytest.approx(0.5)
    assert parse_address("127.0.0.1:80", "x") == ("127.0.0.1", 80)
    for bad in ("10.0.0.1:80", "localhost:80", "127.0.0.1:x", 80):
        with pytest.raises(ToxicError):
            parse_address(bad, "upstream")


# --- real sockets ----------------------------------------------------------------------------------

class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


class _Source(socketserver.BaseRequestHandler):
    """Send SOURCE_BYTES at once, then close."""

    def handle(self) -> None:
        self.request.sendall(os.urandom(SOURCE_BYTES))
        self.request.shutdown(socket.SHUT_WR)
        self.request.recv(1)


class _Hello(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    wbufsize = 65536  # one write per response (flushed by the base class), or delayed ACKs cost 40 ms

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"hello")

    def log_message(self, *args: object) -> None:
        pass


class _Threaded(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, str]]:
    servers: list[socketserver.BaseServer] = [_Threaded(("127.0.0.1", 0), _Echo), _Threaded(("127.0.0.1", 0), _Source),
                                              ThreadingHTTPServer(("127.0.0.1", 0), _Hello)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield {name: f"127.0.0.1:{server.server_address[1]}"  # type: ignore[index]
           for name, server in zip(("echo", "source", "http"), servers)}
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultClient]:
    service = services.start_faults(tmp_path_factory.mktemp("faults"), {}).wait_ready()
    try:
        yield FaultClient(service.url)
    finally:
        service.stop()
    assert not service.process.alive()


@pytest.fixture
def proxy(faults: FaultClient, upstreams: dict[str, str]) -> Iterator[tuple[str, int]]:
    """A fresh proxy in front of the echo server: (name, port)."""
    name = f"echo{next(_names)}"
    state = faults.create_proxy(name, upstreams["echo"])
    yield name, state.port
    faults.delete_proxy(name)


def _connect(port: int, timeout_s: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _round_trip(sock: socket.socket, payload: bytes = b"ping") -> float:
    started = time.monotonic()
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid round trip"
        got += chunk
    assert got == payload
    return time.monotonic() - started


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_without_toxics_bytes_pass_intact_both_ways(proxy: tuple[str, int]) -> None:
    payload = os.urandom(3 * 1024 * 1024)
    with _connect(proxy[1]) as sock:
        received = bytearray()
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        while len(received) < len(payload):
            chunk = sock.recv(1 << 20)
            assert chunk
            received += chunk
        sender.join()
    assert bytes(received) == payload


def test_latency_applies_to_a_live_connection_and_changes_while_it_runs(faults: FaultClient,
                                                                       proxy: tuple[str, int]) -> None:
    name, port = proxy
    with _connect(port) as sock:
        before = min(_round_trip(sock) for _ in range(5))
        faults.add_toxic(name, "latency", attributes={"latency": 100})
        delayed = [_round_trip(sock) for _ in range(3)]
        faults.update_toxic(name, "latency_downstream", attributes={"latency": 250})
        longer = _round_trip(sock)
        faults.remove_toxic(name, "latency_downstream")
        after = min(_round_trip(sock) for _ in range(5))
    assert min(delayed) >= 0.100 and longer >= 0.250
    assert before < 0.05 and after < 0.05, (before, after)


def test_latency_on_the_upstream_stream_and_jitter(faults: FaultClient, proxy: tuple[str, int]) -> None:
    name, port = proxy
    faults.add_toxic(name, "latency", stream="upstream", attributes={"latency": 60, "jitter": 40})
    with _connect(port) as sock:
        samples = [_round_trip(sock) for _ in range(12)]
    assert min(samples) >= 0.019  # 60 - 40 ms, less a millisecond of clock granularity
    assert max(samples) - min(samples) > 0.010, samples  # jitter: not all alike


def test_latency_delays_a_stream_once_not_per_chunk(faults: FaultClient, upstreams: dict[str, str]) -> None:
    name = f"src{next(_names)}"
    port = faults.create_proxy(name, upstreams["source"]).port
    try:
        faults.add_toxic(name, "latency", attributes={"latency": 200})
        with _connect(port) as sock:
            started = time.monotonic()
            data = _read_all(sock)
            elapsed = time.monotonic() - started
    finally:
        faults.delete_proxy(name)
    assert len(data) == SOURCE_BYTES
    assert 0.2 <= elapsed < 3.0, (elapsed, len(data))  # chunks pipelined, not 200 ms each


def test_bandwidth_caps_throughput(faults: FaultClient, upstreams: dict[str, str]) -> None:
    name = f"src{next(_names)}"
    port = faults.create_proxy(name, upstreams["source"]).port
    rate_kb_s = 400
    try:
        with _connect(port) as sock:
            started = time.monotonic()
            assert len(_read_all(sock)) == SOURCE_BYTES
            unlimited_s = time.monotonic() - started
        faults.add_toxic(name, "bandwidth", attributes={"rate": rate_kb_s})
        with _connect(port) as sock:
            started = time.monotonic()
            assert len(_read_all(sock)) == SOURCE_BYTES
            limited_s = time.monotonic() - started
    finally:
        faults.delete_proxy(name)
    expected_s = SOURCE_BYTES / (rate_kb_s * 1000)  # 0.5 s
    assert limited_s >= 0.9 * expected_s, limited_s
    assert unlimited_s < expected_s / 2, unlimited_s


def test_down_refuses_new_connections_and_drops_live_ones(faults: FaultClient, proxy: tuple[str, int]) -> None:
    name, port = proxy
    live = _connect(port)
    _round_trip(live)
    with faults.down(name) as state:
        assert not state.enabled
        with pytest.raises(ConnectionRefusedError):
            _connect(port)
        live.settimeout(2)
        try:
            assert live.recv(10) == b""  # closed by the proxy
        except ConnectionResetError:
            pass
    live.close()
    with _connect(port) as sock:  # back, on the same port
        _round_trip(sock)
    assert faults.proxy(name).enabled


def test_reset_peer_resets_at_once_or_after_its_timeout(faults: FaultClient, proxy: tuple[str, int]) -> None:
    name, port = proxy
    with faults.toxic(name, "reset_peer"), pytest.raises(ConnectionResetError):
        with _connect(port) as sock:  # on loopback the RST can beat connect() itself
            sock.sendall(b"x")
            sock.recv(10)
    with faults.toxic(name, "reset_peer", attributes={"timeout": 300}):
        with _connect(port) as sock:
            started = time.monotonic()
            _round_trip(sock)  # works until the timer fires
            with pytest.raises(ConnectionResetError):
                sock.recv(10)
            assert time.monotonic() - started >= 0.29


def test_timeout_holds_data_then_closes(faults: FaultClient, proxy: tuple[str, int]) -> None:
    name, port = proxy
    with faults.toxic(name, "timeout", attributes={"timeout": 0}):  # hang: nothing comes back, nothing closes
        with _connect(port, timeout_s=0.4) as sock:
            sock.sendall(b"lost")
            with pytest.raises(socket.timeout):
                sock.recv(10)
    with _connect(port) as sock:
        _round_trip(sock)
    with faults.toxic(name, "timeout", attributes={"timeout": 300}):
        with _connect(port) as sock:
            started = time.monotonic()
            sock.sendall(b"lost")
            assert sock.recv(10) == b""  # no data, then a close
            assert time.monotonic() - started >= 0.29


def test_limit_data_cuts_the_stream(faults: FaultClient, upstreams: dict[str, str]) -> None:
    name = f"src{next(_names)}"
    port = faults.create_proxy(name, upstreams["source"]).port
    try:
        faults.add_toxic(name, "limit_data", attributes={"bytes": 1000})
        with _connect(port) as sock:
            assert len(_read_all(sock)) == 1000
    finally:
        faults.delete_proxy(name)


def test_slow_close_delays_the_close_not_the_data(faults: FaultClient, upstreams: dict[str, str]) -> None:
    name = f"src{next(_names)}"
    port = faults.create_proxy(name, upstreams["source"]).port
    try:
        faults.add_toxic(name, "slow_close", attributes={"delay": 400})
        with _connect(port) as sock:
            started = time.monotonic()
            got = 0
            while got < SOURCE_BYTES:
                got += len(sock.recv(65536))
            data_s = time.monotonic() - started
            assert sock.recv(10) == b""
            close_s = time.monotonic() - started
    finally:
        faults.delete_proxy(name)
    assert close_s >= 0.39 and close_s - data_s >= 0.2, (data_s, close_s)


def test_toxicity_is_rolled_per_connection(faults: FaultClient, proxy: tuple[str, int]) -> None:
    name, port = proxy

    def reset_count(connections: int) -> int:
        resets = 0
        for _ in range(connections):
            try:  # on loopback the RST can beat connect() itself
                with _connect(port) as sock:
                    _round_trip(sock)
            except (ConnectionResetError, AssertionError):
                resets += 1
        return resets

    with faults.toxic(name, "reset_peer", toxicity=0.0):
        assert reset_count(10) == 0
    with faults.toxic(name, "reset_peer", toxicity=0.5):
        assert 0 < reset_count(40) < 40  # all or none: odds of 2 in 10^12


def test_the_api_refuses_bad_input_with_json_errors(faults: FaultClient, proxy: tuple[str, int]) -> None:
    name, _ = proxy
    bad = [("POST", "/proxies", {"name": name, "upstream": "127.0.0.1:1"}, 409),
           ("POST", "/proxies", {"name": "x", "upstream": "10.1.1.1:80"}, 400),
           ("POST", "/proxies", {"name": "bad name", "upstream": "127.0.0.1:1"}, 400),
           ("POST", "/proxies", [1, 2], 400),
           ("GET", "/proxies/nope", None, 404),
           ("POST", f"/proxies/{name}/toxics", {"type": "netem"}, 400),
           ("POST", f"/proxies/{name}/toxics", {"type": "latency", "attributes": {"latency": "5"}}, 400),
           ("DELETE", f"/proxies/{name}/toxics/nope", None, 404),
           ("POST", f"/proxies/{name}", {"enabled": "no"}, 400),
           ("GET", "/nowhere", None, 404)]
    for method, path, body, status in bad:
        response = requests.request(method, faults.url + path, json=body, timeout=5)
        assert response.status_code == status, (method, path, response.text)
        assert "error" in response.json()
    garbage = requests.post(faults.url + "/proxies", data=b"{not json", timeout=5)
    assert garbage.status_code == 400 and "error" in garbage.json()
    faults.add_toxic(name, "latency", attributes={"latency": 1})
    with pytest.raises(ControlError, match="409"):
        faults.add_toxic(name, "latency", attributes={"latency": 1})
    faults.set_enabled(name, False)
    faults.reset()  # every proxy up, every toxic gone
    state = faults.proxy(name)
    assert state.enabled and state.toxics == ()


def test_an_unreachable_upstream_closes_the_client(faults: FaultClient) -> None:
    closed_port = services.free_port()
    name = f"dead{next(_names)}"
    port = faults.create_proxy(name, f"127.0.0.1:{closed_port}").port
    try:
        with _connect(port, timeout_s=3) as sock:
            try:
                assert sock.recv(10) == b""
            except ConnectionResetError:
                pass
        assert faults.proxy(name).stats["refused_upstream"] == 1
    finally:
        faults.delete_proxy(name)


def test_proxy_overhead_on_a_small_get_stays_small(faults: FaultClient, upstreams: dict[str, str],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """The proxy is in the measuring path: its added p50 on a keep-alive GET must stay well under a millisecond-ish."""
    name = f"http{next(_names)}"
    port = faults.create_proxy(name, upstreams["http"]).port
    direct_url, proxied_url = f"http://{upstreams['http']}/", f"http://127.0.0.1:{port}/"
    samples: dict[str, list[float]] = {direct_url: [], proxied_url: []}
    try:
        with requests.Session() as direct_session, requests.Session() as proxied_session:
            sessions = {direct_url: direct_session, proxied_url: proxied_session}
            for i in range(1000):  # interleaved, so the machine's drift hits both alike
                for url in (direct_url, proxied_url) if i % 2 else (proxied_url, direct_url):
                    started = time.perf_counter()
                    sessions[url].get(url, timeout=5)
                    if i >= 50:
                        samples[url].append(time.perf_counter() - started)
    finally:
        faults.delete_proxy(name)
    direct, proxied = (statistics.median(samples[url]) * 1000 for url in (direct_url, proxied_url))
    with capsys.disabled():
        print(f"\nfault proxy on a small keep-alive GET: direct p50 {direct:.3f} ms, proxied {proxied:.3f} ms, "
              f"added {proxied - direct:.3f} ms")
    assert proxied - direct < 2.0, (direct, proxied)


def test_the_server_starts_its_command_line_proxies(tmp_path: Path, upstreams: dict[str, str]) -> None:
    service = services.start_faults(tmp_path, {"echo": upstreams["echo"]}).wait_ready()
    try:
        state = FaultClient(service.url).proxy("echo")
        assert state.listen == service.extra["echo"] and state.enabled
        with _connect(state.port) as sock:
            _round_trip(sock)
    finally:
        service.stop()
    assert not service.process.alive()
