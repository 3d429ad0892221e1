"""The lab's exception tree: every error a user can see, with a message that says what to do.

    LabError
     +-- ConfigError        a setting is missing or malformed (names the LAB_* variable)
     +-- DependencyMissing  a server binary is not installed (says how to get it)
     +-- ServiceFailed      a child process exited or never became ready (carries the log tail)
     +-- ControlError       the control API of a running lab refused or could not be reached
     +-- ScenarioError      a scenario itself broke (an `error` outcome, never a finding)
     +-- LintInputError     `statelab lint` cannot read an input (names the file and line)
"""

from __future__ import annotations


class LabError(Exception):
    """Base class for errors the CLI turns into a one-line message and exit code 2."""


class ConfigError(LabError):
    """A setting is missing or malformed."""


class DependencyMissing(LabError):
    """A binary the lab needs is not installed."""


class ServiceFailed(LabError):
    """A managed process exited early or did not become ready in time."""

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(message + (f"\n--- log tail ---\n{log_tail}" if log_tail else ""))
        self.log_tail = log_tail


class ControlError(LabError):
    """The control API of a running lab could not do what was asked."""


class ScenarioError(LabError):
    """The scenario itself failed; its outcome is `error`, not a finding."""


class LintInputError(LabError):
    """A file given to `statelab lint` is unreadable or malformed."""
