"""The live dashboard of a running lab: one page, its data stream, and its buttons, on a loopback port.

A sampler thread reads the lab once a second (status, the balancer's per-backend counters turned
into rates, each instance's `/stats` with a short timeout) and keeps a rolling history. The page
gets it as Server-Sent Events and only ever talks to this server: its buttons POST here and are
relayed to the lab's control API, the same one the CLI uses.

Endpoints: `GET /` (the page), `GET /web/<file>` (its script and style), `GET /api/state` (one
snapshot), `GET /api/events` (a snapshot per sample, as SSE), `POST /api/{deploy,kill,scale,policy}`
(relayed to the control API; JSON bodies only, which a cross-site form cannot send).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Callable, Protocol

import requests

from statelab.balancer.policies import POLICY_NAMES
from statelab.control import CONTROL_TIMEOUT_S, read_json_object
from statelab.loopback import LOOPBACK_HOST, LOOPBACK_NAMES, is_loopback
from statelab.measure import fetch_stats

log = logging.getLogger(__name__)

SAMPLE_INTERVAL_S = 1.0
STATS_TIMEOUT_S = 0.5
SSE_KEEPALIVE_S = 15.0
HISTORY_POINTS = 180
CONTROL_OPS = ("deploy", "kill", "scale", "policy")
WEB_FILES = {"dashboard.html": "text/html; charset=utf-8", "dashboard.js": "text/javascript; charset=utf-8",
             "dashboard.css": "text/css; charset=utf-8"}
SECURITY_HEADERS = (
    ("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                                "connect-src 'self'; frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Cache-Control", "no-store"),
)


class StatusSource(Protocol):
    """What the dashboard needs of a lab: `status()` returning an object with `to_json()`."""

    def status(self) -> Any: ...


def instance_stats(url: str) -> dict[str, Any] | None:
    """Return an instance's `/stats`, or None if it does not answer in time (restarting, killed)."""
    return fetch_stats(url, timeout_s=STATS_TIMEOUT_S)


class Sampler:
    """Turn successive lab readings into rates and a rolling history (thread-safe snapshots)."""

    def __init__(self, lab: StatusSource, stats: Callable[[str], dict[str, Any] | None] = instance_stats,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.lab = lab
        self._stats = stats
        self._clock = clock
        self._t0 = clock()
        self._prev: dict[str, tuple[float, float, float, float]] = {}  # id -> (t, requests, errors, db)
        self._history: deque[dict[str, Any]] = deque(maxlen=HISTORY_POINTS)
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="dashboard-stats")
        self._cond = threading.Condition()
        self._snapshot: dict[str, Any] = {"seq": 0, "instances": [], "history": [], "events": []}

    def now(self) -> float:
        lab_now = getattr(self.lab, "now", None)
        return float(lab_now()) if callable(lab_now) else round(self._clock() - self._t0, 3)

    def sample(self) -> dict[str, Any]:
        """Read the lab once and publish a new snapshot."""
        t = self.now()
        try:
            status = dict(self.lab.status().to_json())
            error = None
        except Exception as exc:  # the lab may be between states; show it, keep sampling
            log.debug("dashboard: status failed", exc_info=True)
            status, error = {}, f"{type(exc).__name__}: {exc}"
        instances = [dict(i) for i in status.get("instances", ())]
        stats = list(self._pool.map(lambda i: self._stats(str(i.get("url", ""))), instances))
        total = {"rps": 0.0, "eps": 0.0, "active": 0, "sessions_in_memory": 0}
        seen = set()
        for inst, st in zip(instances, stats):
            iid = str(inst.get("id"))
            seen.add(iid)
            reqs, errs = float(inst.get("requests") or 0), float(inst.get("errors") or 0)
            db = float((st or {}).get("db_queries") or 0)
            prev = self._prev.get(iid)
            if prev and t > prev[0]:
                dt = t - prev[0]
                # counters restart with a new process or backend: never show a negative rate
                inst["rps"] = round(max(0.0, reqs - prev[1]) / dt, 1)
                inst["eps"] = round(max(0.0, errs - prev[2]) / dt, 1)
                inst["db_qps"] = round(max(0.0, db - prev[3]) / dt, 1) if st else None
            else:
                inst["rps"] = inst["eps"] = 0.0
                inst["db_qps"] = None
            self._prev[iid] = (t, reqs, errs, db)
            inst["stats"] = st
            total["rps"] += inst["rps"]
            total["eps"] += inst["eps"]
            total["active"] += int(inst.get("active") or 0)
            total["sessions_in_memory"] += int((st or {}).get("sessions_in_memory") or 0)
        for gone in set(self._prev) - seen:
            del self._prev[gone]
        total["rps"], total["eps"] = round(total["rps"], 1), round(total["eps"], 1)
        self._history.append({"t": t, "rps": total["rps"], "eps": total["eps"],
                              "sessions": total["sessions_in_memory"],
                              "per_instance": {i["id"]: i["rps"] for i in instances},
                              "sessions_by_instance": {i["id"]: (i["stats"] or {}).get("sessions_in_memory")
                                                       for i in instances}})
        with self._cond:
            snap = {
                "seq": self._snapshot["seq"] + 1, "t": t, "error": error,
                "app": status.get("app"), "policy": status.get("policy"), "lb": status.get("lb"),
                "balancer_url": status.get("balancer_url"), "stores": [list(s) for s in status.get("stores", ())],
                "instances": instances, "events": list(status.get("events", ()))[-20:], "totals": total,
                "history": list(self._history), "policies": list(POLICY_NAMES),
            }
            self._snapshot = snap
            self._cond.notify_all()
        return snap

    def snapshot(self) -> dict[str, Any]:
        with self._cond:
            return self._snapshot

    def wait_newer(self, seq: int, timeout_s: float) -> dict[str, Any]:
        """Block until a snapshot newer than seq exists (or timeout_s passes); return the latest."""
        with self._cond:
            self._cond.wait_for(lambda: self._snapshot["seq"] > seq, timeout_s)
            return self._snapshot

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class Dashboard:
    """Serve the dashboard of `lab` on 127.0.0.1 (a free port unless told), relaying buttons to control_url."""

    def __init__(self, lab: StatusSource, control_url: str, host: str = LOOPBACK_HOST, port: int = 0,
                 interval_s: float = SAMPLE_INTERVAL_S,
                 stats: Callable[[str], dict[str, Any] | None] = instance_stats) -> None:
        self.control_url = control_url.rstrip("/")
        self.interval_s = interval_s
        self.sampler = Sampler(lab, stats)
        self.stopping = threading.Event()
        self._kick = threading.Event()
        self.httpd = ThreadingHTTPServer((host, port), _make_handler(self))
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.url = f"http://{host}:{self.port}/"
        self._threads = [threading.Thread(target=self.httpd.serve_forever, name="dashboard-http", daemon=True),
                         threading.Thread(target=self._sample_loop, name="dashboard-sampler", daemon=True)]

    def start(self) -> "Dashboard":
        self.sampler.sample()
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        """Stop sampling, end the event streams, close the port (safe to call twice, or unstarted)."""
        self.stopping.set()
        self._kick.set()
        self.sampler.wake()
        if self._threads[0].is_alive():  # shutdown() waits forever on a server that never served
            self.httpd.shutdown()
            self._threads[1].join(timeout=5)
        self.httpd.server_close()
        self.sampler.close()

    def __enter__(self) -> "Dashboard":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _sample_loop(self) -> None:
        while not self.stopping.is_set():
            self._kick.wait(self.interval_s)
            self._kick.clear()
            if self.stopping.is_set():
                return
            try:
                self.sampler.sample()
            except Exception:  # keep the dashboard alive whatever one sample did
                log.exception("dashboard sample failed")

    def sample_soon(self) -> None:
        """Sample now rather than at the next tick (after a button, so the page reacts at once)."""
        self._kick.set()

    def relay(self, op: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Send one control operation to the lab's control API and return its (status, JSON)."""
        try:
            resp = requests.post(f"{self.control_url}/{op}", json=body, timeout=CONTROL_TIMEOUT_S)
            payload = resp.json()
        except requests.RequestException as exc:
            return 502, {"error": f"the lab's control API at {self.control_url} did not answer: {exc}"}
        except ValueError:
            return 502, {"error": f"the control API answered {resp.status_code} without JSON"}
        finally:
            self.sample_soon()
        return resp.status_code, payload if isinstance(payload, dict) else {"result": payload}


def _web_file(name: str) -> bytes:
    return resources.files("statelab").joinpath("web", name).read_bytes()


def _make_handler(dash: Dashboard) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _allowed(self) -> bool:
            """Loopback clients only, addressing us by a loopback name (no DNS rebinding)."""
            host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
            if not is_loopback(self.client_address[0]) or host not in LOOPBACK_NAMES:
                self._refuse(403, "the dashboard accepts loopback clients only")
                return False
            return True

        def do_GET(self) -> None:
            if not self._allowed():
                return
            path = self.path.split("?", 1)[0]
            if path in ("/", "/index.html"):
                self._send(200, _web_file("dashboard.html"), WEB_FILES["dashboard.html"])
            elif path.startswith("/web/") and path[5:] in WEB_FILES:
                self._send(200, _web_file(path[5:]), WEB_FILES[path[5:]])
            elif path == "/api/state":
                self._reply(200, dash.sampler.snapshot())
            elif path == "/api/events":
                self._stream()
            else:
                self._reply(404, {"error": f"nothing at {path}"})

        def do_POST(self) -> None:
            if not self._allowed():
                return
            path = self.path.split("?", 1)[0]
            op = path.removeprefix("/api/")
            if not path.startswith("/api/") or op not in CONTROL_OPS:
                self._refuse(404, f"no operation at {path}")
                return
            if (self.headers.get("Content-Type") or "").split(";")[0].strip() != "application/json":
                self._refuse(415, "send the operation as application/json")
                return
            try:
                body = read_json_object(self)
            except ValueError as exc:
                self._reply(400, {"error": f"malformed JSON: {exc}"})
                return
            self._reply(*dash.relay(op, body))

        def _stream(self) -> None:
            """Send a snapshot per sample as Server-Sent Events until the client or the dashboard goes."""
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            for name, value in SECURITY_HEADERS:
                self.send_header(name, value)
            self.end_headers()
            self.close_connection = True
            seq = -1
            try:
                self.wfile.write(b"retry: 1000\n\n")
                while not dash.stopping.is_set():
                    snap = dash.sampler.wait_newer(seq, SSE_KEEPALIVE_S)
                    if dash.stopping.is_set():
                        break
                    if snap["seq"] > seq:
                        seq = snap["seq"]
                        self.wfile.write(b"data: " + json.dumps(snap, default=str).encode() + b"\n\n")
                    else:
                        self.wfile.write(b": keep-alive\n\n")
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError, OSError):
                pass

        def _refuse(self, status: int, message: str) -> None:
            """Answer an error and close: an unread request body must not be parsed as the next request."""
            self.close_connection = True
            self._reply(status, {"error": message})

        def _reply(self, status: int, payload: dict[str, Any]) -> None:
            self._send(status, json.dumps(payload, default=str).encode(), "application/json")

        def _send(self, status: int, data: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            if self.close_connection:
                self.send_header("Connection", "close")
            for name, value in SECURITY_HEADERS:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("dashboard: " + format, *args)

    return Handler


__all__ = ["Dashboard", "Sampler", "instance_stats"]
