"""The report's sentences in users' words: built from measured figures, table-driven, with a generic fallback."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from statelab.report import noise
from statelab.report.story import (STORIES, CaseFacts, CheckFact, FigureFact, case_sentence, facts_from_json, number,
                                   plain)


def _result(app: str, outcome: str, checks: tuple[tuple[str, str, float, float, bool], ...] = (),
            expected: str | None = None, **figures: Any) -> dict[str, Any]:
    units = {"deploy_s": "s", "hottest_share": "%", "fair_share": "%", "hot_p50_ms": "ms", "rest_p50_ms": "ms",
             "db_load_ratio": "x"}
    return {"app": app, "variant": "", "outcome": outcome, "expected": expected or outcome,
            "figures": [{"name": k, "label": k.replace("_", " "), "value": v, "unit": units.get(k, "")}
                        for k, v in figures.items()],
            "checks": [{"tolerance": {"figure": f, "op": op, "limit": limit}, "value": value, "held": held}
                       for f, op, limit, value, held in checks]}


def test_the_issues_example_reads_from_the_figures() -> None:
    stateful = _result("stateful", "reproduced", users=60, users_logged_out=60, items_lost=360, failed_requests=0,
                       deploy_s=2.2)
    stateless = _result("stateless", "survived", users=60, users_logged_out=0, items_lost=0, failed_requests=0,
                        deploy_s=3.1)
    text = plain("rolling-deploy", [facts_from_json(stateful), facts_from_json(stateless)]).replace("\u00a0", " ")
    assert text == ("stateful: 60 of 60 users logged out and 360 cart items lost during a 2.2 s deploy; "
                    "stateless: nobody logged out, no cart item lost (3.1 s deploy)")


def test_sentences_follow_the_figures_not_the_outcome() -> None:
    """A stateless run that lost 3 items says so, whatever its verdict says."""
    odd = _result("stateless", "survived", users=60, users_logged_out=0, items_lost=3, deploy_s=2.0)
    assert case_sentence("rolling-deploy", facts_from_json(odd)) == "3 cart items lost during a 2\u00a0s deploy"
    no_context = _result("stateful", "reproduced", users=60, users_logged_out=5)  # deploy_s not measured
    assert case_sentence("rolling-deploy", facts_from_json(no_context)) == "5 of 60 users logged out"


def test_a_clause_can_hang_on_a_broken_tolerance() -> None:
    figures = dict(nat_users=400, hottest_share=89.1, fair_share=25.0, hot_p50_ms=712.4, rest_p50_ms=44.7,
                   max_mean_ratio=3.56, users_logged_out=0, failed_requests=0)
    hot = _result("stateful", "reproduced", (("max_mean_ratio", "<", 1.3, 3.56, False),), **figures)
    assert case_sentence("nat-hotspot", facts_from_json(hot)) == (
        "one instance took 89% of the office's requests (fair share 25%), p50 712\u00a0ms there vs 44.7\u00a0ms "
        "elsewhere")
    even = _result("stateless", "survived", (("max_mean_ratio", "<", 1.3, 1.0, True),),
                   **{**figures, "hottest_share": 25.2})
    assert case_sentence("nat-hotspot", facts_from_json(even)) == "evenly spread (busiest instance 25%)"


def test_a_scenario_without_a_story_reads_its_main_tolerance() -> None:
    r = _result("stateless", "reproduced", (("stale_reads", "<=", 0, 17, False), ("x", "<=", 0, 0, True)),
                stale_reads=17)
    assert case_sentence("new-scenario", facts_from_json(r)) == "stale reads 17, beyond its limit (<= 0)"
    ok = _result("stateless", "survived", (("p99_ms", "<", 250, 31.5, True),), p99_ms=31.5)
    ok["figures"][0]["unit"] = "ms"
    assert case_sentence("new-scenario", facts_from_json(ok)) == "p99 ms 31.5\u00a0ms, within its limit (< 250\u00a0ms)"
    assert case_sentence("new", facts_from_json(_result("stateful", "survived"))) == "nothing went wrong"


def test_an_error_says_the_scenario_could_not_run_and_why() -> None:
    r = {"app": "stateful", "outcome": "error", "expected": "reproduced",
         "explanation": "the users got no answer from http://127.0.0.1:9: 180 requests sent. More detail."}
    assert case_sentence("rolling-deploy", facts_from_json(r)) == \
        "the scenario could not run (the users got no answer from http://127.0.0.1:9: 180 requests sent)"


def test_only_judged_columns_make_the_sentence() -> None:
    judged = _result("stateless", "survived", users=60, users_logged_out=0, items_lost=0, deploy_s=1.0)
    column = {**_result("stateless", "reproduced", users=60, users_logged_out=9), "variant": "no drain",
              "expected": None}
    assert plain("rolling-deploy", [facts_from_json(judged), facts_from_json(column)]).startswith("stateless: nobody")


def test_numbers_read_like_a_person_writes_them() -> None:
    assert [number(60.0), number(2.2, "s"), number(5.757, "s"), number(89.1, "%"), number(3.28, "x"),
            number(1234.5, "ms"), number(0.504, "ms")] == \
        ["60", "2.2\u00a0s", "5.8\u00a0s", "89%", "3.28x", "1,234\u00a0ms", "0.5\u00a0ms"]


def test_the_noise_band_grows_with_the_spread_and_shrinks_with_the_requests() -> None:
    tight = noise.CaseLatency(2.0, 4.0, 10_000)
    wide = noise.CaseLatency(2.0, 400.0, 100)
    assert noise.quantile_se_ms(tight, "p50") < noise.quantile_se_ms(wide, "p50")
    assert noise.quantile_se_ms(wide, "p99") > noise.quantile_se_ms(wide, "p50")
    assert math.isnan(noise.quantile_se_ms(noise.CaseLatency(0.0, 4.0, 10), "p50"))  # no spread to read
    diff = noise.difference(tight, noise.CaseLatency(2.5, 4.6, 10_000), "p50")
    assert not diff.within_noise and diff.describe().startswith("p50 +0.5 ms (± ")
    faster = noise.difference(noise.CaseLatency(689.0, 1488.0, 1864), noise.CaseLatency(545.0, 1023.0, 1862), "p50")
    assert faster.describe().endswith("stateless was faster in this run")  # a saturated stateful side
    unknown = noise.difference(noise.CaseLatency(0.0, 0.0, 0), tight, "p99")
    assert not unknown.within_noise and unknown.describe() == "p99 +4.0 ms"


# --- the costs group: a sentence per scenario, from hand-made figures ---------------------------

def _facts(label: str = "stateless", outcome: str = "survived", **figures: float | None) -> CaseFacts:
    """CaseFacts with figures in their journal units: names ending in _s are seconds, in _ms milliseconds."""
    def unit(name: str) -> str:
        return "ms" if name.endswith("_ms") else "s" if name.endswith("_s") else ""

    return CaseFacts(label, outcome, outcome,
                     {k: FigureFact(k.replace("_", " "), v, unit(k)) for k, v in figures.items()})


REDIS = dict(users=12, users_logged_out=0, items_lost=0, revocations_forgotten=0, no_instance_s=0.0,
             failed_requests=0, unavailable_s=0.0)
COSTS = [
    ("redis-outage", _facts("stateful", **REDIS), "nobody logged out, nothing lost (not one request failed)"),
    ("redis-outage", _facts(**{**REDIS, "users_logged_out": 12, "items_lost": 57, "revocations_forgotten": 8,
                               "failed_requests": 135, "unavailable_s": 2.04}),
     "12 of 12 users logged out, 57 cart items lost and 8 revocations forgotten"),
    ("redis-outage", _facts(**{**REDIS, "failed_requests": 127, "unavailable_s": 2.0}),
     "nobody logged out, nothing lost (127 requests failed over 2 s)"),
    ("redis-outage", _facts(**{**REDIS, "users_logged_out": 12, "items_lost": 1, "no_instance_s": 2.06}),
     "12 of 12 users logged out, 1 cart item lost and every instance out of rotation for 2.1 s"),
    ("jwt-theft", _facts("stateful", attacker_access_s=0.0, refresh_after_logout=0, redis_lookups_per_request=None),
     "a stolen token stopped working at logout"),
    ("jwt-theft", _facts(attacker_access_s=3599.0, outlived_run=1, refresh_after_logout=0),
     "a stolen token still worked 3,599 s after its user logged out (its whole lifetime)"),
    ("jwt-theft", _facts(attacker_access_s=1.26, outlived_run=0, refresh_after_logout=0),
     "a stolen token still worked 1.3 s after its user logged out"),
    ("jwt-theft", _facts(attacker_access_s=0.0, refresh_after_logout=0, redis_lookups_per_request=1.0),
     "a stolen token stopped working at logout (1 Redis lookup per request)"),
    ("s3-latency", _facts(downloads=24, download_p50_ms=108.84, upload_p50_ms=61.13, hangs=0, errors=0, corrupt=0,
                          half_written=0), "download p50 109 ms, upload 61.1 ms"),
    ("s3-latency", _facts(downloads=24, download_p50_ms=1.64, upload_p50_ms=3.98, hangs=2, errors=0, corrupt=0,
                          half_written=1), "2 requests hung over 2 s and 1 file half-written, download p50 1.6 ms, "
                                           "upload 4 ms"),
    ("server-crash", _facts("stateful (ip-hash)", users=45, users_logged_out=28, items_lost=98, instances=3,
                            failed_requests=5), "28 of 45 users logged out and 98 cart items lost when 1 of 3 "
                                                "instances died"),
    ("server-crash", _facts(users=45, users_logged_out=0, items_lost=0, instances=3, failed_requests=5),
     "nobody logged out, no cart item lost (5 requests failed)"),
    ("worker-crash", _facts("stateful", jobs=4, jobs_lost=4, jobs_effect_doubled=0, jobs_done=0, killed=1),
     "4 of 4 jobs lost when the worker died mid-job"),
    ("worker-crash", _facts(jobs=4, jobs_lost=0, jobs_effect_doubled=0, jobs_done=4, jobs_ran_twice=1, killed=1,
                            redelivery_s=3.14), "all 4 jobs done, each effect once (1 ran again 3.1 s after the kill)"),
    ("worker-crash", _facts(jobs=4, jobs_lost=0, jobs_effect_doubled=1, jobs_done=4, jobs_ran_twice=1, killed=1),
     "1 job took effect twice when the worker died mid-job"),
    ("worker-split", _facts("stateful (4 workers)", page_loads=200, logout_events=137, users=20, users_logged_out=20),
     "137 of 200 page loads found no session (20 of 20 users logged out)"),
    ("worker-split", _facts(page_loads=200, logout_events=0, users=20, users_logged_out=0, failed_requests=0),
     "all 200 page loads found their session"),
    ("lost-update", _facts(adds_acked=400, items_lost=140, items_lost_per_1000=350.0, adds_failed=0, tabs=8),
     "140 of 400 acknowledged adds lost (350 per 1,000)"),
    ("lost-update", _facts(adds_acked=400, items_lost=0, items_lost_per_1000=0.0, adds_failed=0, tabs=8),
     "all 400 adds from 8 tabs kept"),
]


@pytest.mark.parametrize(("scenario", "case", "expected"), COSTS, ids=[f"{s}-{i}" for i, (s, _, _) in enumerate(COSTS)])
def test_each_costs_scenario_says_what_was_lost_in_users_words(scenario: str, case: CaseFacts, expected: str) -> None:
    assert case_sentence(scenario, case).replace("\u00a0", " ") == expected


def test_costs_sentences_follow_the_figures_not_the_outcome() -> None:
    """A case judged 'survived' that measured a loss says the loss; one judged 'reproduced' with none says so."""
    lossy = _facts("stateless", "survived", jobs=4, jobs_lost=1, jobs_effect_doubled=0, jobs_done=3, killed=1)
    assert case_sentence("worker-crash", lossy) == "1 of 4 jobs lost when the worker died mid-job"
    clean = _facts("stateful", "reproduced", adds_acked=400, items_lost=0, adds_failed=0, tabs=8)
    assert case_sentence("lost-update", clean) == "all 400 adds from 8 tabs kept"


def test_nothing_lost_is_said_only_of_a_loss_that_was_measured() -> None:
    """A journal without the main loss figure gets the generic sentence, never 'nobody logged out'."""
    bare = CaseFacts("stateless", "reproduced", "survived", {"failed_requests": FigureFact("failed requests", 12)},
                     (CheckFact("failed_requests", "<=", 0, 12, False),))
    assert case_sentence("redis-outage", bare) == "failed requests 12, beyond its limit (<= 0)"


def test_a_plural_follows_the_number_before_it() -> None:
    assert case_sentence("server-crash", _facts(users=45, users_logged_out=1, items_lost=1, instances=3)) == \
        "1 of 45 users logged out and 1 cart item lost when 1 of 3 instances died"
    assert case_sentence("lost-update", _facts(adds_acked=1, items_lost=0, adds_failed=0, tabs=1)) == \
        "all 1 add from 1 tab kept"
    assert case_sentence("jwt-theft", _facts(attacker_access_s=0.0, refresh_after_logout=2)) == \
        "2 stolen refreshes got new tokens"


# --- the costs group, from a real journal --------------------------------------------------------

COSTS_JOURNAL = Path(__file__).resolve().parent / "fixtures" / "journal-costs-quick-run.json"
COSTS_SENTENCES = {
    "redis-outage": "stateful: nobody logged out, nothing lost (not one request failed); "
                    "stateless (no persistence): 12 of 12 users logged out, 57 cart items lost and 8 revocations "
                    "forgotten; stateless (AOF everysec): nobody logged out, nothing lost (127 requests failed over "
                    "2 s); stateless (replica + Sentinel): nobody logged out, nothing lost (149 requests failed over "
                    "2.3 s); stateless (no persistence + readyz checks): 12 of 12 users logged out, 65 cart items "
                    "lost, 8 revocations forgotten and every instance out of rotation for 2.1 s",
    "jwt-theft": "stateful: a stolen token stopped working at logout; stateless (JWT 1 h): a stolen token still worked "
                 "3,599 s after its user logged out (its whole lifetime); stateless (JWT 2 s + rotation): a stolen "
                 "token still worked 1.3 s after its user logged out; stateless (JWT 1 h + denylist): a stolen token "
                 "stopped working at logout (1 Redis lookup per request)",
    "s3-latency": "stateful: download p50 1.6 ms, upload 4 ms; stateless: download p50 8.6 ms, upload 9.5 ms; "
                  "stateless (S3 + 50 ms): download p50 109 ms, upload 61.1 ms; stateless (S3 + 50 ms + read cache): "
                  "download p50 2 ms, upload 60.1 ms",
    "server-crash": "stateful (cookie): 15 of 45 users logged out and 50 cart items lost when 1 of 3 instances died; "
                    "stateful (ip-hash): 28 of 45 users logged out and 98 cart items lost when 1 of 3 instances died; "
                    "stateless (round-robin): nobody logged out, no cart item lost (5 requests failed)",
    "worker-crash": "stateful: 4 of 4 jobs lost when the worker died mid-job; stateless: all 4 jobs done, each effect "
                    "once (1 ran again 3.1 s after the kill); stateless (not idempotent): 1 job took effect twice when "
                    "the worker died mid-job",
    "worker-split": "stateful (4 workers): 137 of 200 page loads found no session (20 of 20 users logged out); "
                    "stateful (1 worker): all 200 page loads found their session; stateless (4 workers): all 200 page "
                    "loads found their session",
    "lost-update": "stateful: all 400 adds from 8 tabs kept; stateless: all 400 adds from 8 tabs kept; "
                   "stateless (naive cart): 140 of 400 acknowledged adds lost (350 per 1,000)",
}


def test_a_real_costs_run_reads_in_users_words() -> None:
    """`statelab run costs --quick` on a busy 2-core machine: every case gets its story, none the generic form."""
    by_scenario: dict[str, list[CaseFacts]] = {}
    for r in json.loads(COSTS_JOURNAL.read_text())["results"]:
        by_scenario.setdefault(r["scenario"], []).append(facts_from_json(r))
    assert set(by_scenario) == set(COSTS_SENTENCES) and set(COSTS_SENTENCES) <= set(STORIES)
    for name, cases in by_scenario.items():
        text = plain(name, cases).replace("\u00a0", " ")
        assert text == COSTS_SENTENCES[name], name
        assert "its limit" not in text
        for case in cases:  # short enough to share a first-screen card with four other cases
            assert len(case_sentence(name, case)) <= 120, (name, case.label)
