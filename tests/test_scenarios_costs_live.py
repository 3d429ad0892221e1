"""The costs group, quick profile, against real processes: the figures behind each verdict of the stateless side.

One in-process run of `statelab run costs --quick` feeds every test (as tests/test_scenarios_live.py
does for the classic disasters); the tests assert the measured numbers that make each verdict, not
only the verdict, and that nothing is left running.
"""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest

from statelab.report import html, journal
from statelab.runner import NullProgress, RunOptions, run_all
from statelab.scenario import RunReport, ScenarioResult
from tests.support.procs import live_children

pytestmark = pytest.mark.live


@pytest.fixture(scope="module")
def children_before() -> set[int]:
    return live_children()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, children_before: set[int]) -> RunReport:
    return run_all(RunOptions("costs", quick=True, seed=1, run_dir=tmp_path_factory.mktemp("costs")), NullProgress())


def case(run: RunReport, scenario: str, app: str, variant: str = "") -> ScenarioResult:
    found = [r for r in run.results if (r.scenario, r.app, r.variant) == (scenario, app, variant)]
    assert len(found) == 1, f"no single result for {scenario}/{app}/{variant}"
    r = found[0]
    assert r.outcome != "error", f"{scenario} on {r.label} broke: {r.verdict.explanation}"
    return r


# --- redis-outage -------------------------------------------------------------------------------------

def test_redis_outage_leaves_the_stateful_app_alone(run: RunReport) -> None:
    r = case(run, "redis-outage", "stateful")
    assert r.figure("failed_requests") == 0 and r.figure("users_logged_out") == 0 and r.figure("items_lost") == 0
    assert r.figure("revocations") == 8 and r.figure("revocations_forgotten") == 0
    assert r.outcome == "survived"


def test_redis_without_persistence_loses_sessions_carts_revocations_and_its_cache(run: RunReport) -> None:
    r = case(run, "redis-outage", "stateless", "no persistence")
    assert r.figure("failed_requests") > 0 and r.figure("outage_s") >= 1.5
    assert r.figure("users_logged_out") > 0 and r.figure("items_lost") > 0
    assert r.figure("revocations_forgotten") == r.figure("revocations") == 8  # every revoked token works again
    assert r.figure("first_success_after_back_s") < 1.0  # the app answers again as soon as Redis does
    # The product cache came back cold (the users' first requests refill a few entries before it is counted).
    assert r.figure("cache_before") > 0 and r.figure("cache_after") <= 0.25 * r.figure("cache_before")
    assert r.outcome == "reproduced"


def test_redis_with_aof_fails_requests_but_loses_nothing(run: RunReport) -> None:
    r = case(run, "redis-outage", "stateless", "AOF everysec")
    assert r.figure("failed_requests") > 0
    assert r.figure("cache_after") >= r.figure("cache_before") > 0  # replayed from the append-only file
    assert r.figure("users_logged_out") == 0 and r.figure("items_lost") == 0 and r.figure("revocations_forgotten") == 0
    assert r.outcome == "survived"


def test_redis_with_a_replica_fails_over_in_seconds_and_loses_nothing(run: RunReport) -> None:
    r = case(run, "redis-outage", "stateless", "replica + Sentinel")
    assert 0 < r.figure("failover_s") < 10
    assert r.figure("cache_after") >= 0.9 * r.figure("cache_before") > 0  # the replica had it (asynchronously)
    assert r.figure("users_logged_out") == 0 and r.figure("items_lost") == 0 and r.figure("revocations_forgotten") == 0
    assert r.outcome == "survived"


def test_readyz_checks_empty_the_rotation_and_delay_the_recovery(run: RunReport) -> None:
    r = case(run, "redis-outage", "stateless", "no persistence + readyz checks")
    plain = case(run, "redis-outage", "stateless", "no persistence")
    assert r.figure("readyz_checks") == 1 and plain.figure("readyz_checks") == 0
    assert r.figure("no_instance_s") > 0.5 and plain.figure("no_instance_s") == 0
    assert r.figure("back_in_rotation_s") > 0  # the checks must pass again (rise) before users get answers
    assert r.figure("first_success_after_back_s") > plain.figure("first_success_after_back_s")
    assert r.figure("users_logged_out") > 0 and "hurt more than it helped" in r.verdict.explanation
    assert r.outcome == "reproduced"


# --- jwt-theft ----------------------------------------------------------------------------------------

def test_a_logout_ends_a_stolen_session_cookie_at_once(run: RunReport) -> None:
    r = case(run, "jwt-theft", "stateful")
    assert r.figure("accepted_before_logout") >= 1 and r.figure("accepted_after_logout") == 0
    assert r.figure("attacker_access_s") == 0 and r.outcome == "survived"


def test_a_stolen_hour_long_jwt_outlives_the_logout_and_the_run(run: RunReport) -> None:
    r = case(run, "jwt-theft", "stateless", "JWT 1 h")
    assert r.figure("outlived_run") == 1 and r.figure("accepted_after_logout") == r.figure("replays")
    assert 3500 < r.figure("attacker_access_s") <= 3600  # reported as the token's whole lifetime
    assert r.figure("refresh_after_logout") == 0  # the refresh token is stateful: the logout revoked it
    assert r.figure("redis_lookups_per_request") == 0
    assert r.outcome == "reproduced"


def test_a_short_token_dies_within_its_lifetime_and_a_reused_refresh_revokes_the_login(run: RunReport) -> None:
    r = case(run, "jwt-theft", "stateless", "JWT 2 s + rotation")
    assert r.figure("outlived_run") == 0 and 0 <= r.figure("attacker_access_s") <= 2.0
    assert r.figure("reuse_detected") == 1 and r.figure("refresh_after_logout") == 0
    assert r.outcome == "survived"


def test_a_denylist_ends_a_stolen_token_at_once_for_one_lookup_per_request(run: RunReport) -> None:
    r = case(run, "jwt-theft", "stateless", "JWT 1 h + denylist")
    none = case(run, "jwt-theft", "stateless", "JWT 1 h")
    assert r.figure("accepted_after_logout") == 0 and r.figure("attacker_access_s") == 0
    assert r.figure("redis_lookups_per_request") == pytest.approx(1.0, abs=0.05)
    assert r.figure("me_p50_ms") > 0 and none.figure("me_p50_ms") > 0
    assert r.outcome == "survived"


# --- s3-latency ---------------------------------------------------------------------------------------

def test_s3_latency_columns_pay_what_they_should(run: RunReport) -> None:
    disk = case(run, "s3-latency", "stateful")
    s3 = case(run, "s3-latency", "stateless")
    slow = case(run, "s3-latency", "stateless", "S3 + 50 ms")
    cached = case(run, "s3-latency", "stateless", "S3 + 50 ms + read cache")
    for r in (disk, s3, slow, cached):
        assert r.figure("uploads") >= 5 and r.figure("corrupt") == 0 and r.figure("hangs") == 0
        assert r.figure("half_written") == 0
    assert slow.figure("upload_p50_ms") >= 50 and slow.figure("download_p50_ms") >= 100  # one S3 call up, two down
    assert slow.figure("download_p50_ms") > s3.figure("download_p50_ms") + 50
    assert cached.figure("download_p50_ms") < 60 <= cached.figure("download_p99_ms")  # hits, and first reads
    assert (disk.outcome, s3.outcome, slow.outcome, cached.outcome) == ("survived", "survived", "reproduced",
                                                                          "survived")


def test_with_s3_down_uploads_fail_fast_with_503_and_leave_nothing_half_written(run: RunReport) -> None:
    for variant in ("", "S3 + 50 ms", "S3 + 50 ms + read cache"):
        r = case(run, "s3-latency", "stateless", variant)
        assert r.figure("s3_down_uploads") > 0 and r.figure("s3_down_503") == r.figure("s3_down_uploads")
        assert r.figure("s3_down_p99_ms") < 2000 and r.figure("half_written") == 0


# --- server-crash -------------------------------------------------------------------------------------

def test_a_crash_logs_out_the_sticky_users_of_the_dead_instance(run: RunReport) -> None:
    cookie = case(run, "server-crash", "stateful", "cookie")
    iphash = case(run, "server-crash", "stateful", "ip-hash")
    for r in (cookie, iphash):
        assert r.figure("victim_requests_before") > 0
        assert r.figure("users_logged_out") > 0 and r.figure("items_lost") > 0 and r.outcome == "reproduced"
        assert r.figure("routed_after_kill_s") < 2.0
    assert 15 <= cookie.figure("logged_out_share") <= 55  # about the dead instance's third
    assert iphash.figure("logged_out_share") >= cookie.figure("logged_out_share") - 10  # modulo remaps more


def test_a_crash_loses_nothing_on_the_stateless_app(run: RunReport) -> None:
    r = case(run, "server-crash", "stateless", "round-robin")
    assert r.figure("victim_requests_before") > 0
    assert r.figure("users_logged_out") == 0 and r.figure("items_lost") == 0 and r.outcome == "survived"


# --- worker-crash -------------------------------------------------------------------------------------

def test_the_in_process_queue_loses_its_jobs(run: RunReport) -> None:
    r = case(run, "worker-crash", "stateful")
    assert r.figure("jobs") >= 1 and r.figure("jobs_lost") == r.figure("jobs") and r.outcome == "reproduced"


def test_an_external_queue_runs_the_killed_job_again_and_its_effect_once(run: RunReport) -> None:
    r = case(run, "worker-crash", "stateless")
    assert r.figure("jobs_lost") == 0 and r.figure("jobs_ran_twice") >= 1
    assert r.figure("victim_effects") == 1 and r.figure("jobs_effect_doubled") == 0
    assert 0 < r.figure("redelivery_s") < 10
    assert r.outcome == "survived"


def test_without_idempotence_the_killed_job_takes_effect_twice(run: RunReport) -> None:
    r = case(run, "worker-crash", "stateless", "not idempotent")
    assert r.figure("jobs_lost") == 0 and r.figure("victim_effects") == 2 and r.figure("jobs_effect_doubled") == 1
    assert r.outcome == "reproduced"


# --- worker-split -------------------------------------------------------------------------------------

def test_four_workers_split_a_stateful_instances_sessions(run: RunReport) -> None:
    split = case(run, "worker-split", "stateful", "4 workers")
    one = case(run, "worker-split", "stateful", "1 worker")
    stateless = case(run, "worker-split", "stateless", "4 workers")
    assert split.figure("workers_seen") >= 2 and one.figure("workers_seen") == 1
    assert split.figure("logouts_per_100") > 20 and split.outcome == "reproduced"
    assert one.figure("logout_events") == 0 and one.outcome == "survived"
    assert stateless.figure("workers_seen") >= 2 and stateless.figure("logout_events") == 0
    assert stateless.outcome == "survived"


# --- lost-update --------------------------------------------------------------------------------------

def test_a_naive_cart_blob_loses_concurrent_adds_and_atomic_carts_do_not(run: RunReport) -> None:
    naive = case(run, "lost-update", "stateless", "naive cart")
    atomic = case(run, "lost-update", "stateless")
    stateful = case(run, "lost-update", "stateful")
    assert naive.figure("adds_acked") == 400 and naive.figure("items_lost_per_1000") > 50
    assert naive.figure("instances_used") == 2 and naive.outcome == "reproduced"
    assert atomic.figure("adds_acked") == 400 and atomic.figure("items_lost") == 0 and atomic.outcome == "survived"
    assert stateful.figure("items_lost") == 0 and stateful.figure("instances_used") == 1  # sticky: one memory
    assert stateful.outcome == "survived"


# --- the run as a whole -------------------------------------------------------------------------------

def test_every_cost_case_matched_and_every_report_renders_it(run: RunReport, tmp_path: Path) -> None:
    assert [r.label for r in run.results if not r.matched] == []
    assert run.exit_code == 0
    assert [n for n, _ in run.scenario_wall_s] == ["redis-outage", "jwt-theft", "s3-latency", "server-crash",
                                                  "worker-crash", "worker-split", "lost-update"]
    journal.write_json(run, tmp_path / "run.json")
    doc = json.loads((tmp_path / "run.json").read_text())
    assert len(doc["results"]) == 25 and all(r["series"] and r["events"] for r in doc["results"])
    journal.write_junit(run, tmp_path / "junit.xml")
    assert (tmp_path / "junit.xml").read_text().count("<testcase") == 25
    page = html.render_html(doc)
    assert "stolen token accepted/s" in page and "Redis outage" in page


def test_no_child_process_is_left_running(run: RunReport, children_before: set[int]) -> None:
    left = [psutil.Process(pid).cmdline()[:3] for pid in live_children() - children_before if psutil.pid_exists(pid)]
    assert left == [], f"left running after the scenarios: {left}"
