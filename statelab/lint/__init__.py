"""`statelab lint`: the state anti-patterns the lab's scenarios demonstrate, found in deployment files.

    sources    read Kubernetes manifests, compose files and HAProxy configs, keeping line numbers
    findings   the Rule and Finding types and the rule catalogue
    k8s, compose, haproxy   the rules: small pure functions from parsed documents to findings
    run        lint paths: read them, apply every rule, sort the findings
"""

from __future__ import annotations

from statelab.lint.findings import RULES, SEVERITIES, Finding, Rule
from statelab.lint.run import LintResult, lint_paths

__all__ = ["RULES", "SEVERITIES", "Finding", "LintResult", "Rule", "lint_paths"]
