"""`python -m statelab` is the `statelab` command."""

import signal
import sys

# Ctrl-C while the command is still importing: nothing has started yet, so leave quietly.
signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(130))

from statelab.cli import main  # noqa: E402  (after the handler, on purpose)

raise SystemExit(main())
