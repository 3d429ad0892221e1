"""A stand-in lab and control API for dashboard tests (no processes): what the dashboard reads and calls."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


class StubStatus:
    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def to_json(self) -> dict[str, Any]:
        return self.data


class StubLab:
    """Has what the dashboard reads of a Lab: status() and now(); counters grow by 10 per call."""

    def __init__(self) -> None:
        self.calls = 0
        self.t = 0.0
        self.generation = 1

    def now(self) -> float:
        return self.t

    def status(self) -> StubStatus:
        self.calls += 1
        self.t += 1.0
        n = self.calls * 10
        instances = [{"id": f"app-{i}", "url": f"http://127.0.0.1:{i}", "pid": 100 + i, "state": "ready",
                      "generation": self.generation, "log": "", "active": i, "requests": n * i, "errors": 0} for i in (1, 2)]
        return StubStatus({"app": "stateful", "policy": "round-robin", "lb": "builtin",
                           "balancer_url": "http://127.0.0.1:8000", "admin_url": None, "run_dir": "/tmp",
                           "instances": instances, "stores": [["postgres", "postgresql://u:****@h/db"]],
                           "events": [{"t": 0.5, "kind": "started", "target": "lab", "detail": "<b>x</b>"}]})


class FakeControl:
    """A control API that records what it was asked and answers like the real one."""

    def __init__(self, on_call: Callable[[str, dict[str, Any]], None] = lambda path, body: None) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.calls.append((self.path, body))
                on_call(self.path, body)
                status, payload = (409, {"error": "busy"}) if self.path == "/scale" else (200, {"app": "stateful"})
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def fake_stats(url: str) -> dict[str, Any] | None:
    return None if url.endswith(":2") else {"sessions_in_memory": 42, "db_queries": 7}
