"""Real-browser tests: headless Chromium, driven over the DevTools protocol, opens the report and the dashboard.

Chromium runs as a managed child (own process group, stopped in teardown). Screenshots go to
test-artifacts/ (git-ignored) so a person can look at what the browser drew.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import socket
import struct
import time
import urllib.parse
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import requests

from statelab.dashboard import Dashboard
from statelab.procs import ManagedProcess
from statelab.report.html import write_html
from tests.support.dashboard import FakeControl, StubLab, fake_stats
from tests.support.journals import SECONDS, synthetic_journal

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--remote-debugging-port=0")
START_TIMEOUT_S = 30.0
CDP_TIMEOUT_S = 15.0


class WebSocket:
    """Just enough of RFC 6455 for the DevTools protocol: text frames, masked sends, no extensions.

    Written out (about 50 lines) so the browser tests need nothing beyond the standard library.
    No Origin header is sent, which is what Chromium's DevTools endpoint accepts by default.
    """

    def __init__(self, url: str, timeout_s: float) -> None:
        u = urllib.parse.urlsplit(url)
        self.sock = socket.create_connection((u.hostname or "127.0.0.1", u.port or 80), timeout=timeout_s)
        self.buf = bytearray()
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {u.path}{'?' + u.query if u.query else ''} HTTP/1.1\r\nHost: {u.netloc}\r\n"
                           f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, _, rest = bytes(self.buf).partition(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise AssertionError(f"no WebSocket upgrade from {url}: {head[:200]!r}")
        self.buf = bytearray(rest)

    def _fill(self) -> None:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("the browser closed the DevTools connection")
        self.buf += chunk

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def send(self, text: str) -> None:
        data, mask = text.encode(), os.urandom(4)
        n = len(data)
        size = bytes([0x80 | n]) if n < 126 else (bytes([0xFE]) + struct.pack("!H", n) if n < 65536
                                                   else bytes([0xFF]) + struct.pack("!Q", n))
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.sock.sendall(b"\x81" + size + mask + masked)

    def recv(self) -> str:
        message = b""
        while True:
            b0, b1 = self._take(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._take(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._take(8))[0]
            mask = self._take(4) if b1 & 0x80 else b""
            payload = self._take(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            opcode = b0 & 0x0F
            if opcode == 0x8:
                raise ConnectionError("the browser closed the DevTools connection")
            if opcode in (0x0, 0x1, 0x2):
                message += payload
                if b0 & 0x80:
                    return message.decode()

    def close(self) -> None:
        try:
            self.sock.sendall(b"\x88\x80" + os.urandom(4))
        except OSError:
            pass
        self.sock.close()


class DevTools:
    """A minimal DevTools-protocol client for one page: send a command, wait for its answer."""

    def __init__(self, ws_url: str) -> None:
        self.ws = WebSocket(ws_url, CDP_TIMEOUT_S)
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        deadline = time.monotonic() + CDP_TIMEOUT_S
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise AssertionError(f"{method} failed: {msg['error']}")
                return dict(msg.get("result", {}))
            if "method" in msg:
                self.events.append(msg)
        raise AssertionError(f"no answer to {method} within {CDP_TIMEOUT_S} s")

    def eval(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'")

    def wait_for(self, expression: str, timeout_s: float = 10.0) -> Any:
        """Poll a JS expression until it is truthy; return its value."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = self.eval(expression)
            if value:
                return value
            assert time.monotonic() < deadline, f"still false after {timeout_s} s: {expression}"
            time.sleep(0.1)

    def click(self, selector: str) -> None:
        """Click the element's centre with real mouse events, as a person would."""
        box = self.eval(f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
                        f".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; }})()")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def screenshot(self, name: str, full_page: bool = True) -> Path:
        """Save a PNG of the whole page (or of what the viewport shows) under test-artifacts/; return its path."""
        if full_page:
            size = self.send("Page.getLayoutMetrics")["cssContentSize"]
            shot = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                             clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1})
        else:
            shot = self.send("Page.captureScreenshot", format="png")
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / name
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def errors(self) -> list[str]:
        """Return page exceptions and console errors seen so far (CSP violations among them)."""
        self.send("Runtime.evaluate", expression="0")  # flush pending events into self.events
        out = []
        for ev in self.events:
            if ev["method"] == "Runtime.exceptionThrown":
                out.append(str(ev["params"]["exceptionDetails"]))
            elif ev["method"] == "Log.entryAdded" and ev["params"]["entry"]["level"] == "error":
                out.append(ev["params"]["entry"]["text"])
        return out

    def close(self) -> None:
        self.ws.close()


@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start headless Chromium in its own process group; yield its DevTools HTTP base URL."""
    binary = next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)
    if binary is None:
        pytest.skip("Chromium is not installed (apt-get install chromium): browser tests skipped")
    profile = tmp_path_factory.mktemp("chromium-profile")
    port_file = profile / "DevToolsActivePort"
    proc = ManagedProcess("chromium", [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                          profile.parent / "chromium.log", probe=lambda: _devtools_port(port_file) is not None)
    try:
        proc.start().wait_ready(START_TIMEOUT_S)
        yield f"http://127.0.0.1:{_devtools_port(port_file)}"
    finally:
        proc.stop()


def _devtools_port(port_file: Path) -> int | None:
    """Return the port Chromium wrote (first line of DevToolsActivePort), once the file is complete."""
    try:
        lines = port_file.read_text().split()
    except FileNotFoundError:
        return None
    return int(lines[0]) if len(lines) >= 2 and lines[0].isdigit() else None


@pytest.fixture
def page(chromium: str) -> Iterator[DevTools]:
    """A fresh tab at a projector-like size, closed afterwards."""
    target = requests.put(f"{chromium}/json/new?about:blank", timeout=10).json()
    tab = DevTools(target["webSocketDebuggerUrl"])
    try:
        for domain in ("Page", "Runtime", "Log"):
            tab.send(f"{domain}.enable")
        tab.send("Emulation.setDeviceMetricsOverride", width=1600, height=1000, deviceScaleFactor=1, mobile=False)
        yield tab
    finally:
        tab.close()
        requests.get(f"{chromium}/json/close/{target['id']}", timeout=10)


CHART_FACTS = """(() => [...document.querySelectorAll('svg.chart')].map(s => {
  const r = s.getBoundingClientRect();
  return {cls: s.getAttribute('class'), w: r.width, h: r.height,
          series: [...s.querySelectorAll('polyline.series')].map(p => [p.dataset.series, p.points.numberOfItems,
                                                                      p.getBBox().width]),
          bars: [...s.querySelectorAll('rect.bar')].map(b => b.getBoundingClientRect().height),
          events: s.querySelectorAll('g.event').length};
}))()"""


OPEN_DETAILS = "document.querySelectorAll('details').forEach(d => d.open = true)"


def test_report_renders_its_charts(page: DevTools, tmp_path: Path) -> None:
    path = tmp_path / "report.html"
    write_html(synthetic_journal(), path)
    page.open(path.as_uri())
    assert page.eval("[...document.querySelectorAll('details')].every(d => !d.open)")  # folded at first
    page.eval(OPEN_DETAILS)
    charts = page.eval(CHART_FACTS)
    assert len(charts) == 11  # the first screen's key chart, then five per app
    assert all(c["w"] > 300 and c["h"] > 150 for c in charts), charts
    traffic = [c for c in charts if "traffic" in c["cls"]]
    for c in traffic:
        assert [(name, n) for name, n, _ in c["series"]] == [("requests/s", SECONDS), ("errors/s", SECONDS)]
        assert all(width > 100 for _, _, width in c["series"])  # drawn across the plot, not collapsed
        assert c["events"] == 2
    shares = [c for c in charts if "shares" in c["cls"]]
    assert all(len(c["bars"]) == 3 and min(c["bars"]) > 10 for c in shares)
    assert page.eval("document.querySelectorAll('script').length") == 0
    assert page.errors() == []
    shot = page.screenshot("report.png")
    assert shot.stat().st_size > 20_000


REAL_JOURNAL = Path(__file__).resolve().parent / "fixtures" / "journal-quick-run.json"
PROJECTOR = {"width": 1280, "height": 720}


def test_report_first_screen_answers_at_projector_size(page: DevTools, tmp_path: Path) -> None:
    """At 1280x720 the summary (a sentence, badges and a chart per scenario) shows without scrolling.

    The journal is a real `statelab run all --quick` on a busy machine, with a deviated verdict: the
    longest sentences a run makes.
    """
    path = tmp_path / "report.html"
    write_html(json.loads(REAL_JOURNAL.read_text()), path)
    page.send("Emulation.setDeviceMetricsOverride", deviceScaleFactor=1, mobile=False, **PROJECTOR)
    page.open(path.as_uri())
    box = page.eval("(() => { const r = document.getElementById('summary').getBoundingClientRect(); "
                    "return {top: r.top, bottom: r.bottom, right: r.right}; })()")
    assert box["bottom"] <= PROJECTOR["height"] and box["right"] <= PROJECTOR["width"], box
    assert page.eval("document.documentElement.scrollWidth") <= PROJECTOR["width"]
    cards = page.eval("""[...document.querySelectorAll('#summary .card')].map(c => ({
        scenario: c.dataset.scenario, sentence: c.querySelector('.sentence').textContent,
        badges: c.querySelectorAll('.badge').length, font: parseFloat(getComputedStyle(c.querySelector('.sentence')).fontSize),
        chart: c.querySelector('svg.chart').getBoundingClientRect().height}))""")
    assert [c["scenario"] for c in cards] == ["rolling-deploy", "nat-hotspot", "local-disk-upload",
                                              "cold-cache-autoscale"]
    assert all(c["badges"] == 2 and c["chart"] > 120 and c["font"] >= 16 for c in cards), cards
    assert "60 of 60 users logged out" in cards[0]["sentence"]
    assert "DEVIATED" in cards[1]["sentence"]  # a deviation shows on the first screen
    page.screenshot("report-first-screen.png", full_page=False)
    page.eval(OPEN_DETAILS)
    # numbers right-aligned in the tables; every direct label inside its chart
    assert set(page.eval("[...document.querySelectorAll('td.num')].map(td => getComputedStyle(td).textAlign)")) \
        == {"right"}
    overflow = page.eval("""[...document.querySelectorAll('svg.chart')].flatMap(svg =>
        [...svg.querySelectorAll('text.direct-label')].filter(t => {
            const b = t.getBBox(); return b.x + b.width > svg.viewBox.baseVal.width || t.textContent.endsWith('…'); })
        .map(t => t.textContent))""")
    assert overflow == []
    assert page.errors() == []
    page.screenshot("report-details.png")


COSTS_JOURNAL = Path(__file__).resolve().parent / "fixtures" / "journal-costs-quick-run.json"
KEY_CHART_TEXT = """[...document.querySelectorAll('#summary svg.chart')].flatMap(svg =>
    [...svg.querySelectorAll('g.legend-key text, text.direct-label, text.event-name')].map(t => {
        const b = t.getBBox();
        return {text: t.textContent, right: b.x + b.width, width: svg.viewBox.baseVal.width}; }))"""


def test_costs_first_screen_shows_whole_cards_at_projector_size(page: DevTools, tmp_path: Path) -> None:
    """At 1280x720 the costs run's first cards show their sentence, badges and chart; every series is named in full.

    The journal is a real `statelab run costs --quick`: seven scenarios with three to five cases each,
    so the summary scrolls, but no card is taller than the screen and the first row fits on it.
    """
    path = tmp_path / "costs.html"
    write_html(json.loads(COSTS_JOURNAL.read_text()), path)
    page.send("Emulation.setDeviceMetricsOverride", deviceScaleFactor=1, mobile=False, **PROJECTOR)
    page.open(path.as_uri())
    assert page.eval("document.documentElement.scrollWidth") <= PROJECTOR["width"]
    cards = page.eval("""[...document.querySelectorAll('#summary .card')].map(c => {
        const s = c.querySelector('.sentence'), chart = c.querySelector('svg.chart').getBoundingClientRect();
        const r = c.getBoundingClientRect();
        return {scenario: c.dataset.scenario, top: r.top, bottom: r.bottom, right: r.right,
                sentence: s.textContent, clipped: s.scrollHeight > s.clientHeight + 1,
                badges: c.querySelectorAll('.badge').length, font: parseFloat(getComputedStyle(s).fontSize),
                chart: chart.height, chart_bottom: chart.bottom}; })""")
    assert [c["scenario"] for c in cards] == ["redis-outage", "jwt-theft", "s3-latency", "server-crash", "worker-crash",
                                              "worker-split", "lost-update"]
    assert all(c["bottom"] - c["top"] <= PROJECTOR["height"] - 80 for c in cards), cards  # each fits a screen
    first_row = [c for c in cards if c["top"] == cards[0]["top"]]
    assert len(first_row) == 2 and all(c["bottom"] <= PROJECTOR["height"] for c in first_row), first_row
    assert all(c["right"] <= PROJECTOR["width"] and not c["clipped"] and c["font"] >= 16 and c["chart"] > 120
               and c["badges"] >= 3 and "its limit" not in c["sentence"] for c in cards), cards
    assert "12 of 12 users logged out" in cards[0]["sentence"] and "3,599" in cards[1]["sentence"]
    texts = page.eval(KEY_CHART_TEXT)
    assert {t["text"] for t in texts} >= {"no persistence + readyz checks", "JWT 1 h + denylist",
                                          "stateless (round-robin)", "S3 + 50 ms + read cache"}
    cut = [t for t in texts if t["right"] > t["width"] or t["text"].endswith("…")]
    assert cut == []
    assert page.errors() == []
    page.screenshot("report-costs-first-screen.png", full_page=False)


def _check_deploy_shows(page: DevTools, dash_url: str, name: str, timeout_s: float) -> None:
    """Open the dashboard, click deploy, and wait until app-1's card shows a new state or generation."""
    page.open(dash_url)
    page.wait_for("document.querySelectorAll('#instances .instance').length >= 2")
    page.wait_for("document.getElementById('connection').textContent === 'live'")
    card = "document.querySelector('#instances .instance[data-id=\"app-1\"]')"
    before = page.eval(f"[{card}.dataset.state, {card}.dataset.generation]")
    assert before[0] == "ready"
    # totals plus one line per instance, on both live charts
    page.wait_for("document.querySelectorAll('#timeline polyline.series').length === 4 && "
                  "document.querySelectorAll('#sessions-chart polyline.series').length === 3")
    page.wait_for("document.querySelector('#timeline polyline.series-rps').points.numberOfItems >= 2")
    assert page.eval("document.querySelector('#timeline polyline.series-rps').getBBox().width") > 0
    page.click("#deploy")
    page.wait_for(f"{card}.dataset.state !== 'ready' || {card}.dataset.generation !== '{before[1]}'", timeout_s)
    page.wait_for(f"{card}.dataset.generation !== '{before[1]}'", timeout_s)
    page.wait_for("document.getElementById('op-result').textContent === 'deploy: done'", timeout_s)
    page.wait_for("document.querySelectorAll('#timeline g.event').length >= 1")  # the deploy, on the chart
    wires = page.eval("document.querySelectorAll('#wires line').length")
    assert wires >= 2
    assert page.errors() == []
    page.screenshot(name)


def test_dashboard_with_a_stub_lab(page: DevTools) -> None:
    lab = StubLab()

    def on_call(path: str, body: dict[str, Any]) -> None:
        if path == "/deploy":
            lab.generation += 1

    with ExitStack() as stack:
        control = FakeControl(on_call)
        stack.callback(control.stop)
        dash = stack.enter_context(Dashboard(lab, control.url, interval_s=0.3, stats=fake_stats))
        _check_deploy_shows(page, dash.url, "dashboard-stub.png", 5.0)
        assert control.calls == [("/deploy", {"batch": 1, "drain": True})]
        text = page.eval("document.getElementById('events').textContent")
        assert "<b>x</b>" in text  # inserted as text, not markup


@pytest.mark.live
def test_dashboard_of_a_real_lab(page: DevTools, small_lab: tuple[Any, Any]) -> None:
    lab, control = small_lab
    with ExitStack() as stack:
        dash = stack.enter_context(Dashboard(lab, control.url))
        stop_traffic = _background_traffic(lab.balancer_url)
        stack.callback(stop_traffic)
        _check_deploy_shows(page, dash.url, "dashboard-live.png", 30.0)


def _background_traffic(url: str) -> Callable[[], None]:
    """Send a trickle of requests so the dashboard has rates to draw; return the stopper."""
    import threading

    stop = threading.Event()

    def run() -> None:
        with requests.Session() as s:
            while not stop.wait(0.02):
                try:
                    s.get(url + "/healthz", timeout=2)
                except requests.RequestException:
                    pass

    t = threading.Thread(target=run, daemon=True)
    t.start()

    def stopper() -> None:
        stop.set()
        t.join(5)

    return stopper


# --- Firefox, over WebDriver BiDi (Firefox dropped the DevTools protocol) -----------------------

FIREFOX_NAMES = ("firefox-esr", "firefox")


class Bidi:
    """A minimal WebDriver BiDi client: one session, the first browsing context."""

    def __init__(self, port: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                self.ws = WebSocket(f"ws://127.0.0.1:{port}/session", CDP_TIMEOUT_S)
                break
            except (OSError, AssertionError):
                assert time.monotonic() < deadline, "Firefox's WebDriver BiDi endpoint never answered"
                time.sleep(0.2)
        self.ids = itertools.count(1)
        self.call("session.new", capabilities={})
        self.context = self.call("browsingContext.getTree")["contexts"][0]["context"]

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == msg_id:
                assert msg.get("type") != "error", f"{method} failed: {msg}"
                return dict(msg["result"])

    def eval(self, expression: str) -> Any:
        result = self.call("script.evaluate", expression=expression, target={"context": self.context},
                           awaitPromise=True)
        assert result.get("type") == "success", f"{expression!r} threw: {result}"
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.eval(expression):
            assert time.monotonic() < deadline, f"still false after {timeout_s} s: {expression}"
            time.sleep(0.1)


def test_dashboard_in_firefox(tmp_path: Path) -> None:
    binary = next((p for p in map(shutil.which, FIREFOX_NAMES) if p), None)
    if binary is None:
        pytest.skip("Firefox is not installed (apt-get install firefox-esr): Firefox check skipped")
    from statelab.procs import free_port

    lab = StubLab()
    with ExitStack() as stack:
        control = FakeControl(lambda path, body: setattr(lab, "generation", lab.generation + 1))
        stack.callback(control.stop)
        dash = stack.enter_context(Dashboard(lab, control.url, interval_s=0.3, stats=fake_stats))
        port = free_port()
        profile = tmp_path / "firefox-profile"
        profile.mkdir()
        firefox = ManagedProcess("firefox", [binary, "--headless", "--no-remote", "--profile", str(profile),
                                             f"--remote-debugging-port={port}", "about:blank"], tmp_path / "firefox.log")
        firefox.start()
        stack.callback(firefox.stop)
        ff = Bidi(port)
        stack.callback(ff.ws.close)
        ff.call("browsingContext.setViewport", context=ff.context, viewport={"width": 1600, "height": 1100})
        ff.call("browsingContext.navigate", context=ff.context, url=dash.url, wait="complete")
        ff.wait_for("document.getElementById('connection').textContent === 'live' && "
                    "document.querySelectorAll('#instances .instance').length === 2 && "
                    "document.querySelectorAll('#timeline polyline.series').length === 4")
        card = "document.querySelector('#instances .instance[data-id=\"app-1\"]')"
        assert ff.eval(f"{card}.dataset.generation") == "1"
        ff.eval("document.getElementById('deploy').click()")
        ff.wait_for(f"{card}.dataset.generation === '2'")
        ff.wait_for("document.getElementById('op-result').textContent === 'deploy: done'")
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ff.call("browsingContext.captureScreenshot", context=ff.context)["data"]
        (ARTIFACTS / "dashboard-firefox.png").write_bytes(base64.b64decode(shot))
        assert control.calls == [("/deploy", {"batch": 1, "drain": True})]
