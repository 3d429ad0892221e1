"""Verdicts are pure functions of measurements: each scenario's verdict, the judging rules, exit codes.

The costs group (what the stateless design costs and how it fails) has its own section: there a
stateless case may be the one expected to reproduce, and the mitigation the one expected to survive.
"""

from __future__ import annotations

import math

import pytest

from scenarios import COSTS, DISASTERS, REGISTRY
from scenarios.cold_cache_autoscale import SCENARIO as COLD_CACHE
from scenarios.jwt_theft import SCENARIO as JWT_THEFT
from scenarios.local_disk_upload import SCENARIO as LOCAL_DISK
from scenarios.lost_update import SCENARIO as LOST_UPDATE
from scenarios.nat_hotspot import SCENARIO as NAT
from scenarios.redis_outage import SCENARIO as REDIS_OUTAGE
from scenarios.rolling_deploy import SCENARIO as ROLLING
from scenarios.s3_latency import SCENARIO as S3_LATENCY
from scenarios.server_crash import SCENARIO as SERVER_CRASH
from scenarios.worker_crash import SCENARIO as WORKER_CRASH
from scenarios.worker_split import SCENARIO as WORKER_SPLIT
from statelab import measure
from statelab.scenario import (EXIT_DEVIATED, EXIT_ERROR, EXIT_OK, AppCase, Figure, Finding, Latency, Measurements,
                               Outcome, ScenarioResult, Tolerance, Verdict, exit_code, judge, matches, percentile,
                               stateless_prices)
from statelab.turns import IN_TURNS, TOGETHER


def m(**values: float) -> Measurements:
    return Measurements(tuple(Figure(k, k, v) for k, v in values.items()))


# --- each scenario's verdict -----------------------------------------------------------------------

ROLLING_OK = dict(logins=120, items_added=300, instances_restarted=3)


def test_rolling_deploy_logouts_and_lost_items_reproduce() -> None:
    v = ROLLING.verdict(m(users_logged_out=40, items_lost=95, failed_requests=0, **ROLLING_OK))
    assert v.outcome == "reproduced"
    assert "users_logged_out = 40" in v.explanation and "items_lost = 95" in v.explanation


def test_rolling_deploy_with_nothing_lost_survives() -> None:
    v = ROLLING.verdict(m(users_logged_out=0, items_lost=0, failed_requests=0, **ROLLING_OK))
    assert v.outcome == "survived"
    assert all(c.held for c in v.checks)


def test_rolling_deploy_a_single_failed_request_is_out_of_tolerance() -> None:
    assert ROLLING.verdict(m(users_logged_out=0, items_lost=0, failed_requests=1, **ROLLING_OK)).outcome == "reproduced"


def test_rolling_deploy_without_traffic_is_an_error_not_a_finding() -> None:
    v = ROLLING.verdict(m(users_logged_out=0, items_lost=0, failed_requests=0, logins=0, items_added=0,
                          instances_restarted=3))
    assert v.outcome == "error"
    assert "logins" in v.explanation


def test_nat_hotspot_uneven_shares_reproduce() -> None:
    assert NAT.verdict(m(requests=5000, max_mean_ratio=3.6, idle_instances=0, users_logged_out=0)).outcome == \
        "reproduced"
    assert NAT.verdict(m(requests=5000, max_mean_ratio=1.1, idle_instances=1, users_logged_out=0)).outcome == \
        "reproduced"


def test_nat_hotspot_logouts_from_an_ejected_hot_instance_reproduce() -> None:
    v = NAT.verdict(m(requests=5000, max_mean_ratio=1.1, idle_instances=0, users_logged_out=300))
    assert v.outcome == "reproduced" and "users_logged_out = 300" in v.explanation


def test_nat_hotspot_even_shares_survive() -> None:
    assert NAT.verdict(m(requests=5000, max_mean_ratio=1.05, idle_instances=0, users_logged_out=0)).outcome == \
        "survived"


def test_nat_hotspot_threshold_is_strict() -> None:
    assert NAT.verdict(m(requests=5000, max_mean_ratio=1.3, idle_instances=0, users_logged_out=0)).outcome == \
        "reproduced"


def test_local_disk_upload_failed_follow_ups_reproduce_and_explain_the_expected_share() -> None:
    v = LOCAL_DISK.verdict(m(uploads=50, follow_ups=300, follow_ups_failed=200, downloads_corrupt=0,
                             follow_up_failed_share=66.7, expected_failed_share=66.7))
    assert v.outcome == "reproduced"
    assert "67%" in v.explanation


def test_local_disk_upload_every_follow_up_answered_survives() -> None:
    v = LOCAL_DISK.verdict(m(uploads=50, follow_ups=300, follow_ups_failed=0, downloads_corrupt=0))
    assert v.outcome == "survived"


def test_local_disk_upload_with_no_upload_is_an_error() -> None:
    assert LOCAL_DISK.verdict(m(uploads=0, follow_ups=0, follow_ups_failed=0, downloads_corrupt=0)).outcome == "error"


def test_cold_cache_db_multiple_reproduces_and_near_baseline_survives() -> None:
    base = dict(baseline_db_qps=40.0, instances_after=6, failed_requests=0)
    assert COLD_CACHE.verdict(m(db_load_ratio=4.2, **base)).outcome == "reproduced"
    assert COLD_CACHE.verdict(m(db_load_ratio=1.2, **base)).outcome == "survived"


def test_cold_cache_without_baseline_is_an_error() -> None:
    v = COLD_CACHE.verdict(m(baseline_db_qps=0.0, instances_after=6, db_load_ratio=math.nan, failed_requests=0))
    assert v.outcome == "error"


STAMPEDE_OK = dict(cache_ttl_s=2, refills=800, baseline_db_qps=45.0, instances_after=6, failed_requests=0)


def test_cold_cache_short_ttl_columns_are_judged_on_the_stampede_not_the_load_ratio() -> None:
    v = COLD_CACHE.verdict(m(hot_db_loads_per_refill=1.5, db_load_ratio=1.0, **STAMPEDE_OK))
    assert v.outcome == "reproduced" and "hot_db_loads_per_refill = 1.5" in v.explanation
    assert "stampede" in v.explanation
    v = COLD_CACHE.verdict(m(hot_db_loads_per_refill=1.0, db_load_ratio=2.5, **STAMPEDE_OK))
    assert v.outcome == "survived" and "db_load_ratio" not in v.explanation


def test_cold_cache_short_ttl_without_refills_is_an_error() -> None:
    v = COLD_CACHE.verdict(m(hot_db_loads_per_refill=math.nan, **{**STAMPEDE_OK, "refills": 0}))
    assert v.outcome == "error" and "refills" in v.explanation


def test_cold_cache_default_ttl_keeps_the_load_ratio_verdict() -> None:
    base = dict(baseline_db_qps=40.0, instances_after=6, failed_requests=0, refills=0)
    assert COLD_CACHE.verdict(m(cache_ttl_s=60, db_load_ratio=4.2, **base)).outcome == "reproduced"
    assert COLD_CACHE.verdict(m(cache_ttl_s=60, db_load_ratio=1.2, hot_db_loads_per_refill=3.0, **base)).outcome == \
        "survived"


def test_cold_cache_comparison_columns_share_one_short_ttl_and_differ_only_in_the_lock() -> None:
    main, *variants = [c for c in COLD_CACHE.cases() if c.app == "stateless"]
    assert main.env == () and main.expect == "survived"
    assert [dict(c.env).get("LAB_CACHE_STAMPEDE_PROTECTION", "1") for c in variants] == ["1", "0"]
    assert len({dict(c.env)["LAB_CACHE_TTL_S"] for c in variants}) == 1
    assert all(c.expect is None and not c.in_quick for c in variants)


def test_every_disaster_is_named_in_kebab_case_and_expects_both_findings() -> None:
    names = [s.name for s in REGISTRY.find("all")]
    assert names == ["rolling-deploy", "nat-hotspot", "local-disk-upload", "cold-cache-autoscale"]
    for s in REGISTRY.group(DISASTERS):
        assert s.expect == {"stateful": "reproduced", "stateless": "survived"}
        assert s.tolerances and s.summary and s.title
        assert "What breaks" in (type(s).__doc__ or "") and "stateless design" in (type(s).__doc__ or "")
        assert {c.app for c in s.cases()} == {"stateful", "stateless"}
        assert [c.app for c in s.cases() if c.in_quick and not c.variant] == ["stateful", "stateless"]


def test_quick_profiles_are_smaller_and_users_override() -> None:
    for s in REGISTRY.group(DISASTERS):
        quick, full = s.profile(True, None), s.profile(False, None)
        assert quick.users < full.users and quick.phase_s < full.phase_s
    assert ROLLING.profile(True, 77).users == 77


# --- the costs group: what the stateless design costs and how it fails -----------------------------

COSTS_NAMES = ["redis-outage", "jwt-theft", "s3-latency", "server-crash", "worker-crash", "worker-split", "lost-update"]


def test_the_costs_group_has_the_seven_scenarios_and_leaves_all_alone() -> None:
    assert [s.name for s in REGISTRY.group(COSTS)] == COSTS_NAMES
    assert [s.name for s in REGISTRY.find("costs")] == COSTS_NAMES
    assert not set(COSTS_NAMES) & {s.name for s in REGISTRY.find("all")}


@pytest.mark.parametrize("scenario", REGISTRY.group(COSTS), ids=lambda s: s.name)
def test_every_cost_scenario_tells_its_story_and_judges_a_mitigation(scenario: object) -> None:
    s = scenario
    doc = type(s).__doc__ or ""
    assert "What breaks" in doc and "Why" in doc and "stateless design" in doc
    assert s.tolerances and s.summary and s.title  # type: ignore[attr-defined]
    cases = s.cases()  # type: ignore[attr-defined]
    assert len({c.key for c in cases}) == len(cases)
    assert all("," not in c.key and "/" not in c.key for c in cases)  # keys name run directories
    expected = {c.expect for c in cases if c.in_quick}
    assert expected == {"reproduced", "survived"}  # the failure and what survives it, both in --quick
    assert s.expect == {c.label: c.expect for c in cases if c.expect}  # type: ignore[attr-defined]
    assert s.traffic == (IN_TURNS if s.name == "s3-latency" else TOGETHER)  # type: ignore[attr-defined]
    quick, full = s.profile(True, None), s.profile(False, None)  # type: ignore[attr-defined]
    assert quick.users <= full.users and quick.phase_s <= full.phase_s


def test_each_cost_scenario_runs_the_stateless_app_and_the_cases_the_issue_names() -> None:
    labels = {s.name: [c.label for c in s.cases()] for s in REGISTRY.group(COSTS)}
    assert labels["redis-outage"] == ["stateful", "stateless (no persistence)", "stateless (AOF everysec)",
                                      "stateless (replica + Sentinel)", "stateless (no persistence + readyz checks)"]
    assert labels["worker-split"] == ["stateful (4 workers)", "stateful (1 worker)", "stateless (4 workers)"]
    assert [c.expect for c in LOST_UPDATE.cases()] == ["survived", "survived", "reproduced"]
    assert dict(LOST_UPDATE.cases()[2].env) == {"LAB_CART_MODE": "naive"}
    assert dict(WORKER_CRASH.cases()[2].env)["LAB_JOB_IDEMPOTENT"] == "0"
    jwt = {c.variant: dict(c.env) for c in JWT_THEFT.cases() if c.app == "stateless"}
    assert jwt["JWT 1 h"]["LAB_JWT_REVOCATION"] == "none" and jwt["JWT 1 h"]["LAB_JWT_ACCESS_TTL_S"] == "3600"
    assert jwt["JWT 2 s + rotation"]["LAB_JWT_REUSE_DETECTION"] == "1"
    assert jwt["JWT 1 h + denylist"]["LAB_JWT_REVOCATION"] == "denylist"


REDIS_OK = dict(logins=30, items_added=80, revocations=8, failed_requests=150, failover_s=math.nan)


def test_redis_outage_without_persistence_loses_sessions_carts_and_revocations() -> None:
    v = REDIS_OUTAGE.verdict(m(users_logged_out=12, items_lost=40, revocations_forgotten=8, readyz_checks=0,
                               **REDIS_OK))
    assert v.outcome == "reproduced" and "came back empty" in v.explanation
    assert "revocations_forgotten = 8" in v.explanation and "readyz" not in v.explanation


def test_redis_outage_with_aof_or_a_failover_survives_despite_failed_requests() -> None:
    aof = REDIS_OUTAGE.verdict(m(users_logged_out=0, items_lost=0, revocations_forgotten=0, **REDIS_OK))
    assert aof.outcome == "survived" and "append-only file" in aof.explanation
    ha = REDIS_OUTAGE.verdict(m(users_logged_out=0, items_lost=0, revocations_forgotten=0,
                                **{**REDIS_OK, "failover_s": 2.4}))
    assert ha.outcome == "survived" and "Sentinel" in ha.explanation and "2.4 s" in ha.explanation


def test_redis_outage_a_single_forgotten_revocation_is_out_of_tolerance() -> None:
    v = REDIS_OUTAGE.verdict(m(users_logged_out=0, items_lost=0, revocations_forgotten=1, **REDIS_OK))
    assert v.outcome == "reproduced" and "revocations_forgotten = 1" in v.explanation


def test_redis_outage_says_readyz_checks_hurt_when_they_emptied_the_rotation() -> None:
    v = REDIS_OUTAGE.verdict(m(users_logged_out=12, items_lost=40, revocations_forgotten=8, readyz_checks=1,
                               no_instance_s=2.3, first_success_after_back_s=0.45, **REDIS_OK))
    assert v.outcome == "reproduced"
    assert "every instance out at once (2.3 s" in v.explanation and "0.5 s" in v.explanation
    assert "hurt more than it helped" in v.explanation


def test_redis_outage_the_stateful_app_is_unaffected() -> None:
    v = REDIS_OUTAGE.verdict(m(users_logged_out=0, items_lost=0, revocations_forgotten=0,
                               **{**REDIS_OK, "failed_requests": 0}))
    assert v.outcome == "survived" and "did not touch it" in v.explanation


def test_redis_outage_without_a_revocation_probe_is_an_error() -> None:
    v = REDIS_OUTAGE.verdict(m(users_logged_out=0, items_lost=0, revocations_forgotten=0,
                               **{**REDIS_OK, "revocations": 0}))
    assert v.outcome == "error" and "revocations" in v.explanation


JWT_OK = dict(accepted_before_logout=5, replays=24, refresh_after_logout=0)


def test_jwt_theft_a_token_that_outlives_the_run_is_judged_on_its_whole_lifetime() -> None:
    v = JWT_THEFT.verdict(m(attacker_access_s=3599, attacker_access_measured_s=2.4, outlived_run=1, **JWT_OK))
    assert v.outcome == "reproduced" and "whole lifetime" in v.explanation and "attacker_access_s = 3599" in \
        v.explanation


def test_jwt_theft_a_logout_that_ends_access_at_once_or_within_a_short_lifetime_survives() -> None:
    at_once = JWT_THEFT.verdict(m(attacker_access_s=0, attacker_access_measured_s=0, outlived_run=0, **JWT_OK))
    assert at_once.outcome == "survived" and "at once" in at_once.explanation
    short = JWT_THEFT.verdict(m(attacker_access_s=1.4, attacker_access_measured_s=1.4, outlived_run=0, **JWT_OK))
    assert short.outcome == "survived" and "1.4 s" in short.explanation


def test_jwt_theft_a_refresh_after_the_logout_is_out_of_tolerance() -> None:
    v = JWT_THEFT.verdict(m(attacker_access_s=0, attacker_access_measured_s=0, outlived_run=0,
                            **{**JWT_OK, "refresh_after_logout": 1}))
    assert v.outcome == "reproduced" and "refresh_after_logout = 1" in v.explanation


def test_jwt_theft_without_a_working_stolen_credential_is_an_error() -> None:
    v = JWT_THEFT.verdict(m(attacker_access_s=0, attacker_access_measured_s=0, outlived_run=0,
                            **{**JWT_OK, "accepted_before_logout": 0}))
    assert v.outcome == "error"


S3_OK = dict(uploads=12, downloads=36, hangs=0, half_written=0, s3_down_uploads=20, download_p99_ms=8.0)


def test_s3_latency_slow_downloads_reproduce_and_say_where_the_time_went() -> None:
    v = S3_LATENCY.verdict(m(download_p50_ms=112.0, app_download_p50_ms=111.0, **S3_OK))
    assert v.outcome == "reproduced" and "112 ms" in v.explanation


def test_s3_latency_a_read_cache_survives_and_names_its_slow_tail() -> None:
    v = S3_LATENCY.verdict(m(download_p50_ms=3.1, **{**S3_OK, "download_p99_ms": 115.0}))
    assert v.outcome == "survived" and "first read of each file" in v.explanation and "failed fast" in v.explanation


def test_s3_latency_a_hang_or_a_half_written_file_is_out_of_tolerance() -> None:
    assert S3_LATENCY.verdict(m(download_p50_ms=3.0, **{**S3_OK, "hangs": 1})).outcome == "reproduced"
    assert S3_LATENCY.verdict(m(download_p50_ms=3.0, **{**S3_OK, "half_written": 1})).outcome == "reproduced"


def test_s3_latency_the_threshold_is_inclusive_and_nothing_downloaded_is_an_error() -> None:
    assert S3_LATENCY.verdict(m(download_p50_ms=60.0, **S3_OK)).outcome == "survived"
    assert S3_LATENCY.verdict(m(download_p50_ms=3.0, **{**S3_OK, "downloads": 0})).outcome == "error"


CRASH_OK = dict(logins=45, items_added=300, victim_requests_before=200, dead_share=33.3)


def test_server_crash_sticky_users_of_the_dead_instance_are_logged_out() -> None:
    v = SERVER_CRASH.verdict(m(users_logged_out=15, items_lost=26, logged_out_share=33.3, **CRASH_OK))
    assert v.outcome == "reproduced" and "33% of users" in v.explanation and "survivors" not in v.explanation


def test_server_crash_ip_hash_remapping_strands_the_survivors_users_too() -> None:
    v = SERVER_CRASH.verdict(m(users_logged_out=28, items_lost=49, logged_out_share=62.2, **CRASH_OK))
    assert v.outcome == "reproduced" and "survivors" in v.explanation


def test_server_crash_nothing_lost_survives_even_with_failed_requests() -> None:
    v = SERVER_CRASH.verdict(m(users_logged_out=0, items_lost=0, logged_out_share=0.0, failed_requests=6, **CRASH_OK))
    assert v.outcome == "survived"


def test_server_crash_an_idle_victim_is_an_error() -> None:
    v = SERVER_CRASH.verdict(m(users_logged_out=0, items_lost=0, **{**CRASH_OK, "victim_requests_before": 0}))
    assert v.outcome == "error"


JOBS_OK = dict(jobs=4, killed=1)


def test_worker_crash_jobs_lost_with_their_process_reproduce() -> None:
    v = WORKER_CRASH.verdict(m(jobs_lost=4, jobs_effect_doubled=0, **JOBS_OK))
    assert v.outcome == "reproduced" and "4 of 4 will never run" in v.explanation


def test_worker_crash_a_doubled_effect_reproduces_with_its_own_story() -> None:
    v = WORKER_CRASH.verdict(m(jobs_lost=0, jobs_effect_doubled=1, **JOBS_OK))
    assert v.outcome == "reproduced" and "happened twice" in v.explanation and "never run" not in v.explanation


def test_worker_crash_at_least_once_and_idempotent_survives() -> None:
    assert WORKER_CRASH.verdict(m(jobs_lost=0, jobs_effect_doubled=0, **JOBS_OK)).outcome == "survived"


def test_worker_crash_without_a_kill_is_an_error() -> None:
    assert WORKER_CRASH.verdict(m(jobs_lost=0, jobs_effect_doubled=0, jobs=4, killed=0)).outcome == "error"


def test_worker_split_logouts_reproduce_and_say_how_many_workers_answered() -> None:
    v = WORKER_SPLIT.verdict(m(users_logged_out=20, logins=180, page_loads=200, logouts_per_100=74.0,
                               workers_seen=4))
    assert v.outcome == "reproduced" and "74 of every 100" in v.explanation and "4 workers" in v.explanation
    ok = WORKER_SPLIT.verdict(m(users_logged_out=0, logins=20, page_loads=200, logouts_per_100=0.0, workers_seen=4))
    assert ok.outcome == "survived"


def test_worker_split_without_page_loads_is_an_error() -> None:
    assert WORKER_SPLIT.verdict(m(users_logged_out=0, logins=20, page_loads=0)).outcome == "error"


def test_lost_update_items_lost_per_thousand_reproduce() -> None:
    v = LOST_UPDATE.verdict(m(tabs=8, adds_acked=400, items_lost=158, items_lost_per_1000=395.0))
    assert v.outcome == "reproduced" and "395 of every 1,000" in v.explanation
    assert LOST_UPDATE.verdict(m(tabs=8, adds_acked=400, items_lost=0, items_lost_per_1000=0.0)).outcome == "survived"


def test_lost_update_an_unreadable_cart_is_an_error_not_a_survival() -> None:
    assert LOST_UPDATE.verdict(m(tabs=8, adds_acked=400, items_lost=math.nan)).outcome == "error"


def test_rotation_and_failure_windows_from_samples() -> None:
    samples = [(0.0, ("app-1", "app-2")), (1.0, ()), (1.5, ()), (2.5, ("app-1",)), (3.0, ("app-1", "app-2"))]
    assert measure.empty_rotation_s(samples) == pytest.approx(1.5)
    assert measure.empty_rotation_s(samples, 1.2, 2.0) == pytest.approx(0.8)
    assert measure.empty_rotation_s([]) == 0.0
    assert measure.back_in_rotation_at(samples, 1.2) == 2.5
    hits = [measure.Hit(0.5, "app-1", 200, 1.0), measure.Hit(1.1, "app-1", 503, 1.0), measure.Hit(1.9, "", 503, 0.1),
            measure.Hit(2.0, "app-2", 0, 0.0), measure.Hit(2.6, "app-1", 401, 1.0), measure.Hit(2.7, "app-2", 200, 1.0)]
    assert measure.failure_span(hits, 1.0) == (1.1, 2.0)
    assert measure.failure_span(hits, 2.1) is None
    assert measure.first_answer_after(hits, 1.0) == 2.6  # a 401 is an answer: the app works, the session is gone
    assert measure.last_routed_to(hits, "app-2", 1.0) == 2.7


def test_count_per_second_fills_empty_seconds() -> None:
    series = measure.count_per_second("x", [10.2, 10.3, 12.9], 10.0)
    assert series.points == ((0.0, 2.0), (1.0, 0.0), (2.0, 1.0))
    assert measure.count_per_second("x", [], 0.0).points == ()


# --- judging rules ---------------------------------------------------------------------------------

def test_nan_never_satisfies_a_tolerance() -> None:
    assert not Tolerance("x", "<=", 0).holds(math.nan)


def test_a_tolerance_whose_figure_is_missing_is_never_broken_the_case_is_an_error() -> None:
    v = judge(m(y=1), (Tolerance("x", "<=", 0), Tolerance("y", "<=", 0)))
    assert v.outcome == "error" and "x" in v.explanation and "not measure" in v.explanation
    assert v.checks == ()
    v = judge(m(x=math.nan, y=0), (Tolerance("x", "<=", 0), Tolerance("y", "<=", 0)))
    assert v.outcome == "error"


def test_a_precondition_whose_figure_is_missing_is_an_error_naming_it() -> None:
    v = judge(m(x=0), (Tolerance("x", "<=", 0),), (Tolerance("requests", ">=", 1),))
    assert v.outcome == "error" and "requests was not measured" in v.explanation


@pytest.mark.parametrize("scenario", list(REGISTRY), ids=lambda s: s.name)
def test_every_scenario_errors_when_a_verdict_figure_is_missing(scenario: object) -> None:
    """A run that measured nothing is never a finding, whichever scenario it is."""
    v = scenario.verdict(m())  # type: ignore[attr-defined]
    assert v.outcome == "error"


def test_unknown_operator_is_refused() -> None:
    with pytest.raises(ValueError):
        Tolerance("x", "~", 0).holds(1)


def test_verdicts_are_deterministic() -> None:
    meas = m(users_logged_out=3, items_lost=7, failed_requests=0, **ROLLING_OK)
    assert ROLLING.verdict(meas) == ROLLING.verdict(meas)


# --- exit codes ------------------------------------------------------------------------------------

def result(outcome: Outcome, expected: Finding | None = "reproduced", scenario: str = "s", app: str = "stateful",
           variant: str = "", latency: Latency = Latency(2.0, 9.0, 100, "w")) -> ScenarioResult:
    return ScenarioResult(scenario, AppCase(app, variant, expect=expected), Measurements((), latency),
                          Verdict(outcome, ""), 1.0)


def test_a_result_is_matched_when_its_outcome_is_the_expected_finding() -> None:
    assert result("reproduced").matched and not result("survived").matched
    assert not result("error").matched and result("survived", None).matched


def test_exit_code_zero_only_when_everything_matched() -> None:
    assert exit_code([result("reproduced"), result("survived", "survived", app="stateless")]) == EXIT_OK


def test_exit_code_one_on_a_deviation() -> None:
    assert exit_code([result("reproduced"), result("reproduced", "survived", app="stateless")]) == EXIT_DEVIATED


def test_exit_code_two_on_any_error_even_with_deviations() -> None:
    assert exit_code([result("reproduced", "survived"), result("error")]) == EXIT_ERROR


def test_exit_code_two_when_nothing_ran() -> None:
    assert exit_code([]) == EXIT_ERROR


def test_unjudged_comparison_columns_never_deviate_but_errors_do() -> None:
    assert matches("reproduced", None) and matches("survived", None)
    assert not matches("error", None)
    assert exit_code([result("reproduced"), result("reproduced", None, variant="off")]) == EXIT_OK


def test_stateless_price_pairs_plain_cases_only() -> None:
    prices = stateless_prices([
        result("reproduced", latency=Latency(2.0, 10.0, 100, "before")),
        result("survived", "survived", app="stateless", latency=Latency(3.5, 14.0, 100, "before")),
        result("reproduced", None, app="stateless", variant="off", latency=Latency(99.0, 99.0, 100, "before")),
    ])
    assert len(prices) == 1
    assert prices[0].extra_p50_ms == pytest.approx(1.5) and prices[0].extra_p99_ms == pytest.approx(4.0)


# --- pure measuring helpers ------------------------------------------------------------------------

def test_percentile_nearest_rank() -> None:
    assert percentile([5, 1, 3, 2, 4], 50) == 3
    assert percentile(list(range(1, 101)), 99) == 99
    assert math.isnan(percentile([], 50))


def test_shares_include_idle_backends_and_imbalance() -> None:
    hits = [measure.Hit(0.0, "app-1", 200, 1.0)] * 9 + [measure.Hit(0.0, "app-2", 200, 1.0)]
    shares = measure.shares(hits, ["app-1", "app-2", "app-3"])
    assert [s.requests for s in shares] == [9, 1, 0]
    assert measure.imbalance([s.requests for s in shares]) == pytest.approx(2.7)


def test_counter_rates_handle_restarts_and_new_instances() -> None:
    s = measure.StatsSample
    samples = [s(0.0, "a", (("db_queries", 10.0),)), s(1.0, "a", (("db_queries", 20.0),)),
               s(2.0, "a", (("db_queries", 5.0),)),  # restarted: 5 since the last tick
               s(2.0, "b", (("db_queries", 7.0),))]  # joined: 7 since the last tick
    rates = measure.counter_rates(samples, "db_queries", 0.0)
    assert rates.points == ((1.0, 10.0), (2.0, 12.0))


def test_counter_rates_merge_ticks_closer_than_the_minimum_interval() -> None:
    s = measure.StatsSample
    samples = [s(0.0, "a", (("db_queries", 0.0),)), s(0.5, "a", (("db_queries", 10.0),)),
               s(0.52, "a", (("db_queries", 12.0),)),  # a phase-edge sample 20 ms after a tick
               s(1.0, "a", (("db_queries", 22.0),))]
    assert measure.counter_rates(samples, "db_queries", 0.0, min_interval_s=0).points[1] == (0.52, 100.0)
    assert measure.counter_rates(samples, "db_queries", 0.0, min_interval_s=0.4).points == ((0.5, 20.0), (1.0, 24.0))


def test_counter_rates_by_default_neither_dip_nor_spike_at_phase_edges() -> None:
    """The cold-cache chart's dips to 0: phase-edge samples 10 ms after the sampler's ticks, at a steady 100 q/s."""
    s = measure.StatsSample
    ticks = [0.0, 0.5, 1.0, 1.01, 1.5, 2.0, 2.01]  # the last one: a phase edge right at the end
    samples = [s(t, "a", (("db_queries", 100.0 * t),)) for t in ticks]
    rates = measure.counter_rates(samples, "db_queries", 0.0)
    assert [t for t, _ in rates.points] == [0.5, 1.0, 1.5, 2.01]
    assert all(v == pytest.approx(100.0) for _, v in rates.points)


def test_refill_loads_count_sets_between_expiries_and_skip_the_cold_fill() -> None:
    e = measure.CacheEvent
    events = [e(0.0, "set", "product:1"), e(0.1, "set", "product:2"),  # cold fill: not a refill
              e(2.0, "expired", "product:1"), e(2.01, "set", "product:1"), e(2.02, "set", "product:1"),
              e(2.03, "set", "product:1"),  # three loads for one expiry: a stampede
              e(2.1, "expired", "product:2"),  # expired, nobody reloaded it: not a refill
              e(4.03, "expired", "product:1"), e(4.05, "set", "product:1")]  # still open at the end
    assert measure.refill_loads(events) == [3, 1]
    assert measure.refill_loads(events, ["product:2"]) == []


def test_hit_ratio_over_a_window_and_from_zero() -> None:
    s = measure.StatsSample
    samples = [s(0.0, "a", (("cache_hits", 10.0), ("cache_misses", 10.0))),
               s(1.0, "a", (("cache_hits", 40.0), ("cache_misses", 10.0))),
               s(1.0, "b", (("cache_hits", 1.0), ("cache_misses", 3.0)))]
    assert measure.hit_ratio(samples, 0.0, 1.0, ["a"]) == pytest.approx(1.0)
    assert measure.hit_ratio(samples, 0.0, 1.0, ["b"], from_zero=True) == pytest.approx(0.25)


def test_the_story_is_told_only_when_the_main_tolerance_broke() -> None:
    v = COLD_CACHE.verdict(m(baseline_db_qps=40.0, instances_after=6, db_load_ratio=1.1, failed_requests=3))
    assert v.outcome == "reproduced"
    assert "empty cache" not in v.explanation and "failed_requests = 3" in v.explanation
