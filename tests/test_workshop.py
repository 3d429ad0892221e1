"""The workshop guide's commands work as written: they parse, and the `statelab run --quick` ones run.

An instructor runs docs/workshop.md in front of a room: a flag that does not exist, a scenario
that was renamed or a variable nobody reads would fail there, in public. This catches it first.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from statelab.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "workshop.md"
RUN_TIMEOUT_S = 240
_FENCE = re.compile(r"^\s*```(?:sh|shell|bash|console)\s*\n(.*?)^\s*```", re.M | re.S)
_ASSIGNMENT = re.compile(r"^([A-Z_][A-Z0-9_]*)=(.*)$")


def guide_commands() -> list[tuple[dict[str, str], list[str]]]:
    """Return every command in the guide's shell blocks as (environment assignments, argv)."""
    commands = []
    for block in _FENCE.findall(GUIDE.read_text()):
        for line in block.splitlines():
            words = shlex.split(line.strip().removeprefix("$ "), comments=True)
            env = {}
            while words and _ASSIGNMENT.match(words[0]):
                name, value = _ASSIGNMENT.match(words[0]).groups()  # type: ignore[union-attr]
                env[name] = value
                words = words[1:]
            if words:
                commands.append((env, words))
    return commands


def statelab_commands() -> list[tuple[dict[str, str], list[str]]]:
    return [(env, argv) for env, argv in guide_commands() if argv[0] == "statelab"]


def cheap_runs() -> list[list[str]]:
    """Return the guide's `statelab run` argvs that name one app (one lab, well under a minute).

    The two-app runs replay the same scenarios that tests/test_scenarios_live.py already runs
    (quick profile, in-process, asserting the figures); running them again here would double the
    live suite for no new fact. One real CLI run proves the command path; parsing covers the rest.
    """
    runs = [argv for _, argv in statelab_commands() if argv[1] == "run"]
    return [argv for argv in runs if build_parser().parse_args(argv[1:]).app != "both"]


def test_the_guide_has_a_command_for_every_part() -> None:
    commands = [" ".join(argv) for _, argv in statelab_commands()]
    for needed in ("statelab up", "statelab load --web", "statelab deploy", "statelab scale", "statelab policy"):
        assert any(c.startswith(needed) for c in commands), f"the guide never shows `{needed}`"
    for scenario in ("rolling-deploy", "nat-hotspot", "local-disk-upload", "cold-cache-autoscale"):
        assert f"statelab run {scenario} --quick" in commands, f"the guide never runs {scenario}"


@pytest.mark.parametrize("argv", [argv for _, argv in statelab_commands()], ids=lambda argv: " ".join(argv[1:]))
def test_every_statelab_command_parses_as_written(argv: list[str]) -> None:
    try:
        args = build_parser().parse_args(argv[1:])
    except SystemExit as exc:
        pytest.fail(f"`{' '.join(argv)}` does not parse (exit {exc.code})")
    assert callable(args.func)


def test_every_variable_the_guide_sets_is_read_somewhere() -> None:
    code = "".join(p.read_text() for d in ("statelab", "stateful_app", "stateless_app", "loadtests")
                   for p in (ROOT / d).rglob("*.py"))
    for env, argv in guide_commands():
        for name in env:
            assert name.startswith("LAB_"), f"{name}: the lab's settings all start with LAB_"
            short = name.removeprefix("LAB_")
            assert name in code or f'"{short}"' in code, f"nothing reads {name} (in `{' '.join(argv)}`)"


def test_the_guide_names_only_existing_scenarios() -> None:
    from scenarios import REGISTRY

    names = {s.name for s in REGISTRY} | set(REGISTRY.groups())
    for _, argv in statelab_commands():
        if argv[1] == "run":
            assert argv[2] in names | {"all"}, f"no scenario or group {argv[2]!r}: there are {sorted(names)}"


@pytest.mark.live
@pytest.mark.parametrize("argv", cheap_runs(), ids=lambda argv: " ".join(argv[1:]))
def test_the_quick_scenario_runs_in_the_guide_work(argv: list[str], tmp_path: Path) -> None:
    assert "--quick" in argv, "the guide's scenario runs are the quick ones (the test runs them as written)"
    journal = tmp_path / "journal.json"
    result = subprocess.run([sys.executable, "-m", "statelab", *argv[1:], "--run-dir", str(tmp_path / "run"),
                             "--json", str(journal)], capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert result.returncode == 0, f"`{' '.join(argv)}` exited {result.returncode}\n{result.stdout[-4000:]}" \
                                   f"\n{result.stderr[-4000:]}"
    from statelab.report.journal import read_json

    outcomes = [r.outcome for r in read_json(journal).results]
    assert outcomes and "error" not in outcomes, outcomes
