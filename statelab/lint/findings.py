"""What a lint finding is, and the catalogue of rules with the scenario that shows each one's damage."""

from __future__ import annotations

from dataclasses import dataclass

SEVERITIES = ("warning", "error")  # in rising order; --fail-on names one of them


@dataclass(frozen=True)
class Rule:
    """One anti-pattern: its id, how bad it is, and the scenario that measures the damage."""

    id: str
    severity: str
    summary: str
    scenario: str
    help: str


@dataclass(frozen=True)
class Finding:
    """One place where a rule matched. `line` is 1-based; `rendered` means it counts in kustomize's output."""

    rule: str
    severity: str
    path: str
    line: int
    subject: str  # what is wrong, as the file names it: "Service/stateful", "backend stateful", "service web"
    message: str
    scenario: str
    rendered: bool = False

    @property
    def location(self) -> str:
        return f"{self.path}{' (rendered)' if self.rendered else ''}:{self.line}"

    @property
    def command(self) -> str:
        return f"statelab run {self.scenario}"

    def reaches(self, severity: str) -> bool:
        """Return whether this finding is at least as bad as severity."""
        return SEVERITIES.index(self.severity) >= SEVERITIES.index(severity)

    def to_json(self) -> dict[str, object]:
        return {"rule": self.rule, "severity": self.severity, "path": self.path, "line": self.line,
                "rendered": self.rendered, "subject": self.subject, "message": self.message,
                "scenario": self.scenario, "command": self.command}


RULES: dict[str, Rule] = {r.id: r for r in (
    Rule("local-disk-replicas", "error", "a replicated workload writes to a per-replica disk",
         "local-disk-upload",
         "An emptyDir, hostPath or bind-mounted directory belongs to one replica: a file written through one "
         "replica is missing on the others. Keep files in object storage (S3) or a shared store."),
    Rule("client-ip-affinity", "error", "client-address affinity in front of a scaled app", "nat-hotspot",
         "Everyone behind one NAT, proxy or ingress address lands on one replica, which melts while the others "
         "idle. Keep state out of the replicas and balance per request."),
    Rule("cookie-affinity-autoscaled", "warning", "cookie stickiness with an autoscaler", "rolling-deploy",
         "Sticky cookies pin users to pods the autoscaler adds and removes: scale-out moves some sessions "
         "(or sends no existing user to the new pods), scale-in and rollouts end the sessions of removed pods. "
         "Keep sessions in a shared store."),
    Rule("no-readiness-probe", "warning", "traffic reaches replicas before they are ready", "rolling-deploy",
         "Without a readiness check a new or restarting replica gets requests before it can serve them "
         "(and with a cold cache): add a readiness probe (or HAProxy `check`) on /readyz."),
    Rule("prestop-exceeds-grace", "error", "the preStop pause uses up the grace period", "rolling-deploy",
         "The grace period counts from the start of preStop: when the pause reaches it, the container is killed "
         "before it can drain. Make terminationGracePeriodSeconds exceed the pause plus the app's drain."),
    Rule("max-unavailable-half", "warning", "a rollout takes half the replicas down at once", "rolling-deploy",
         "The replicas that stay carry the whole load (and every session held by the others is gone at once). "
         "Use maxUnavailable: 0 with maxSurge: 1."),
    Rule("pdb-does-not-limit-rollouts", "warning", "a PodDisruptionBudget relied on to protect rollouts",
         "rolling-deploy",
         "A PodDisruptionBudget limits evictions (node drains), not rollouts: the Deployment's own strategy "
         "decides how many pods a rollout takes down. Limit that with maxUnavailable."),
)}


def finding(rule_id: str, path: str, line: int, subject: str, message: str, rendered: bool = False) -> Finding:
    """Return a finding of rule rule_id, with the rule's severity and scenario."""
    rule = RULES[rule_id]
    return Finding(rule.id, rule.severity, path, line, subject, message, rule.scenario, rendered)
