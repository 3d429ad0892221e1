"""`statelab check` without live servers: options, comparing failure kinds, verdicts, records, disks, reports."""

from __future__ import annotations

import json
import os
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from statelab.check import compare, disks, journey
from statelab.check.options import RESERVED_NAMES, CheckOptions, parse_env, parse_run_time, phases
from statelab.check.result import CheckReport, DiskFile, Example, FailureKind, PhaseStats
from statelab.errors import ConfigError
from statelab.report import check as report
from statelab.report.html import render_html

APPS = Path(__file__).resolve().parent / "apps"


def phase(requests: int, *failures: FailureKind, name: str = "p") -> PhaseStats:
    return PhaseStats(name, "cookie", "3", requests, failures, 6.0)


def kind(error: str, count: int, status: int = 401, name: str = "/me", method: str = "GET") -> FailureKind:
    return FailureKind(method, name, error, count, status in (0, 502, 503, 504), ((status, count),),
                       (Example(1.5, method, name, status, error),))


# --- comparing failure kinds ---------------------------------------------------------------------------

def test_a_kind_rises_only_clearly_above_what_the_baseline_predicts() -> None:
    assert compare.rose(3, 0.0)  # three lost sessions in an app that never fails
    assert not compare.rose(2, 0.0)
    assert not compare.rose(7, 5.0)  # a flaky route at its usual rate, plus noise
    assert compare.rose(15, 5.0)  # 3 sigma above 5 is 11.7


def test_kinds_are_the_journeys_words_summed_over_requests_and_broken_down_by_request() -> None:
    base = phase(1000)
    rr = phase(900, kind("logged out", 2, name="/me"), kind("logged out", 2, name="/cart"))
    (change,) = compare.compare(base, rr)
    assert (change.error, change.count, change.rose) == ("logged out", 4, True)
    assert {(w[1], w[2]) for w in change.where} == {("/me", 2), ("/cart", 2)}
    assert len(change.examples) == 2


def test_failures_already_in_the_baseline_are_the_apps_own() -> None:
    base = phase(1000, kind("HTTP 500", 10, status=500, name="/flaky"))
    result = compare.judge_phase("kill", "t", base, phase(1000, kind("HTTP 500", 12, status=500, name="/flaky")))
    assert result.outcome == "passed"
    assert [c.error for c in result.apps_own] == ["HTTP 500"]
    assert result.apps_own[0].expected == pytest.approx(10.0)


def test_a_risen_kind_fails_the_check_and_the_summary_gives_counts_and_rates() -> None:
    base = phase(1000, kind("HTTP 500", 10, status=500))
    result = compare.judge_phase("round-robin", "t", base, phase(500, kind("logged out", 200), kind("HTTP 500", 5, 500)))
    assert result.outcome == "failed"
    assert [c.error for c in result.rose] == ["logged out"]
    assert "'logged out' 200 times (40.0% of requests; baseline 0.0%)" in result.summary


def test_requests_the_app_never_answered_are_not_lost_state() -> None:
    result = compare.judge_phase("kill", "t", phase(1000), phase(1000, kind("cart lost", 30, status=502),
                                                                 kind("logged out", 9, status=0)))
    assert result.outcome == "passed"
    assert result.changes == ()
    assert "39 requests got no answer" in result.summary


def test_the_local_disk_check_fails_on_files_written_while_serving_only() -> None:
    started = DiskFile("app-1", 1, "/tmp/app.pid", 6, during_run=False)
    assert compare.judge_disk([started]).outcome == "passed"
    upload = DiskFile("app-2", 1, "/tmp/uploads/k1", 2048, during_run=True)
    result = compare.judge_disk([started, upload])
    assert result.outcome == "failed"
    assert "1 files (2.0 KiB)" in result.summary and "app-2" in result.summary


# --- options -------------------------------------------------------------------------------------------

def test_env_pairs_are_checked_and_the_checks_own_names_are_refused() -> None:
    assert parse_env(["SECRET_KEY=a=b", "EMPTY="]) == (("SECRET_KEY", "a=b"), ("EMPTY", ""))
    for bad in ("NOVALUE", "1X=y", "A-B=c", "=x"):
        with pytest.raises(ConfigError, match="NAME=VALUE"):
            parse_env([bad])
    assert "REDIS_URL" in RESERVED_NAMES
    with pytest.raises(ConfigError, match="sets REDIS_URL itself"):
        parse_env(["REDIS_URL=redis://prod:6379"])


def opts(**kw: object) -> CheckOptions:
    base: dict[str, object] = {"journey": APPS / "journey_cart.py", "run_dir": Path("/tmp/x"), "app": "m:app"}
    base.update(kw)
    return CheckOptions(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(("kw", "message"), [
    ({"app": None}, "either APP"), ({"cmd": "node s.js {port}"}, "either APP"),
    ({"app": "not an app spec"}, "as gunicorn does"), ({"app": None, "cmd": "'unclosed"}, "--cmd"),
    ({"instances": 1}, "--instances"), ({"users": 0}, "--users"), ({"run_time_s": 1.0}, "--run-time"),
    ({"ready_path": "healthz"}, "must start with /"), ({"start_timeout_s": 0.1}, "--start-timeout"),
])
def test_options_that_cannot_work_are_refused_before_anything_starts(kw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        opts(**kw).validate()


def test_an_instance_is_gunicorn_with_one_worker_or_the_users_command_with_its_port() -> None:
    argv = opts(app="shop:create_app()").command(8123)
    assert argv[-1] == "shop:create_app()" and "127.0.0.1:8123" in argv and argv[argv.index("--workers") + 1] == "1"
    assert opts(app=None, cmd="node server.js --port {port}").command(9000) == ["node", "server.js", "--port", "9000"]


def test_run_time_takes_seconds_or_a_duration_and_phases_come_in_order() -> None:
    assert parse_run_time("7.5") == 7.5 and parse_run_time("1m") == 60.0
    plan = phases(3)
    assert [p.name for p in plan] == ["baseline", "round-robin", "rolling-deploy", "kill", "scale-out"]
    assert [p.routing for p in plan] == ["cookie", "round-robin", "cookie", "cookie", "ip-hash"]
    assert plan[-1].instances == 2


# --- the journey ---------------------------------------------------------------------------------------

def test_a_journey_with_a_syntax_error_is_refused_with_its_line() -> None:
    with pytest.raises(ConfigError, match=r"syntax error at line 7"):
        journey.validate(APPS / "journey_syntax_error.py")
    with pytest.raises(ConfigError, match="no such file.*--init-journey"):
        journey.validate(APPS / "missing.py")


def test_the_example_journey_compiles_and_is_never_written_over_a_file(tmp_path: Path) -> None:
    target = tmp_path / "journey.py"
    journey.write_example(target)
    journey.validate(target)
    assert 'r.failure("logged out")' in target.read_text() and 'r.failure("cart lost")' in target.read_text()
    with pytest.raises(ConfigError, match="exists"):
        journey.write_example(target)


def test_a_record_splits_each_kind_into_answered_and_unanswered(tmp_path: Path) -> None:
    path = tmp_path / "record.json"
    path.write_text(json.dumps({
        "started": 100.0, "first_request": 101.0, "requests": 50, "users_unbound": 0,
        "per_second": [[1, 10, 0], [2, 20, 3]], "latency_ms": {"p50": 2.0},
        "kinds": [{"method": "GET", "name": "/cart", "error": "cart lost", "statuses": {"200": 2, "502": 1},
                   "examples": [{"t": 101.5, "status": 200, "url": "/cart"}, {"t": 102.0, "status": 502, "url": ""}]}],
    }))
    record = journey.read_record(path)
    assert record is not None
    answered, unanswered = record.kinds
    assert (answered.count, answered.unanswered, answered.examples[0].t_s) == (2, False, 0.5)
    assert (unanswered.count, unanswered.unanswered) == (1, True)
    assert record.per_second == ((0, 10, 0), (1, 20, 3))
    assert journey.read_record(tmp_path / "none.json") is None


# --- disks ---------------------------------------------------------------------------------------------

def test_without_a_namespace_each_instance_gets_its_tmpdir_and_a_working_directory_of_links(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "app.py").write_text("x = 1\n")
    d = disks.prepare(project, forced="env-only")
    try:
        disk = d.new("app-1")
        argv, env, cwd = d.wrap(disk, ["python", "app.py"])
        assert argv == ["python", "app.py"] and env == {"TMPDIR": str(disk.tmp)} and cwd == disk.cwd
        assert (cwd / "app.py").is_symlink()
        assert "WARNING" in d.note
        (disk.tmp / "early.pid").write_text("1")
        disk.ready_at = time.time() + 0.01
        time.sleep(0.02)
        (disk.tmp / "up").mkdir()
        (disk.tmp / "up" / "f.bin").write_bytes(b"x" * 10)
        (cwd / "__pycache__").mkdir()
        (cwd / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"x")
        (cwd / "notes.txt").write_text("hello")
        found = {f.path: f for f in d.scan()}
        assert set(found) == {"$TMPDIR/early.pid", "$TMPDIR/up/f.bin", "notes.txt"}
        assert not found["$TMPDIR/early.pid"].during_run and found["$TMPDIR/up/f.bin"].size == 10
        assert d.new("app-1").generation == 2
    finally:
        d.remove()
    assert not d.root.exists()


def test_the_private_mode_gives_its_own_tmp_and_a_copy_on_write_project(tmp_path: Path) -> None:
    project = APPS  # not under /tmp: the namespace's own /tmp would hide it
    d = disks.prepare(project)
    if d.mode != "private":
        d.remove()
        pytest.skip(f"no private mount namespace with overlayfs here ({d.mode})")
    try:
        disk = d.new("app-1")
        marker = f"statelab-check-test-{os.getpid()}"
        argv, env, cwd = d.wrap(disk, ["sh", "-c", f"echo a > /tmp/{marker} && echo b > {marker}.txt && cat journey_cart.py"])
        done = subprocess.run(argv, cwd=cwd, env={**os.environ, **env}, capture_output=True, timeout=30)
        assert done.returncode == 0, done.stderr
        assert b"class Shopper" in done.stdout  # the project's files are readable
        assert not Path(f"/tmp/{marker}").exists() and not (APPS / f"{marker}.txt").exists()
        paths = {f.path for f in d.scan()}
        assert paths == {f"/tmp/{marker}", str(APPS.resolve() / f"{marker}.txt")}
    finally:
        d.remove()


# --- reports -------------------------------------------------------------------------------------------

def sample_report() -> CheckReport:
    base = phase(600, name="baseline")
    rr = compare.judge_phase("round-robin", "spread", base, phase(590, kind("logged out", 231), name="round-robin"))
    kill = compare.judge_phase("kill", "killed", base, phase(650, kind("logged out", 0, 502), name="kill"))
    disk = compare.judge_disk([DiskFile("app-1", 1, "/tmp/uploads/k", 2048, True)])
    return CheckReport("shop:app", "journey.py", 3, 20, 6.0, "private", "note", base, (rr, kill, disk),
                       "2026-01-01T00:00:00", 42.0, "/tmp/run", (("start", 3.0), ("round-robin", 6.5)))


def test_junit_has_one_case_per_check_and_lost_state_is_a_failure() -> None:
    root = report.junit_xml(sample_report())
    cases = root.findall(".//testcase")
    assert [c.get("name") for c in cases] == ["round-robin", "kill", "local-disk"]
    assert root.get("failures") == "2"
    failure = cases[0].find("failure")
    assert failure is not None and "logged out" in (failure.get("message") or "")
    assert cases[1].find("failure") is None
    assert "/tmp/uploads/" in (cases[2].find("failure").text or "")  # type: ignore[union-attr]
    ET.tostring(root)


def test_json_and_html_carry_the_evidence(tmp_path: Path) -> None:
    rep = sample_report()
    report.write_json(rep, tmp_path / "r.json")
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["exit_code"] == 1 and doc["checks"][0]["changes"][0]["count"] == 231
    page = render_html(report.journal_view(rep))
    assert "statelab check: shop:app" in page and "logged out" in page and "/tmp/uploads/" in page


def test_the_terminal_report_says_what_failed_and_the_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    report.show(sample_report())
    out = capsys.readouterr().out
    assert "FAILED" in out and "PASSED" in out and "(exit 1)" in out
    assert "'logged out': baseline 0 (0.0%) -> 231" in out
