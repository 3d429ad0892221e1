"""The scenarios, one module per disaster, and their registry: what `statelab list` shows and `statelab run` runs.

Each module exports one scenario object (`SCENARIO`); `REGISTRY` names them, each in a group. The
first group is what `statelab run all` runs: the four classic disasters. A new group (`statelab
run <group>`) is one more block of entries here.
"""

from __future__ import annotations

from scenarios import cold_cache_autoscale, local_disk_upload, nat_hotspot, rolling_deploy
from statelab.scenario import Registry

DISASTERS = "disasters"

REGISTRY = Registry((
    (DISASTERS, rolling_deploy.SCENARIO),
    (DISASTERS, nat_hotspot.SCENARIO),
    (DISASTERS, local_disk_upload.SCENARIO),
    (DISASTERS, cold_cache_autoscale.SCENARIO),
))

__all__ = ["DISASTERS", "REGISTRY"]
