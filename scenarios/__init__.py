"""The scenarios, one module per disaster, and their registry: what `statelab list` shows and `statelab run` runs.

Each module exports one scenario object (`SCENARIO`); `REGISTRY` names them, each in a group. The
first group is what `statelab run all` runs: the four classic disasters, where the stateful app
fails. The second, `costs`, is the other half of the story: what the stateless design costs and
how it fails (`statelab run costs`). A new group is one more block of entries here.
"""

from __future__ import annotations

from scenarios import (cold_cache_autoscale, jwt_theft, local_disk_upload, lost_update, nat_hotspot,
                       redis_outage, rolling_deploy, s3_latency, server_crash, worker_crash, worker_split)
from statelab.scenario import Registry

DISASTERS = "disasters"
COSTS = "costs"

REGISTRY = Registry((
    (DISASTERS, rolling_deploy.SCENARIO),
    (DISASTERS, nat_hotspot.SCENARIO),
    (DISASTERS, local_disk_upload.SCENARIO),
    (DISASTERS, cold_cache_autoscale.SCENARIO),
    (COSTS, redis_outage.SCENARIO),
    (COSTS, jwt_theft.SCENARIO),
    (COSTS, s3_latency.SCENARIO),
    (COSTS, server_crash.SCENARIO),
    (COSTS, worker_crash.SCENARIO),
    (COSTS, worker_split.SCENARIO),
    (COSTS, lost_update.SCENARIO),
))

__all__ = ["COSTS", "DISASTERS", "REGISTRY"]
