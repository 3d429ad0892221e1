"""Verdicts are pure functions of measurements: each scenario's verdict, the judging rules, exit codes."""

from __future__ import annotations

import math

import pytest

from scenarios import REGISTRY
from scenarios.cold_cache_autoscale import SCENARIO as COLD_CACHE
from scenarios.local_disk_upload import SCENARIO as LOCAL_DISK
from scenarios.nat_hotspot import SCENARIO as NAT
from scenarios.rolling_deploy import SCENARIO as ROLLING
from statelab import measure
from statelab.scenario import (EXIT_DEVIATED, EXIT_ERROR, EXIT_OK, AppCase, Figure, Finding, Latency, Measurements,
                               Outcome, ScenarioResult, Tolerance, Verdict, exit_code, judge, matches, percentile,
                               stateless_prices)


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


def test_every_scenario_is_named_in_kebab_case_and_expects_both_findings() -> None:
    names = [s.name for s in REGISTRY.find("all")]
    assert names == ["rolling-deploy", "nat-hotspot", "local-disk-upload", "cold-cache-autoscale"]
    for s in REGISTRY:
        assert s.expect == {"stateful": "reproduced", "stateless": "survived"}
        assert s.tolerances and s.summary and s.title
        assert "What breaks" in (type(s).__doc__ or "") and "stateless design" in (type(s).__doc__ or "")
        assert {c.app for c in s.cases()} == {"stateful", "stateless"}
        assert [c.app for c in s.cases() if c.in_quick and not c.variant] == ["stateful", "stateless"]


def test_quick_profiles_are_smaller_and_users_override() -> None:
    for s in REGISTRY:
        quick, full = s.profile(True, None), s.profile(False, None)
        assert quick.users < full.users and quick.phase_s < full.phase_s
    assert ROLLING.profile(True, 77).users == 77


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
