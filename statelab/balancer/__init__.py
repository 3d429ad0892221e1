"""statelab's load balancers: its own HTTP/1.1 reverse proxy (`builtin`) and HAProxy, behind one interface.

The builtin one, in the order a request meets it:

    server    the process: listener, admin API beside it, timeouts (one sweep), graceful shutdown
    client    one client connection: reads and checks requests, answers, ends without a reset
    framing   the HTTP/1.1 rules it enforces itself, pure: heads, Host, body framing, its own answers
    policies  which backend: round robin, least connections, hashes, cookie, p2c (pure)
    pool      the backends: state, health checks, idle keep-alive connections
    exchange  one request/response cycle, and the only owner of in-flight accounting
    upstream  one backend connection: relays the response as received
    records   the ring of per-request records the admin API serves
    options   what one balancer process is told

`admin` is the JSON admin API, `engine` the interface the lab drives either balancer through,
and `haproxy` the HAProxy engine (a rendered config and its runtime API).
"""
