"""Every scenario, quick profile, against real processes and both apps: the figures behind each verdict.

One run of `statelab run all --quick` (in-process) feeds every test; the tests assert the measured
numbers that make each verdict, not only the verdict, and that nothing is left running.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import psutil
import pytest

from statelab.report import journal
from statelab.runner import NullProgress, RunOptions, run_all
from statelab.scenario import RunReport, ScenarioResult
from tests.support.procs import live_children

pytestmark = pytest.mark.live


@pytest.fixture(scope="module")
def children_before() -> set[int]:
    """Processes other fixtures of this session (shared stores) already run before the scenarios."""
    return live_children()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, children_before: set[int]) -> RunReport:
    return run_all(RunOptions("all", quick=True, seed=1, run_dir=tmp_path_factory.mktemp("scenarios")),
                   NullProgress())


def case(run: RunReport, scenario: str, app: str, variant: str = "") -> ScenarioResult:
    found = [r for r in run.results if (r.scenario, r.app, r.variant) == (scenario, app, variant)]
    assert len(found) == 1, f"no single result for {scenario}/{app}/{variant}"
    r = found[0]
    assert r.outcome != "error", f"{scenario} on {r.label} broke: {r.verdict.explanation}"
    return r


def test_rolling_deploy_logs_stateful_users_out_and_empties_carts(run: RunReport) -> None:
    r = case(run, "rolling-deploy", "stateful")
    assert r.figure("instances_restarted") == 3
    assert r.figure("users_logged_out") > 0
    assert r.figure("items_lost") > 0
    assert r.outcome == "reproduced"


def test_rolling_deploy_loses_nothing_on_the_stateless_app(run: RunReport) -> None:
    r = case(run, "rolling-deploy", "stateless")
    assert r.figure("instances_restarted") == 3
    assert r.figure("logins") > 0 and r.figure("items_added") > 0
    assert r.figure("users_logged_out") == 0
    assert r.figure("items_lost") == 0
    assert r.figure("failed_requests") == 0
    assert r.outcome == "survived"


def test_nat_hotspot_piles_the_nat_onto_one_stateful_instance(run: RunReport) -> None:
    r = case(run, "nat-hotspot", "stateful")
    assert r.figure("max_mean_ratio") > 2.0
    assert r.figure("hottest_share") > 50
    assert r.outcome == "reproduced"


def test_nat_hotspot_spreads_evenly_on_the_stateless_app(run: RunReport) -> None:
    r = case(run, "nat-hotspot", "stateless")
    assert r.figure("max_mean_ratio") < 1.3
    assert r.figure("idle_instances") == 0
    assert sum(i.requests for i in r.measurements.instances) > 100
    assert r.outcome == "survived"


def test_local_disk_upload_fails_about_n_minus_one_over_n_of_stateful_follow_ups(run: RunReport) -> None:
    r = case(run, "local-disk-upload", "stateful")
    expected = r.figure("expected_failed_share")
    assert expected == pytest.approx(66.7, abs=0.1)
    assert r.figure("uploads") > 0
    assert abs(r.figure("follow_up_failed_share") - expected) < 20
    assert r.outcome == "reproduced"


def test_local_disk_upload_finds_every_file_on_the_stateless_app(run: RunReport) -> None:
    r = case(run, "local-disk-upload", "stateless")
    assert r.figure("uploads") > 0 and r.figure("follow_ups") > 0
    assert r.figure("follow_ups_failed") == 0
    assert r.figure("downloads_ok") == r.figure("uploads") or r.figure("downloads_ok") > 0
    assert r.figure("jobs_done") > 0
    assert r.outcome == "survived"


def test_cold_cache_multiplies_db_load_on_the_stateful_app_only(run: RunReport) -> None:
    stateful = case(run, "cold-cache-autoscale", "stateful")
    stateless = case(run, "cold-cache-autoscale", "stateless")
    assert stateful.figure("instances_after") == 6 and stateless.figure("instances_after") == 6
    assert stateful.figure("db_load_ratio") >= 2.0
    assert stateless.figure("db_load_ratio") < 2.0
    assert stateful.figure("new_hit_ratio") < stateless.figure("new_hit_ratio")
    assert not [r for r in run.results if r.variant]  # comparison columns run only in the full profile


def test_every_expectation_matched_and_the_journal_is_complete(run: RunReport, tmp_path: Path) -> None:
    assert [r.label for r in run.results if not r.matched] == []
    assert run.exit_code == 0
    path = tmp_path / "journal.json"
    journal.write_json(run, path)
    doc = json.loads(path.read_text())
    assert len(doc["results"]) == 8 and len(doc["prices"]) == 4
    assert all(r["series"] and r["events"] for r in doc["results"])


def test_no_child_process_is_left_running(run: RunReport, children_before: set[int]) -> None:
    left = [psutil.Process(pid).cmdline()[:3] for pid in live_children() - children_before if psutil.pid_exists(pid)]
    assert left == [], f"left running after the scenarios: {left}"


@pytest.mark.haproxy
@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed: apt-get install haproxy")
def test_the_nat_lesson_holds_behind_haproxy(tmp_path: Path, children_before: set[int]) -> None:
    """`--lb haproxy`: the same scenario, HAProxy's `balance source` instead of the builtin ip-hash."""
    report = run_all(RunOptions("nat-hotspot", quick=True, seed=1, lb="haproxy", run_dir=tmp_path), NullProgress())
    stateful, stateless = (case(report, "nat-hotspot", app) for app in ("stateful", "stateless"))
    assert stateful.figure("max_mean_ratio") > 2.0 and stateful.outcome == "reproduced"
    assert stateless.figure("max_mean_ratio") < 1.3 and stateless.outcome == "survived"
    assert not (live_children() - children_before), "processes left running after the HAProxy run"


@pytest.mark.parametrize("scenario", ["nat-hotspot", "local-disk-upload"])
def test_a_run_against_a_target_that_never_answers_is_an_error_not_a_finding(
        scenario: str, tmp_path: Path) -> None:
    """Nothing listening: the users got no answer, so the case is `error` (exit 2) with a one-line reason."""
    from statelab.cli import main
    from statelab.procs import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    out = tmp_path / "run.json"
    code = main(["run", scenario, "--quick", "--app", "stateful", "--target", dead, "--json", str(out),
                 "--run-dir", str(tmp_path / "runs"), "--users", "20"])
    assert code == 2
    (result,) = json.loads(out.read_text())["results"]
    assert result["outcome"] == "error" and not result["matched"]
    assert result["explanation"].startswith(f"the users got no answer from {dead}")
    assert "\n" not in result["explanation"]
