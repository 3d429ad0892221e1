"""The rules for HAProxy configs: each a pure function from one parsed config to findings.

A proxy (`backend` or `listen`) inherits `balance` and `default-server` from the last `defaults`
section above it, as HAProxy does.
"""

from __future__ import annotations

import re
from typing import Callable, Iterator

from statelab.lint.findings import Finding, finding
from statelab.lint.sources import Directive, HAProxyConfig, Section


def proxies(config: HAProxyConfig) -> Iterator[tuple[Section, Section | None]]:
    """Yield each backend or listen section with the defaults section it inherits from."""
    defaults: Section | None = None
    for section in config.sections:
        if section.kind == "defaults":
            defaults = section
        elif section.kind in ("backend", "listen"):
            yield section, defaults


def server_count(section: Section) -> int:
    """Return how many servers a proxy can have (`server` lines plus `server-template` slots)."""
    count = len(section.find("server"))
    for d in section.find("server-template"):
        if len(d.words) > 2:
            low, _, high = d.words[2].partition("-")
            if re.fullmatch(r"\d+", low) and (not high or high.isdigit()):
                count += int(high) - int(low) + 1 if high else int(low)
    return count


def inherited(section: Section, defaults: Section | None, keyword: str) -> Directive | None:
    """Return the proxy's own last `keyword` directive, else the one from its defaults."""
    own = section.find(keyword)
    if own:
        return own[-1]
    found = defaults.find(keyword) if defaults else []
    return found[-1] if found else None


def client_ip_affinity(config: HAProxyConfig) -> Iterator[Finding]:
    """`balance source` in front of more than one server: one NAT address, one server.

    Not with `hash-balance-factor`: bounded-load consistent hashing caps what one server takes.
    """
    for section, defaults in proxies(config):
        balance = inherited(section, defaults, "balance")
        bounded = inherited(section, defaults, "hash-balance-factor")
        if balance and balance.words[1:2] == ("source",) and not bounded and server_count(section) > 1:
            yield finding("client-ip-affinity", config.source.path, balance.line, f"{section.kind} {section.name}",
                          f"balance source sends each client address to one of its {server_count(section)} servers: "
                          "every client behind one NAT or proxy address lands on the same server",
                          config.source.rendered)


def no_health_check(config: HAProxyConfig) -> Iterator[Finding]:
    """Servers without `check`: HAProxy sends traffic to replicas that are down or not ready yet."""
    for section, defaults in proxies(config):
        if server_count(section) < 2:
            continue
        default_server = [d for s in (defaults, section) if s for d in s.find("default-server")]
        if any("check" in d.words for d in default_server):
            continue
        for d in (*section.find("server"), *section.find("server-template")):
            if "check" not in d.words:
                yield finding("no-readiness-probe", config.source.path, d.line, f"{section.kind} {section.name}",
                              f"{d.words[0]} {d.words[1] if len(d.words) > 1 else ''} has no `check`: HAProxy sends "
                              "requests to it while it is down or still starting", config.source.rendered)


RULES: tuple[Callable[[HAProxyConfig], Iterator[Finding]], ...] = (client_ip_affinity, no_health_check)
