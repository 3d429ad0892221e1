"""The report's sentences in users' words: built from measured figures, table-driven, with a generic fallback."""

from __future__ import annotations

import math
from typing import Any

from statelab.report import noise
from statelab.report.story import case_sentence, facts_from_json, number, plain


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
    assert case_sentence("lost-update", facts_from_json(r)) == "stale reads 17, beyond its limit (<= 0)"
    ok = _result("stateless", "survived", (("p99_ms", "<", 250, 31.5, True),), p99_ms=31.5)
    ok["figures"][0]["unit"] = "ms"
    assert case_sentence("s3-latency", facts_from_json(ok)) == "p99 ms 31.5\u00a0ms, within its limit (< 250\u00a0ms)"
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
