"""The HTML report: the answer first, then one SVG per chart drawn from the journal's own numbers, text escaped."""

from __future__ import annotations

import json
import re
from html import unescape
from pathlib import Path
from typing import Any

from statelab.report import svg
from statelab.report.first_screen import key_chart_kind
from statelab.report.html import loss_keys, price_text, read_journal, render_html, series_key, unmeasured, write_html
from tests.support.journals import SECONDS, synthetic_journal


def _svgs(html: str) -> list[str]:
    return re.findall(r"<svg\b.*?</svg>", html, flags=re.S)


def _details(html: str) -> str:
    """Return the folded part of the report (everything after the first screen)."""
    return html[html.index("<details>"):]


def test_report_is_self_contained_and_escaped(tmp_path: Path) -> None:
    path = tmp_path / "report.html"
    write_html(synthetic_journal(), path)
    html = path.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, flags=re.I)
    assert "<script" not in html.lower()  # the hostile strings included
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
    assert "@import" not in html and "url(" not in html


def _kind(svgs: list[str], cls: str) -> list[str]:
    return [s for s in svgs if f" {cls}\"" in s.split(">", 1)[0]]


def test_one_svg_per_chart_with_the_journals_series() -> None:
    svgs = _svgs(_details(render_html(synthetic_journal())))
    assert len(svgs) == 10  # traffic, loss, per-instance, shares, latency for each app
    traffic = _kind(svgs, "traffic")
    assert "stateful: traffic" in traffic[0]  # stateful column first, whatever the journal order
    lines = re.findall(r'<polyline class="series" data-series="([^"]+)" points="([^"]*)"', traffic[0])
    assert [name for name, _ in lines] == ["requests/s", "errors/s"]
    assert all(len(points.split()) == SECONDS for _, points in lines)
    loss = _kind(svgs, "loss")
    loss_lines = re.findall(r'data-series="([^"]+)" points="([^"]*)"', loss[0])
    assert [name for name, _ in loss_lines] == ["users logged out/s"]  # the non-zero loss only
    assert len(loss_lines[0][1].split()) == SECONDS
    assert "stateful: what users lost, per second" in loss[0]
    per_instance = _kind(svgs, "per-instance")
    assert re.findall(r'data-series="([^"]+)"', per_instance[0]) == ["app-1", "app-2"]


def test_bars_per_instance_and_percentile_and_events_drawn() -> None:
    svgs = _svgs(_details(render_html(synthetic_journal())))
    shares = _kind(svgs, "shares")
    assert len(shares) == 2
    bars = re.findall(r'<rect class="bar" data-label="([^"]+)" data-value="([^"]+)"', shares[0])
    assert [label for label, _ in bars] == ["app-1", "app-2", "app-3"]
    assert abs(sum(float(v) for _, v in bars) - 100.0) < 1e-6
    latency = _kind(svgs, "latency")
    assert re.findall(r'<rect class="bar" data-label="([^"]+)"', latency[0]) == ["p50", "p99"]
    traffic = _kind(svgs, "traffic")[0]
    # 10.0 and 10.4 s are closer than a tag's width: one marker; 20 s its own; -3 s is before the chart
    assert re.findall(r'<g class="event" data-t="([^"]+)"', traffic) == ["10", "20"]
    assert "app-1 draining; app-1 ready (generation 2)" in traffic
    assert "app-2 draining (&lt;script&gt;" in traffic


def test_verdict_table_checks_and_price() -> None:
    html = render_html(synthetic_journal())
    table = re.search(r'<table class="verdict">.*?</table>', html, flags=re.S)
    assert table is not None
    assert table.group(0).index(">stateful<") < table.group(0).index(">stateless<")
    assert "✗ disaster reproduced" in table.group(0) and "✓ survived" in table.group(0)
    assert "check: users_logged_out &lt;= 0" in table.group(0) and "✗ broken (60)" in table.group(0)
    assert '<td class="num">1,235 ms</td>' in table.group(0)
    # the stateless side is 0.8 ms slower at p50 over 3,000 requests each: a price, not noise; p99 is noise
    assert "p50 +0.8 ms (± 0.4 ms), p99 within noise: +3.1 ms (± 21.7 ms)" in html


def test_numbers_are_right_aligned_whatever_the_cell_rule() -> None:
    """The old rule `td.num` lost to `table.verdict td` (higher specificity): numbers ended up left-aligned."""
    html = render_html(synthetic_journal())
    assert "table.verdict td.num{text-align:right" in html
    assert html.index("table.verdict th,table.verdict td{") < html.index("table.verdict td.num{")


def test_figures_no_column_measured_are_left_out_and_named_once() -> None:
    html = render_html(synthetic_journal())
    views = read_journal(synthetic_journal())
    assert unmeasured(views[0]) == ["not measured"]
    assert "<th>not measured</th>" not in html
    assert html.count("Not measured with this profile (left out above): not measured.") == 1


def test_a_negative_price_within_the_runs_noise_says_so() -> None:
    """The -78.9 ms "price" of a saturated NAT run: the p99s of two busy cases differ by less than their spread."""
    journal = synthetic_journal()
    for r, (p50, p99) in zip(journal["results"], ((290.0, 1371.1), (312.0, 1450.0))):  # stateless, stateful
        r["latency"] = {"p50_ms": p50, "p99_ms": p99, "requests": 900, "window": "whole run"}
    text = price_text(read_journal(journal)[0])
    assert text.startswith("p50 within noise: −22.0 ms (± ") and "p99 within noise: −78.9 ms (± " in text
    assert "price of statelessness" in render_html(journal)


def test_shared_axes_across_apps() -> None:
    svgs = _svgs(_details(render_html(synthetic_journal())))
    for cls in ("traffic", "loss", "shares"):
        a, b = _kind(svgs, cls)
        tick = r'text-anchor="end"[^>]*>([^<]+)</text>'
        assert re.findall(tick, a) == re.findall(tick, b)


def test_missing_keys_are_tolerated() -> None:
    html = render_html({"results": [{"scenario": "bare", "app": "stateful"}, "junk"]})
    assert "bare" in html and "no data recorded" in html
    assert "holds no results" in render_html({})


def test_accepts_an_object_with_to_json(tmp_path: Path) -> None:
    class Run:
        def to_json(self) -> dict[str, Any]:
            return synthetic_journal()

    write_html(Run(), tmp_path / "r.html")
    assert "stateful: traffic" in (tmp_path / "r.html").read_text(encoding="utf-8")


def test_series_names_and_loss_choice() -> None:
    assert [series_key(n) for n in ("items lost", "db_queries/s", "requests on app-1")] == \
        ["items_lost", "db_queries", "requests on app-1"]
    quiet = read_journal({"results": [{"scenario": "s", "app": "stateless", "series": [
        {"name": "logouts", "points": [[0, 0]]}, {"name": "db_queries/s", "points": [[0, 5]]}]}]})
    assert loss_keys(quiet[0].runs) == ["db_queries"]
    nothing = read_journal({"results": [{"scenario": "s", "app": "stateful", "series": [
        {"name": "logouts", "points": [[0, 0], [1, 0]]}]}]})
    assert loss_keys(nothing[0].runs) == []
    assert "what users lost" not in render_html({"results": [{"scenario": "s", "app": "stateful", "series": [
        {"name": "logouts", "points": [[0, 0], [1, 0]]}]}]})


def test_series_of_two_crowds_are_added_second_by_second() -> None:
    views = read_journal({"results": [{"scenario": "s", "app": "stateful", "series": [
        {"name": "requests", "points": [[0, 10], [1, 10], [2, 10]]},
        {"name": "requests", "points": [[1.5, 5], [2.5, 7], [3.5, 1]]}]}]})
    assert views[0].runs[0].series["requests"] == ((0.0, 10.0), (1.0, 15.0), (2.0, 17.0), (3.0, 1.0))


def test_nice_ticks() -> None:
    assert svg.nice_ticks(97) == [0, 20, 40, 60, 80, 100]
    assert svg.nice_ticks(0) == [0.0, 1.0]
    assert svg.nice_ticks(0.3)[-1] >= 0.3


def test_two_crowds_with_quarter_second_points_are_added_on_that_grid() -> None:
    views = read_journal({"results": [{"scenario": "s", "app": "stateful", "series": [
        {"name": "requests", "points": [[0, 8], [0.25, 8], [0.5, 8]]},
        {"name": "requests", "points": [[0.3, 4], [0.55, 4]]}]}]})
    assert views[0].runs[0].series["requests"] == ((0.0, 8.0), (0.25, 12.0), (0.5, 12.0))


def test_first_screen_leads_with_a_sentence_badges_and_a_key_chart_per_scenario() -> None:
    html = render_html(synthetic_journal())
    summary = html[html.index('<main id="summary"'):html.index("</main>")]
    assert html.index("</main>") < html.index("<details>")  # tables and other charts come after, folded
    text = re.sub(r"<[^>]+>", "", summary).replace("\u00a0", " ")
    assert ("stateful ✗ reproduced 60 of 60 users logged out and 360 cart items lost during a 2.2 s deploy; "
            "stateless ✓ survived nobody logged out, no cart item lost (3.4 s deploy)") in text
    key = _svgs(summary)
    assert len(key) == 1 and 'class="chart line-chart key logouts"' in key[0]
    assert re.findall(r'data-series="([^"]+)"', key[0]) == ["stateful", "stateless"]  # the apps, overlaid
    assert "<script" not in summary.lower()


def test_key_chart_falls_back_for_a_scenario_it_does_not_know() -> None:
    journal = {"results": [
        {"scenario": "new-scenario", "app": "stateless", "expected": "survived", "outcome": "reproduced",
         "figures": [{"name": "failed_requests", "label": "failed requests", "value": 12, "unit": "req"}],
         "checks": [{"tolerance": {"figure": "failed_requests", "op": "<=", "limit": 0}, "value": 12,
                     "held": False}]}]}
    kind = key_chart_kind(read_journal(journal)[0])
    assert not isinstance(kind, str) and kind.title == "failed requests"  # bars of the main figure
    html = render_html(journal)
    assert "failed requests 12, beyond its limit (&lt;= 0)" in html and "— DEVIATED" in html


# --- legends and labels: every series named in full, inside the chart ------------------------------

COSTS_JOURNAL = Path(__file__).resolve().parent / "fixtures" / "journal-costs-quick-run.json"
QUICK_JOURNAL = Path(__file__).resolve().parent / "fixtures" / "journal-quick-run.json"
LONG_NAMES = ["stateful", "stateless (no persistence)", "stateless (AOF everysec)", "stateless (replica + Sentinel)",
              "stateless (no persistence + readyz checks)"]
TEXT = re.compile(r'<text x="([\d.]+)" y="([\d.]+)" font-size="(\d+)"[^>]*>([^<]*)</text>')


def _viewbox(chart: str) -> tuple[float, float]:
    m = re.search(r'viewBox="0 0 ([\d.]+) ([\d.]+)"', chart)
    assert m is not None
    return float(m.group(1)), float(m.group(2))


def _legend_keys(chart: str) -> list[tuple[str, list[tuple[float, float, str]]]]:
    """Return each legend key's name and its lines as (x, y, text), y the baseline."""
    return [(unescape(name), [(float(x), float(y), unescape(t)) for x, y, _, t in TEXT.findall(body)])
            for name, body in re.findall(r'<g class="legend-key" data-name="([^"]*)">(.*?)</g>', chart)]


def _assert_legend_inside(chart: str, names: list[str]) -> int:
    """Assert every series is named in full and no key runs past the chart's width; return the rows used."""
    width, _ = _viewbox(chart)
    keys = _legend_keys(chart)
    assert [name for name, _ in keys] == names
    for name, lines in keys:
        assert " ".join(t for _, _, t in lines) == name and not any(t.endswith("…") for _, _, t in lines)
        for x, _, t in lines:
            assert x + svg.text_width(t, svg.LEGEND_PX) <= width, (name, x)
    return len({y for _, lines in keys for _, y, _ in lines})


def _series(names: list[str], ends: list[float] | None = None) -> list[svg.Series]:
    colors = [svg.VERMILLION, svg.GREEN, svg.PURPLE, svg.ORANGE, svg.SKY]
    return [svg.Series(name, [(0.0, 5.0), (4.0, (ends or [0.0] * len(names))[i])], colors[i % 5], svg.DASHES[i % 4])
            for i, name in enumerate(names)]


def test_a_long_legend_wraps_onto_more_rows_and_the_plot_keeps_its_height() -> None:
    one_row = svg.line_chart("t", _series(["stateful", "stateless"]), width=600, height=180, compact=True)
    wrapped = svg.line_chart("t", _series(LONG_NAMES), width=600, height=180, compact=True)
    rows = _assert_legend_inside(wrapped, LONG_NAMES)
    assert _assert_legend_inside(one_row, ["stateful", "stateless"]) == 1 and rows >= 3
    assert _viewbox(wrapped)[1] == _viewbox(one_row)[1] + (rows - 1) * svg.LEGEND_ROW_H

    def plot_height(chart: str) -> float:
        y_axis = re.search(r'<line x1="70" y1="([\d.]+)" x2="70" y2="([\d.]+)"', chart)
        assert y_axis is not None
        return float(y_axis.group(2)) - float(y_axis.group(1))

    assert plot_height(wrapped) == plot_height(one_row)
    bars = svg.grouped_bar_chart("t", ["a", "b"], [(n, [1.0, 2.0], svg.BLUE) for n in LONG_NAMES], width=600,
                                 height=180, compact=True)
    assert _assert_legend_inside(bars, LONG_NAMES) >= 3


def test_a_name_longer_than_a_row_wraps_within_the_chart() -> None:
    name = "stateless (" + "a very long variant name " * 3 + "that never ends)"
    chart = svg.line_chart("t", _series(["stateful", name, "stateless"]), width=600, height=180, compact=True)
    _assert_legend_inside(chart, ["stateful", name, "stateless"])
    keys = dict(_legend_keys(chart))
    assert len(keys[name]) == 2  # two lines of one key, then the next key on a row of its own
    assert keys["stateless"][0][1] > keys[name][1][1]


def test_direct_labels_are_whole_or_left_to_the_legend_and_stay_on_the_chart() -> None:
    short = svg.line_chart("t", _series(["stateful (cookie)", "stateful (ip-hash)", "stateless (round-robin)"]),
                           width=600, height=180, compact=True)
    labels = [(float(y), unescape(t)) for y, t in re.findall(r'<text x="[\d.]+" y="([\d.]+)"[^>]*class="direct-label">'
                                                               r'([^<]*)</text>', short)]
    assert [t for _, t in labels] == ["stateful (cookie)", "stateful (ip-hash)", "stateless (round-robin)"]
    # three lines end at zero: their labels are stacked, none below the chart, none on another
    ys = sorted(y for y, _ in labels)
    assert ys[-1] <= _viewbox(short)[1] and all(b - a >= svg.SMALL_PX for a, b in zip(ys, ys[1:]))
    long = svg.line_chart("t", _series(LONG_NAMES), width=600, height=180, compact=True)
    assert 'class="direct-label"' not in long  # one would not fit: the legend names every line instead
    assert "…" not in long


def test_the_costs_first_screen_tells_each_scenario_in_users_words() -> None:
    journal = json.loads(COSTS_JOURNAL.read_text())
    html = render_html(journal)
    summary = html[html.index('<main id="summary"'):html.index("</main>")]
    cards = re.findall(r'<article class="card" data-scenario="([^"]+)">(.*?)</article>', summary)
    assert [name for name, _ in cards] == ["redis-outage", "jwt-theft", "s3-latency", "server-crash", "worker-crash",
                                           "worker-split", "lost-update"]
    judged = {}
    for r in journal["results"]:
        judged[r["scenario"]] = judged.get(r["scenario"], 0) + bool(r.get("expected"))
    kinds = {}
    for name, body in cards:
        sentence = re.sub(r"<[^>]+>", "", re.search(r'<p class="sentence">(.*?)</p>', body).group(1))
        assert "its limit" not in sentence and body.count('class="badge') == judged[name]
        chart = _svgs(body)[0]
        kinds[name] = re.search(r'class="chart ([^"]+)"', chart).group(1)
        for x, _, size, t in TEXT.findall(chart):  # nothing on a key chart is cut short or runs past its edge
            assert not t.endswith("…") and float(x) <= _viewbox(chart)[0], (name, t)
    assert kinds == {"redis-outage": "line-chart key logouts", "jwt-theft": "line-chart key attacker_accepted",
                     "s3-latency": "bar-chart grouped key figures", "server-crash": "line-chart key logouts",
                     "worker-crash": "bar-chart grouped key figures", "worker-split": "bar-chart grouped key figures",
                     "lost-update": "bar-chart grouped key figures"}
    redis = dict(cards)["redis-outage"]
    text = re.sub(r"<[^>]+>", "", redis).replace("\u00a0", " ")
    # the app said once, each case badged by its variant, in the scenario's order (the failure, then its fixes)
    assert ("stateful ✓ survived nobody logged out, nothing lost (not one request failed); stateless: "
            "no persistence ✗ reproduced 12 of 12 users logged out, 57 cart items lost and 8 revocations forgotten; "
            "AOF everysec ✓ survived nobody logged out") in text
    _assert_legend_inside(_svgs(redis)[0], ["stateful", "no persistence", "AOF everysec", "replica + Sentinel",
                                            "no persistence + readyz checks"])
    crash = _svgs(dict(cards)["server-crash"])[0]  # variants of both apps: the app stays in the legend
    _assert_legend_inside(crash, ["stateful (cookie)", "stateful (ip-hash)", "stateless (round-robin)"])
    worker = _svgs(dict(cards)["worker-crash"])[0]
    assert re.findall(r'data-group="not idempotent" data-label="([^"]+)" data-value="([^"]+)"', worker) == \
        [("done", "4"), ("lost", "0"), ("ran twice", "1"), ("effect doubled", "1")]


def test_every_first_screen_legend_fits_its_chart() -> None:
    for path in (COSTS_JOURNAL, QUICK_JOURNAL):
        html = render_html(json.loads(path.read_text()))
        for chart in _svgs(html[html.index('<main id="summary"'):html.index("</main>")]):
            names = [name for name, _ in _legend_keys(chart)]
            assert names and _assert_legend_inside(chart, names) <= 2, names
