"""Shared fakes and helpers for the tests: import them from here, never from conftest or another test module.

`apps` builds the two Flask apps against real stores and logs in; `backends` starts a tiny HTTP
backend as a child process; `balancers` a misbehaving backend, both balancers as real processes and raw
probes; `dashboard` has a stub lab and a fake control API; `journals` a
synthetic run journal; `labs` fake instance processes and a fake balancer engine for `Lab`; `procs` counts
the processes a test leaves behind.
"""
