"""The control API of a running lab (loopback HTTP + JSON) and the client the CLI uses to reach it.

`statelab up` serves it; `statelab deploy|kill|scale|policy|status` find it through the state file
that `up` writes, so a person can break the lab from a second shell while traffic flows.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests

from statelab.errors import ControlError, LabError
from statelab.loopback import LOOPBACK_HOST, is_loopback
from statelab.topology import Lab

log = logging.getLogger(__name__)

DEFAULT_STATE_FILE = Path(".statelab") / "lab.json"
CONTROL_TIMEOUT_S = 300.0
SIGNALS = {"TERM": signal.SIGTERM, "KILL": signal.SIGKILL, "INT": signal.SIGINT, "STOP": signal.SIGSTOP,
           "CONT": signal.SIGCONT}


class ControlServer:
    """Serve one Lab's operations on a loopback port, one operation at a time."""

    def __init__(self, lab: Lab, host: str = LOOPBACK_HOST, port: int = 0) -> None:
        self.lab = lab
        self._busy = threading.Lock()
        handler = _make_handler(self)
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://{host}:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="statelab-control", daemon=True)

    def start(self) -> "ControlServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def handle(self, method: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Run one control operation and return (status, JSON body)."""
        if method == "GET" and path == "/status":
            return 200, self.lab.status().to_json()
        ops = {
            "/deploy": lambda: self.lab.deploy(batch=int(body.get("batch", 1)), drain=bool(body.get("drain", True))),
            "/kill": lambda: self.lab.kill(str(body["id"]), SIGNALS[str(body.get("signal", "TERM")).upper()]),
            "/scale": lambda: self.lab.scale(int(body["count"])),
            "/policy": lambda: self.lab.set_policy(str(body["policy"])),
        }
        if method != "POST" or path not in ops:
            return 404, {"error": f"no control operation {method} {path}"}
        if not self._busy.acquire(blocking=False):
            return 409, {"error": "another operation is running: wait for it to finish"}
        try:
            ops[path]()
        except (KeyError, ValueError, TypeError) as exc:
            return 400, {"error": f"bad request for {path}: {exc}"}
        except LabError as exc:
            return 409, {"error": str(exc)}
        finally:
            self._busy.release()
        return 200, self.lab.status().to_json()


def read_json_object(handler: BaseHTTPRequestHandler) -> dict[str, Any]:
    """Read a request body that must be a JSON object (empty means {}); ValueError otherwise."""
    length = int(handler.headers.get("Content-Length") or 0)
    body = json.loads(handler.rfile.read(length) or b"{}") if length else {}
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")
    return body


def _make_handler(server: ControlServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self, method: str) -> None:
            if not is_loopback(self.client_address[0]):
                self._reply(403, {"error": "the control API accepts loopback clients only"})
                return
            try:
                body = read_json_object(self)
            except ValueError as exc:
                self._reply(400, {"error": f"malformed JSON: {exc}"})
                return
            try:
                status, payload = server.handle(method, self.path.split("?")[0], body)
            except Exception as exc:  # never a traceback to the client
                log.exception("control operation failed")
                status, payload = 500, {"error": f"{type(exc).__name__}: {exc}"}
            self._reply(status, payload)

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def _reply(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload, default=str).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("control: " + format, *args)

    return Handler


def write_state_file(path: Path, lab: Lab, control_url: str, dashboard_url: str | None = None) -> None:
    """Write the facts of a running lab as JSON (atomically), for other shells and tools."""
    status = lab.status().to_json()
    status.update({"pid": os.getpid(), "control_url": control_url, "dashboard_url": dashboard_url})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(status, indent=2, default=str))
    tmp.replace(path)


class ControlClient:
    """Reach a running lab's control API through its state file."""

    def __init__(self, state_file: Path = DEFAULT_STATE_FILE) -> None:
        try:
            self.state = json.loads(state_file.read_text())
        except FileNotFoundError:
            raise ControlError(f"no running lab found ({state_file} is missing): start one in another shell with "
                               "`statelab up --app stateful` (or --app stateless)") from None
        except ValueError:
            raise ControlError(f"{state_file} is not a lab state file") from None
        self.url = str(self.state["control_url"])

    def call(self, method: str, path: str, body: dict[str, Any] | None = None,
             timeout_s: float = CONTROL_TIMEOUT_S) -> dict[str, Any]:
        try:
            resp = requests.request(method, self.url + path, json=body, timeout=timeout_s)
        except requests.ConnectionError:
            raise ControlError(f"the lab at {self.url} does not answer: is `statelab up` still running? If it "
                               "stopped, start it again with `statelab up --app stateful`") from None
        except requests.Timeout:
            raise ControlError(f"the lab at {self.url} did not answer within {timeout_s:.0f} s") from None
        try:
            payload = resp.json()
        except ValueError:
            raise ControlError(f"the lab answered {resp.status_code} without JSON") from None
        if resp.status_code >= 400:
            raise ControlError(str(payload.get("error", payload)))
        return dict(payload)


__all__ = ["ControlServer", "ControlClient", "write_state_file", "DEFAULT_STATE_FILE", "SIGNALS"]
