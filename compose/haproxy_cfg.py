"""Render compose/haproxy.cfg from the same policy mapping `statelab up --lb haproxy` uses.

    python compose/haproxy_cfg.py                      # print the config for round-robin
    python compose/haproxy_cfg.py --policy ip-hash --write

The native lab lists its servers (`render_config`); in compose, replicas have no fixed addresses,
so each app's backend fills server slots from the engine's DNS (`server-template` + `resolvers`)
instead. The resolvers come from the container's resolv.conf (`parse-resolv-conf`): Docker puts
its embedded DNS (127.0.0.11) there, podman its network's aardvark-dns, so one file serves both.
The policy lines and the defaults come from statelab.engines.haproxy (BALANCE, DEFAULTS), so both
engines agree on what `round-robin` or `ip-hash` means and on the timeouts; tests/test_compose.py
checks the checked-in file is current.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from statelab.engines.haproxy import BALANCE, DEFAULTS

CFG_PATH = Path(__file__).resolve().parent / "haproxy.cfg"
APPS = (("stateful", 8000), ("stateless", 8001))  # service name, published port
APP_PORT = 8000
MAX_REPLICAS = 10
STATS_PORT = 8404
RUNTIME_API_PORT = 9999


def balance_lines(policy: str) -> list[str]:
    """Return the backend's balancing lines for policy, as the native engine writes them.

    With server-template there are no per-server `cookie` values, so the cookie policy uses
    HAProxy's dynamic cookies (a hash of each server's address) instead.
    """
    lines = list(BALANCE[policy])
    if policy == "cookie":
        lines = [f"{line} dynamic" if line.startswith("cookie ") else line for line in lines]
        lines.append("dynamic-cookie-key statelab")
    return lines


def render(policy: str = "round-robin") -> str:
    """Return the complete compose haproxy.cfg for policy."""
    out = [
        f"# Rendered by compose/haproxy_cfg.py (policy {policy}): edit that, not this file.",
        "# Replicas come from the engine's DNS (the nameservers of the container's resolv.conf): the",
        "# service name answers with one address per replica, and each backend fills up to",
        f"# {MAX_REPLICAS} server slots from it (`--scale` needs no config change).",
        "# `init-addr none` lets HAProxy start (and `haproxy -c` pass) before any name resolves.",
        "global",
        "    log stdout format raw local0 info",
        f"    stats socket ipv4@0.0.0.0:{RUNTIME_API_PORT} level admin",
        "    maxconn 4096",
        "",
        "resolvers dns",
        "    parse-resolv-conf",
        "    resolve_retries 3",
        "    timeout resolve 1s",
        "    timeout retry 1s",
        "    hold valid 5s",
        "    hold obsolete 5s",
        "    accepted_payload_size 8192",
        "",
        "defaults",
        *(f"    {line}" for line in DEFAULTS),
        "    log global",
        "    option httplog",
        "    default-server init-addr none resolvers dns check inter 1s rise 2 fall 2",
    ]
    for app, port in APPS:
        out += ["", f"frontend {app}", f"    bind :{port}", f"    default_backend {app}"]
    for app, _ in APPS:
        out += ["", f"backend {app}", *(f"    {line}" for line in balance_lines(policy)),
                "    option httpchk GET /healthz",
                f"    server-template app- 1-{MAX_REPLICAS} {app}:{APP_PORT}"]
    out += ["", "frontend stats", f"    bind :{STATS_PORT}", "    stats enable", "    stats uri /",
            "    stats refresh 2s", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="round-robin", choices=sorted(BALANCE))
    parser.add_argument("--write", action="store_true", help=f"write {CFG_PATH.name} instead of printing it")
    args = parser.parse_args(argv)
    text = render(args.policy)
    if args.write:
        CFG_PATH.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
