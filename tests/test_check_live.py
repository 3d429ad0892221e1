"""`statelab check` end to end, through its CLI: each app a user might bring is judged right; bad input is exit 2.

Each check runs as `statelab check` under a small reaper (a child subreaper): whatever the check
left running after it exited would become the reaper's child, and the test fails on it. To keep
the module to a few minutes, phases are shorter than the default (--run-time 3) and the apps'
checks run two at a time (a check mostly waits: its phases are timed windows), once per module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from statelab.check import disks
from statelab.check.options import CheckOptions
from statelab.check.run import run_check
from statelab.errors import ConfigError

pytestmark = pytest.mark.live

APPS = Path(__file__).resolve().parent / "apps"
RUN_TIME_S = "3"
ALL_FAULTS = {"round-robin", "rolling-deploy", "kill", "scale-out"}
# Runs `statelab check ...` as its child, waits, then reports (and kills) anything left behind.
REAPER = r"""
import ctypes, json, subprocess, sys, time
import psutil
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans of the check become ours
code = subprocess.call(sys.argv[1:])
time.sleep(1.0)  # a process told to stop may take a moment to go
left = [p for p in psutil.Process().children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE]
names = []
for p in left:
    try:
        names.append(" ".join(p.cmdline()))
        p.kill()
    except psutil.Error:
        pass
print(json.dumps({"code": code, "left": names}))
"""


@dataclass(frozen=True)
class Ran:
    code: int
    output: str
    left: list[str]


def check(*args: str, timeout_s: float = 240) -> Ran:
    """Run `statelab check args...` from tests/apps under the reaper."""
    argv = [sys.executable, "-c", REAPER, sys.executable, "-m", "statelab", "check", *args]
    done = subprocess.run(argv, cwd=APPS, capture_output=True, text=True, timeout=timeout_s,
                          env={**os.environ, "COLUMNS": "200"})
    *lines, last = done.stdout.rstrip().splitlines() or [""]
    status = json.loads(last)
    return Ran(status["code"], "\n".join(lines) + done.stderr, status["left"])


# --- each app is judged right --------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]
    failed: frozenset[str]  # the checks that must fail; every other check must pass
    lost: str = ""  # the journey's words for the loss, when some check fails


CASES = {
    "in-process-sessions": Case(("inproc_sessions:app", "--journey", "journey_cart.py"), frozenset(ALL_FAULTS),
                                "logged out"),
    "signed-cookie-session": Case(("signed_cookie:app", "--journey", "journey_cart.py",
                                   "--env", "SECRET_KEY=one-secret-for-every-instance"), frozenset()),
    "redis-sessions-tmp-uploads": Case(("redis_tmp_uploads:app", "--journey", "journey_upload.py"),
                                       frozenset(ALL_FAULTS | {"local-disk"}), "upload missing"),
    "node-in-memory-sessions": Case(("--cmd", "node node_sessions.js {port}", "--journey", "journey_cart.py"),
                                    frozenset(ALL_FAULTS), "logged out"),
    "lab-stateful": Case(("lab_apps:stateful()", "--journey", "journey_cart.py", "--env", "SECRET_KEY=s"),
                         frozenset(ALL_FAULTS), "logged out"),
    "lab-stateless": Case(("lab_apps:stateless()", "--journey", "journey_cart.py", "--env", "SECRET_KEY=s"),
                          frozenset()),
}


PARALLEL_CHECKS = 2


@pytest.fixture(scope="module")
def judged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Ran, Path]]:
    """Run the check of every app (two at a time) and return each one's outcome and output directory."""

    def run(name: str) -> tuple[Ran, Path]:
        out = tmp_path_factory.mktemp(name)
        return check(*CASES[name].args, "--run-time", RUN_TIME_S, "--run-dir", str(out / "run"),
                     "--json", str(out / "r.json"), "--junit", str(out / "j.xml")), out

    names = [n for n, c in CASES.items() if (c.args[0] != "--cmd" or _have("node"))
             and ("local-disk" not in c.failed or _isolation() != "env-only")]
    with ThreadPoolExecutor(max_workers=PARALLEL_CHECKS) as pool:
        return dict(zip(names, pool.map(run, names)))


@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", list(CASES))
def test_each_app_is_judged_right_with_its_evidence(name: str, judged: dict[str, tuple[Ran, Path]]) -> None:
    case = CASES[name]
    if name not in judged:
        pytest.skip("node is not installed" if case.args[0] == "--cmd" else
                    "no private mount namespace here: every instance would share /tmp")
    ran, tmp_path = judged[name]
    assert ran.left == [], f"left running: {ran.left}"
    assert ran.code == (1 if case.failed else 0), ran.output
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["isolation"] == _isolation()
    assert doc["baseline"]["requests"] > 100
    checks = {c["name"]: c for c in doc["checks"]}
    assert {n for n, c in checks.items() if c["outcome"] == "failed"} == case.failed, ran.output
    for n in case.failed - {"local-disk"}:
        risen = {k["error"]: k for k in checks[n]["changes"] if k["rose"]}
        assert case.lost in risen, f"{n}: {checks[n]['summary']}"
        lost = risen[case.lost]
        assert lost["count"] >= 3 and lost["baseline_count"] == 0 and lost["examples"]
    for n in ALL_FAULTS - case.failed:
        assert not [k for k in checks[n]["changes"] if k["rose"]]
        assert checks[n]["phase"]["requests"] > 100
    if "local-disk" in case.failed:
        written = [f for f in checks["local-disk"]["files"] if f["during_run"]]
        assert written and all(f["path"].startswith("/tmp/uploads/") for f in written)
    cases = [c.get("name") for c in _junit_cases(tmp_path / "j.xml")]
    assert cases == ["round-robin", "rolling-deploy", "kill", "scale-out", "local-disk"]


def _isolation() -> str:
    """Return the disk isolation mode a check gets here (the /tmp app needs a private /tmp)."""
    probed = disks.prepare(APPS)
    probed.remove()
    return probed.mode


def _have(binary: str) -> bool:
    from shutil import which

    return which(binary) is not None


def _junit_cases(path: Path) -> list[Any]:
    import xml.etree.ElementTree as ET

    return ET.parse(path).getroot().findall(".//testcase")


# --- bad input: a clear message, exit 2, nothing left running ------------------------------------------

@pytest.mark.parametrize(("args", "message"), [
    (("inproc_sessions:app", "--journey", "journey_cart.py", "--env", "NOT A PAIR"), "write NAME=VALUE"),
    (("inproc_sessions:app", "--journey", "journey_cart.py", "--env", "DATABASE_URL=postgres://prod"),
     "sets DATABASE_URL itself"),
    (("inproc_sessions:app", "--journey", "journey_syntax_error.py"), "syntax error at line 7"),
    (("inproc_sessions:app",), "--journey LOCUSTFILE is required"),
    (("broken_import:app", "--journey", "journey_cart.py"), "No module named 'flaskk'"),
    (("crash_at_start:create_app()", "--journey", "journey_cart.py"), "KeyError: 'PAYMENT_API_KEY'"),
    (("--cmd", "python3 -c 'import time; time.sleep(600)'", "--journey", "journey_cart.py", "--start-timeout", "2"),
     "did not become ready within 2 s"),
], ids=["env-form", "env-reserved", "journey-syntax", "no-journey", "app-import", "app-crash", "never-listens"])
def test_bad_input_is_a_clear_message_and_exit_2_with_nothing_left(args: tuple[str, ...], message: str,
                                                                   tmp_path: Path) -> None:
    ran = check(*args, "--run-dir", str(tmp_path / "run"), timeout_s=120)
    assert ran.left == [], f"left running: {ran.left}"
    assert ran.code == 2, ran.output
    assert message in ran.output
    assert "Traceback" not in ran.output.split("--- log tail ---")[0]


def test_a_journey_that_never_sends_a_request_stops_the_check(tmp_path: Path) -> None:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    opts = CheckOptions(journey=APPS / "journey_no_request.py", run_dir=tmp_path / "run", app="inproc_sessions:app",
                        project_dir=APPS, first_request_timeout_s=3.0)
    with pytest.raises(ConfigError, match="no request within 3 s"):
        run_check(opts)
    left = [p for p in psutil.Process().children(recursive=True)
            if p.pid not in before and p.status() != psutil.STATUS_ZOMBIE]
    assert left == []


def test_init_journey_writes_an_example_once(tmp_path: Path) -> None:
    target = tmp_path / "journey.py"
    ran = check("--init-journey", str(target))
    assert ran.code == 0 and target.exists() and "statelab check module:app --journey" in ran.output
    again = check("--init-journey", str(target))
    assert again.code == 2 and "exists" in again.output
