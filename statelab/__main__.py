"""`python -m statelab` is the `statelab` command."""

from statelab.cli import main

raise SystemExit(main())
