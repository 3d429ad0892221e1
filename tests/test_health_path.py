"""The balancer's health checks may ask another path than /healthz (a readiness check, `/readyz`).

Both engines take it: the builtin balancer's checker GETs it, HAProxy's `option httpchk` names it.
"""

from __future__ import annotations

import asyncio

from statelab.balancer.pool import check_once
from statelab.engines.haproxy import render_config


def test_a_health_check_gets_the_path_it_is_given() -> None:
    async def main() -> tuple[bool, bool, list[bytes]]:
        seen: list[bytes] = []

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            line = await reader.readline()
            seen.append(line.split()[1])
            status = b"200 OK" if line.split()[1] == b"/healthz" else b"503 Service Unavailable"
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            alive = await check_once("127.0.0.1", port, timeout_s=2.0)
            ready = await check_once("127.0.0.1", port, timeout_s=2.0, path="/readyz")
        finally:
            server.close()
            await server.wait_closed()
        return alive, ready, seen

    alive, ready, seen = asyncio.run(main())
    assert (alive, ready) == (True, False) and seen == [b"/healthz", b"/readyz"]


def test_haproxy_checks_the_path_it_is_given() -> None:
    backends = [("app-1", "127.0.0.1:9001")]
    assert "option httpchk GET /healthz" in render_config(bind=":80", backends=backends, policy="round-robin")
    assert "option httpchk GET /readyz" in render_config(bind=":80", backends=backends, policy="round-robin",
                                                          health_path="/readyz")
