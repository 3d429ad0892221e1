"""`python -m statelab.engines OPTIONS_JSON`: statelab's own balancer, as a lab's child process.

The lab's builtin engine starts its balancer this way rather than as `statelab lb`: the options
come from the lab itself (its ports, policy, health checks), so the command line's parser and
checks have nothing to add, and importing the whole CLI would cost each balancer twice the CPU
it needs to start (a lab starts up to five at once). `statelab lb` remains the command a person
runs.
"""

import json
import logging
import sys

from statelab.balancer.options import BalancerOptions
from statelab.balancer.server import serve_forever

if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")  # as `statelab lb`
    options = json.loads(sys.argv[1])
    options["backends"] = tuple((str(bid), str(addr)) for bid, addr in options.get("backends", ()))
    serve_forever(BalancerOptions(**options))
