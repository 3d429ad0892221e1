"""Lint paths: read them, apply every rule to what was read, and return the findings in file order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TextIO

from statelab.lint import compose, haproxy, k8s
from statelab.lint.findings import Finding
from statelab.lint.sources import Inputs, Manifest, Source, read_paths


@dataclass(frozen=True)
class LintResult:
    findings: tuple[Finding, ...]
    inputs: tuple[str, ...]  # what was read, as the findings name it

    def reaches(self, severity: str) -> bool:
        """Return whether any finding is at least as bad as severity."""
        return any(f.reaches(severity) for f in self.findings)


def lint_inputs(inputs: Inputs) -> tuple[Finding, ...]:
    """Apply every rule to what was read; return the findings sorted by place, one per place and rule."""
    found: list[Finding] = []
    # Each kustomize render is a deployment of its own; plain files are read together, as `kubectl
    # apply -f DIR` would apply them.
    clusters: dict[Source | None, list[Manifest]] = {}
    for m in inputs.manifests:
        clusters.setdefault(m.source if m.source.rendered else None, []).append(m)
    for manifests in clusters.values():
        cluster = k8s.Cluster(tuple(manifests))
        for k8s_rule in k8s.RULES:
            found += k8s_rule(cluster)
    for compose_file in inputs.compose:
        for compose_rule in compose.RULES:
            found += compose_rule(compose_file)
    for config in inputs.haproxy:
        for haproxy_rule in haproxy.RULES:
            found += haproxy_rule(config)
    unique = {(f.path, f.rendered, f.line, f.rule, f.subject): f for f in found}
    return tuple(sorted(unique.values(), key=lambda f: (f.path, f.line, f.rule)))


def lint_paths(paths: list[str], stdin: TextIO | None = None) -> LintResult:
    """Lint files, directories (kustomizations rendered) and `-` (standard input)."""
    inputs = read_paths(paths, stdin)
    return LintResult(lint_inputs(inputs), tuple(s.path + (" (rendered)" if s.rendered else "")
                                                  for s in inputs.sources))
