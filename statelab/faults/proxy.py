"""The proxies of a fault server: a listener per proxy, and for each accepted client a link to the upstream.

A link has two streams (upstream: client -> server; downstream: server -> client). A stream with no
toxic forwards each received segment with one `transport.write` (the hot path); with toxics, its
chunks go through a queue and a pump task that applies them in order. Toxic changes reach live
links at once: each link re-plans (toxicity rolled once per link and toxic version; the timers of
`timeout` and `reset_peer` start when the toxic reaches the link).
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import struct
from collections import deque
from dataclasses import dataclass
from typing import Any, cast

from statelab.faults.toxics import LINK_TOXICS, Toxic, ToxicError, chunk_delay_s, transmit_s

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
HIGH_WATER_BYTES = 1 << 20  # a stream queue above this pauses its source
LOW_WATER_BYTES = 1 << 18
PACE_SLICE_S = 0.02  # bandwidth pacing granularity


@dataclass
class Counters:
    """What a proxy has carried; one owner for the fast and the slow path, so they cannot drift."""

    accepted: int = 0
    refused_upstream: int = 0
    bytes_upstream: int = 0
    bytes_downstream: int = 0

    def to_json(self, links: int) -> dict[str, int]:
        return {"accepted": self.accepted, "links": links, "refused_upstream": self.refused_upstream,
                "bytes_upstream": self.bytes_upstream, "bytes_downstream": self.bytes_downstream}


def _reset(transport: asyncio.Transport) -> None:
    """Close a connection with a TCP RST (SO_LINGER 0) instead of a FIN."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    transport.abort()


class Stream:
    """One direction of a link: its active toxics, its queue of (arrival time, chunk or None for EOF)."""

    def __init__(self, link: "Link", name: str) -> None:
        self.link = link
        self.name = name
        self.upstream = name == "upstream"
        self.src: asyncio.Transport | None = None
        self.dst: asyncio.Transport | None = None
        self.toxics: dict[str, Toxic] = {}  # type -> toxic, those that apply to this link and stream
        self.queue: deque[tuple[float, bytes | None]] = deque()
        self.queued_bytes = 0
        self.pump: asyncio.Task[None] | None = None
        self.wake = asyncio.Event()
        self.passed = 0  # bytes through limit_data since it reached this link
        self.last_due = 0.0
        self.next_free = 0.0
        self.eof_sent = False
        self.early: list[bytes | None] = []

    def flush_early(self) -> None:
        """Forward what arrived before the destination was connected."""
        early, self.early = self.early, []
        for data in early:
            self.feed_eof() if data is None else self.feed(data)

    def feed(self, data: bytes) -> None:
        """Take a chunk from the source: forward it at once, or queue it for the toxics."""
        if self.dst is None:  # the upstream connection is not made yet (reading may pause a beat late)
            self.early.append(data)
            return
        if self.pump is None and not self.toxics:
            self.dst.write(data)
            self.link.proxy.count(self.upstream, len(data))
            return
        self._queue(data)

    def feed_eof(self) -> None:
        if self.dst is None:
            self.early.append(None)
            return
        if self.pump is None and not self.toxics:
            self._send_eof()
            return
        self._queue(None)

    def _queue(self, data: bytes | None) -> None:
        loop = asyncio.get_running_loop()
        self.queue.append((loop.time(), data))
        if data:
            self.queued_bytes += len(data)
            if self.queued_bytes > HIGH_WATER_BYTES and self.src is not None:
                self.link.pause(self.src, "queue")
        if self.pump is None:
            self.pump = loop.create_task(self._run())
        self.wake.set()

    def replanned(self) -> None:
        """Toxics changed: wake the pump so it sees them (it exits when nothing is left to do)."""
        self.wake.set()

    async def _run(self) -> None:
        try:
            await self._pump()
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug here must cost one link, never the server
            log.exception("stream %s of a link to %s failed", self.name, self.link.proxy.name)
            self.link.close(reset=True)
        finally:
            self.pump = None

    async def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.queue:
                if not self.toxics:
                    return
                self.wake.clear()
                await self.wake.wait()
                continue
            arrived, data = self.queue[0]
            if "timeout" in self.toxics:  # the stream is held: its data is dropped, as Toxiproxy does
                self._pop(data)
                continue
            latency = self.toxics.get("latency")
            if latency is not None:
                due = max(arrived + chunk_delay_s(latency, random.uniform(-1.0, 1.0)), self.last_due)
                self.last_due = due
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())
            self._pop(data)
            if data is None:
                slow_close = self.toxics.get("slow_close")
                if slow_close is not None:
                    await asyncio.sleep(slow_close.attr("delay") / 1000.0)
                self._send_eof()
                return
            limit = self.toxics.get("limit_data")
            if limit is not None and self.passed + len(data) >= limit.attr("bytes"):
                await self._write(data[:max(0, limit.attr("bytes") - self.passed)])
                self.link.close()
                return
            await self._write(data)

    def _pop(self, data: bytes | None) -> None:
        self.queue.popleft()
        if data:
            self.queued_bytes -= len(data)
            if self.queued_bytes < LOW_WATER_BYTES and self.src is not None:
                self.link.resume(self.src, "queue")

    async def _write(self, data: bytes) -> None:
        assert self.dst is not None
        bandwidth = self.toxics.get("bandwidth")
        if bandwidth is None:
            self.dst.write(data)
        else:
            loop = asyncio.get_running_loop()
            step = max(1, int(bandwidth.attr("rate") * 1000 * PACE_SLICE_S))
            for start in range(0, len(data), step):
                piece = data[start:start + step]
                self.next_free = max(self.next_free, loop.time()) + transmit_s(bandwidth, len(piece))
                await asyncio.sleep(max(0.0, self.next_free - loop.time()))
                if self.link.closed:
                    return
                self.dst.write(piece)
        self.passed += len(data)
        self.link.proxy.count(self.upstream, len(data))

    def _send_eof(self) -> None:
        self.eof_sent = True
        if self.dst is not None and not self.dst.is_closing() and self.dst.can_write_eof():
            self.dst.write_eof()
        self.link.maybe_finished()

    def cancel(self) -> None:
        if self.pump is not None:
            self.pump.cancel()


class Link:
    """One client connection and its upstream connection."""

    def __init__(self, proxy: "Proxy", client: asyncio.Transport) -> None:
        self.proxy = proxy
        self.client = client
        self.server: asyncio.Transport | None = None
        self.up = Stream(self, "upstream")
        self.down = Stream(self, "downstream")
        self.up.src = self.down.dst = client
        self.closed = False
        self._rolls: dict[str, tuple[Toxic, bool]] = {}
        self._timers: dict[str, tuple[Toxic, asyncio.TimerHandle | None]] = {}
        self._paused: dict[int, set[str]] = {}
        self.plan()

    def connected(self, server: asyncio.Transport) -> None:
        self.server = server
        self.up.dst = self.down.src = server
        if self.closed:  # dropped (proxy down, reset) while connecting
            server.close()
            return
        self.up.flush_early()
        self.resume(self.client, "connecting")

    def plan(self) -> None:
        """Apply the proxy's current toxics to this link (roll toxicity for new or changed ones)."""
        if self.closed:
            return
        active: dict[str, Toxic] = {}
        for toxic in self.proxy.toxics.values():
            rolled = self._rolls.get(toxic.name)
            if rolled is None or rolled[0] is not toxic:
                rolled = (toxic, random.random() < toxic.toxicity)
                self._rolls[toxic.name] = rolled
            if rolled[1]:
                active[toxic.name] = toxic
        for name in [n for n in self._rolls if n not in self.proxy.toxics]:
            del self._rolls[name]
        self._plan_timers(active)
        for stream in (self.up, self.down):
            before = stream.toxics.get("limit_data")
            stream.toxics = {t.type: t for t in active.values() if t.stream == stream.name}
            if stream.toxics.get("limit_data") is not before:
                stream.passed = 0
            stream.replanned()

    def _plan_timers(self, active: dict[str, Toxic]) -> None:
        for name, (toxic, handle) in list(self._timers.items()):
            if active.get(name) is not toxic:
                if handle is not None:
                    handle.cancel()
                del self._timers[name]
        loop = asyncio.get_running_loop()
        for name, toxic in active.items():
            if toxic.type not in LINK_TOXICS or name in self._timers:
                continue
            delay_s = toxic.attr("timeout") / 1000.0
            reset = toxic.type == "reset_peer"
            if reset and delay_s == 0:
                loop.call_soon(self.close, True)
                handle = None
            elif delay_s > 0:
                handle = loop.call_later(delay_s, self.close, reset)
            else:
                handle = None  # timeout 0: hold until the toxic is removed
            self._timers[name] = (toxic, handle)

    def pause(self, transport: asyncio.Transport, reason: str) -> None:
        reasons = self._paused.setdefault(id(transport), set())
        if not reasons and not transport.is_closing():
            transport.pause_reading()
        reasons.add(reason)

    def resume(self, transport: asyncio.Transport, reason: str) -> None:
        reasons = self._paused.get(id(transport))
        if not reasons or reason not in reasons:
            return
        reasons.discard(reason)
        if not reasons and not transport.is_closing():
            transport.resume_reading()

    def maybe_finished(self) -> None:
        """Close both sides once both streams have forwarded their EOF."""
        if self.up.eof_sent and self.down.eof_sent:
            self.close()

    def side_lost(self, from_client: bool, exc: Exception | None) -> None:
        """One side's connection is gone (a FIN arrives as eof_received first, so this is rare).

        A reset propagates as a reset; a lost client ends the link; a lost server still lets the
        queued data reach the client before the close.
        """
        if self.closed:
            return
        if exc is not None or from_client:
            self.close(reset=exc is not None)
        elif not self.down.eof_sent and (not self.down.queue or self.down.queue[-1][1] is not None):
            self.down.feed_eof()

    def close(self, reset: bool = False) -> None:
        """Drop the link: FIN both sides (or an RST to the client when reset)."""
        if self.closed:
            return
        self.closed = True
        for _, handle in self._timers.values():
            if handle is not None:
                handle.cancel()
        self._timers.clear()
        self.up.cancel()
        self.down.cancel()
        if reset:
            _reset(self.client)
        else:
            self.client.close()
        if self.server is not None:
            self.server.abort() if reset else self.server.close()
        self.proxy.links.discard(self)


class _ClientProtocol(asyncio.Protocol):
    def __init__(self, proxy: "Proxy") -> None:
        self.proxy = proxy
        self.link: Link | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike; both set TCP_NODELAY.
        self.link = link = Link(self.proxy, cast(asyncio.Transport, transport))
        link.pause(link.client, "connecting")
        self.proxy.links.add(link)
        self.proxy.counters.accepted += 1
        asyncio.get_running_loop().create_task(self.proxy.connect_upstream(link))

    def data_received(self, data: bytes) -> None:
        assert self.link is not None
        self.link.up.feed(data)

    def eof_received(self) -> bool:
        assert self.link is not None
        self.link.up.feed_eof()
        return True  # keep our sending side open: the response may still be on its way

    def connection_lost(self, exc: Exception | None) -> None:
        if self.link is not None:
            self.link.side_lost(True, exc)

    def pause_writing(self) -> None:
        if self.link is not None and self.link.server is not None:
            self.link.pause(self.link.server, "client-full")

    def resume_writing(self) -> None:
        if self.link is not None and self.link.server is not None:
            self.link.resume(self.link.server, "client-full")


class _ServerProtocol(asyncio.Protocol):
    def __init__(self, link: Link) -> None:
        self.link = link

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.link.connected(cast(asyncio.Transport, transport))

    def data_received(self, data: bytes) -> None:
        self.link.down.feed(data)

    def eof_received(self) -> bool:
        self.link.down.feed_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.link.side_lost(False, exc)

    def pause_writing(self) -> None:
        self.link.pause(self.link.client, "server-full")

    def resume_writing(self) -> None:
        self.link.resume(self.link.client, "server-full")


class Proxy:
    """A named listener that relays each client to upstream through its toxics."""

    def __init__(self, name: str, listen: tuple[str, int], upstream: tuple[str, int]) -> None:
        self.name = name
        self.listen = listen
        self.upstream = upstream
        self.enabled = False
        self.toxics: dict[str, Toxic] = {}
        self.links: set[Link] = set()
        self.counters = Counters()
        self._server: asyncio.AbstractServer | None = None

    def count(self, upstream: bool, nbytes: int) -> None:
        if upstream:
            self.counters.bytes_upstream += nbytes
        else:
            self.counters.bytes_downstream += nbytes

    async def enable(self) -> None:
        """Listen (again, on the same port once one was picked)."""
        if self.enabled:
            return
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(lambda: _ClientProtocol(self), self.listen[0], self.listen[1],
                                                    reuse_address=True, backlog=512)
        except OSError as exc:
            raise ToxicError(f"cannot listen on {self.listen[0]}:{self.listen[1]}: {exc.strerror}") from None
        self.listen = (self.listen[0], self._server.sockets[0].getsockname()[1])
        self.enabled = True

    async def disable(self) -> None:
        """Go down: refuse new connections and drop every link."""
        self.enabled = False
        if self._server is not None:
            self._server.close()
            server, self._server = self._server, None
            for link in list(self.links):
                link.close()
            await server.wait_closed()
        for link in list(self.links):
            link.close()

    async def connect_upstream(self, link: Link) -> None:
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.create_connection(lambda: _ServerProtocol(link), *self.upstream),
                                   CONNECT_TIMEOUT_S)
        except (OSError, asyncio.TimeoutError) as exc:
            log.info("proxy %s: upstream %s:%s unreachable: %s", self.name, *self.upstream, exc)
            self.counters.refused_upstream += 1
            link.close()

    def set_toxic(self, toxic: Toxic) -> None:
        self.toxics[toxic.name] = toxic
        self._replan()

    def remove_toxic(self, name: str) -> None:
        del self.toxics[name]
        self._replan()

    def _replan(self) -> None:
        for link in list(self.links):
            link.plan()

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "listen": f"{self.listen[0]}:{self.listen[1]}",
                "upstream": f"{self.upstream[0]}:{self.upstream[1]}", "enabled": self.enabled,
                "toxics": [t.to_json() for t in self.toxics.values()], "stats": self.counters.to_json(len(self.links))}
