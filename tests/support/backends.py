"""A tiny HTTP backend for balancer tests, run as a managed child: it answers every GET with its id.

The answer is `{"id", "path", "headers": [[name, value], ...]}` with keep-alive, so a test sees
which backend a balancer chose and what headers it forwarded. (The proxy's own tests run a richer
backend that also misbehaves on purpose.)
"""

from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path

from statelab.procs import ManagedProcess, free_port, tcp_probe

BACKEND_SRC = r'''
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
PORT, ID = int(sys.argv[1]), sys.argv[2]
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = json.dumps({"id": ID, "path": self.path, "headers": list(self.headers.items())}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
server.daemon_threads = True
server.serve_forever()
'''
READY_TIMEOUT_S = 10.0


def start_backend(stack: ExitStack, run_dir: Path, backend_id: str, src: str = BACKEND_SRC) -> str:
    """Start one backend (stopped when stack closes); return its HOST:PORT.

    src is the backend's Python source, run as `python -c src PORT ID` (default: the one above).
    """
    port = free_port()
    proc = ManagedProcess(backend_id, [sys.executable, "-c", src, str(port), backend_id],
                          run_dir / f"{backend_id}.log", probe=tcp_probe("127.0.0.1", port))
    stack.callback(proc.stop)
    proc.start().wait_ready(READY_TIMEOUT_S)
    return f"127.0.0.1:{port}"
