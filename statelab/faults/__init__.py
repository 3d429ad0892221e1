"""A user-space fault proxy with Toxiproxy's vocabulary, for what kernel netem cannot do here.

It sits between an app and a store (S3, Redis) and adds latency with jitter, caps bandwidth, holds
or resets connections, cuts a stream after N bytes, or takes the store "down", changeable while
traffic flows. `toxics` is the pure model, `proxy` the asyncio links, `api` the server and its
loopback JSON API, `client` the Python driver. `statelab faults` runs a server as a managed child
(services.start_faults).
"""

from statelab.faults.client import FaultClient, ProxyState

__all__ = ["FaultClient", "ProxyState"]
