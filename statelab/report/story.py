"""One sentence per scenario, in users' words, built from the measured figures (never from the outcome).

Each scenario may have a `Story` in `STORIES`: clauses that say what users lost, each applying
only when its figure shows a loss, and a phrase for a case that lost nothing (with what it paid
instead). A scenario without one (a new scenario) still reads well: its main tolerance's figure,
measured against its limit. Both the terminal report and the HTML report build their sentences
here, from `CaseFacts`. A sentence is short: on the report's first screen it shares a card with
every other case of its scenario, so it says the loss and its scale, not the whole table.
"""

from __future__ import annotations

import math
import re
import string
from dataclasses import dataclass, field
from typing import Mapping, Sequence

UNIT_GLUED = ("%", "x")  # written right after the number: 89%, 3.3x
UNIT_SPACED = ("ms", "s")  # written after a space: 712 ms, 2.2 s; other units are words the template says
MAX_ERROR_CHARS = 110
PLURAL = re.compile(r"\[(e?s)\]")
NUMBER = re.compile(r"(?<![\w.,])[\d][\d,.]*(?![\w])")


@dataclass(frozen=True)
class FigureFact:
    label: str
    value: float | None
    unit: str = ""


@dataclass(frozen=True)
class CheckFact:
    """A tolerance applied to a case: `figure op limit`, the measured value, whether it held."""

    figure: str
    op: str
    limit: float | None
    value: float | None
    held: bool


@dataclass(frozen=True)
class CaseFacts:
    """What a sentence needs of one scenario x app result."""

    label: str
    outcome: str
    expected: str = ""
    figures: Mapping[str, FigureFact] = field(default_factory=dict)
    checks: tuple[CheckFact, ...] = ()
    explanation: str = ""

    def value(self, name: str) -> float | None:
        fig = self.figures.get(name)
        return fig.value if fig is not None else None

    def broke(self, figure: str) -> bool:
        return any(c.figure == figure and not c.held for c in self.checks)


@dataclass(frozen=True)
class Clause:
    """Part of a sentence with {figure} placeholders; "item[s]" takes the plural of the number before it.

    It applies when its `when` figure (by default the first placeholder) is above 0, or, with
    `zero`, when that figure was measured as 0, or, with `broken`, when the case's check on that
    figure broke; and only if every placeholder was measured.
    """

    text: str
    when: str = ""
    broken: bool = False
    zero: bool = False

    def figures(self) -> list[str]:
        return [name for _, name, _, _ in string.Formatter().parse(self.text) if name]

    def _when(self) -> str:
        names = self.figures()
        return self.when or (names[0] if names else "")

    def applies(self, case: CaseFacts) -> bool:
        when = self._when()
        if self.broken:
            return case.broke(when)
        value = case.value(when)
        if self.zero:
            return value == 0
        return value is not None and value > 0

    def measured(self, case: CaseFacts) -> bool:
        """Return whether the case measured what this clause hangs on (its check, if `broken`)."""
        when = self._when()
        if self.broken:
            return any(c.figure == when and c.value is not None for c in case.checks)
        return case.value(when) is not None


@dataclass(frozen=True)
class Story:
    """How a scenario's sentence reads: what was lost (the clauses that apply, then their context), or what held.

    `fine` is said when no `lost` clause applies and the first one (the main loss) was measured
    ("" says nothing), followed in brackets by the `price` clauses that apply: what a case that
    lost nothing paid instead (failed requests, a lookup per request). `also` clauses are said
    after either: a figure the scenario is about whatever was lost, such as a latency.
    """

    lost: tuple[Clause, ...]
    context: str | tuple[Clause, ...] = ""
    fine: str = "nothing lost"
    price: tuple[Clause, ...] = ()
    also: tuple[Clause, ...] = ()


STORIES: dict[str, Story] = {
    "rolling-deploy": Story(
        lost=(Clause("{users_logged_out} of {users} users logged out"), Clause("{items_lost} cart item[s] lost"),
              Clause("{failed_requests} request[s] failed")),
        context="during a {deploy_s} deploy",
        fine="nobody logged out, no cart item lost ({deploy_s} deploy)"),
    "nat-hotspot": Story(
        lost=(Clause("one instance took {hottest_share} of the office's requests (fair share {fair_share}), "
                     "p50 {hot_p50_ms} there vs {rest_p50_ms} elsewhere", when="max_mean_ratio", broken=True),
              Clause("{users_logged_out} user[s] logged out"), Clause("{failed_requests} request[s] failed")),
        fine="evenly spread (busiest instance {hottest_share})"),
    "local-disk-upload": Story(
        lost=(Clause("{follow_ups_failed} of {follow_ups} follow-ups failed: {follow_ups_401} found themselves "
                     "logged out (401), {follow_ups_404} found no file (404)"),
              Clause("{downloads_corrupt} download[s] came back with the wrong bytes")),
        fine="all {follow_ups} follow-ups found their file and session"),
    "cold-cache-autoscale": Story(
        lost=(Clause("database load rose to {db_load_ratio} steady ({baseline_db_qps} → {join_db_qps} queries/s)",
                     when="db_load_ratio", broken=True),
              Clause("{failed_requests} request[s] failed")),
        context="when scaling out to {instances_after} instances",
        fine="the database barely noticed ({db_load_ratio} its steady load)"),
    # --- the costs group: what the stateless design costs, and how it fails ---
    "redis-outage": Story(
        lost=(Clause("{users_logged_out} of {users} users logged out"), Clause("{items_lost} cart item[s] lost"),
              Clause("{revocations_forgotten} revocation[s] forgotten"),
              Clause("every instance out of rotation for {no_instance_s}")),
        fine="nobody logged out, nothing lost",
        price=(Clause("{failed_requests} request[s] failed over {unavailable_s}"),
               Clause("not one request failed", when="failed_requests", zero=True))),
    "jwt-theft": Story(
        lost=(Clause("a stolen token still worked {attacker_access_s} after its user logged out"),
              Clause("{refresh_after_logout} stolen refresh[es] got new tokens")),
        context=(Clause("(its whole lifetime)", when="outlived_run"),),
        fine="a stolen token stopped working at logout",
        price=(Clause("{redis_lookups_per_request} Redis lookup[s] per request"),)),
    "s3-latency": Story(
        lost=(Clause("{hangs} request[s] hung over 2\u00a0s"), Clause("{errors} transfer[s] failed"),
              Clause("{corrupt} download[s] corrupt"), Clause("{half_written} file[s] half-written")),
        fine="",
        also=(Clause("download p50 {download_p50_ms}, upload {upload_p50_ms}", when="downloads"),)),
    "server-crash": Story(
        lost=(Clause("{users_logged_out} of {users} users logged out"), Clause("{items_lost} cart item[s] lost")),
        context=(Clause("when 1 of {instances} instances died"),),
        fine="nobody logged out, no cart item lost",
        price=(Clause("{failed_requests} request[s] failed"),)),
    "worker-crash": Story(
        lost=(Clause("{jobs_lost} of {jobs} job[s] lost"), Clause("{jobs_effect_doubled} job[s] took effect twice")),
        context=(Clause("when the worker died mid-job", when="killed"),),
        fine="all {jobs_done} job[s] done, each effect once",
        price=(Clause("{jobs_ran_twice} ran again {redelivery_s} after the kill"),)),
    "worker-split": Story(
        lost=(Clause("{logout_events} of {page_loads} page loads found no session"),),
        context=(Clause("({users_logged_out} of {users} users logged out)"),),
        fine="all {page_loads} page loads found their session",
        price=(Clause("{failed_requests} request[s] failed"),)),
    "lost-update": Story(
        lost=(Clause("{items_lost} of {adds_acked} acknowledged adds lost"), Clause("{adds_failed} add[s] refused")),
        context=(Clause("({items_lost_per_1000} per 1,000)"),),
        fine="all {adds_acked} add[s] from {tabs} tab[s] kept"),
}


def _num(value: object) -> float | None:
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def facts_from_json(r: Mapping[str, object]) -> CaseFacts:
    """Read a result in its journal form (`ScenarioResult.to_json()`); missing keys are tolerated."""
    figures: dict[str, FigureFact] = {}
    for f in r.get("figures") or ():  # type: ignore[attr-defined]
        if isinstance(f, Mapping) and f.get("name"):
            figures[str(f["name"])] = FigureFact(str(f.get("label") or f["name"]), _num(f.get("value")),
                                                 str(f.get("unit") or ""))
    checks = []
    for c in r.get("checks") or ():  # type: ignore[attr-defined]
        tol = c.get("tolerance") if isinstance(c, Mapping) else None
        if isinstance(tol, Mapping):
            checks.append(CheckFact(str(tol.get("figure", "?")), str(tol.get("op", "?")), _num(tol.get("limit")),
                                    _num(c.get("value")), bool(c.get("held"))))
    app, variant = str(r.get("app") or "?"), str(r.get("variant") or "")
    return CaseFacts(label=f"{app} ({variant})" if variant else app, outcome=str(r.get("outcome") or ""),
                     expected=str(r.get("expected") or ""), figures=figures, checks=tuple(checks),
                     explanation=str(r.get("explanation") or ""))


def number(value: float, unit: str = "") -> str:
    """Format a measured value for a sentence: 60, 2.2 s, 89%, 3.28x, 712 ms, 1.6 ms."""
    if float(value).is_integer() and abs(value) < 1e15:
        text = f"{int(value):,}"
    elif abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10 and unit == "%":
        text = f"{value:.0f}"
    elif abs(value) >= 10 or unit in UNIT_SPACED:
        text = f"{value:.1f}".removesuffix(".0")
    else:
        text = f"{value:.2f}".rstrip("0").rstrip(".")
    if unit in UNIT_GLUED:
        return text + unit
    if unit in UNIT_SPACED:
        return f"{text}\u00a0{unit}"  # a no-break space: "2.2 s" never splits across lines
    return text


def _fill(text: str, case: CaseFacts) -> str | None:
    """Fill {figure} placeholders with the case's values; None when one was not measured."""
    values = {}
    for _, name, _, _ in string.Formatter().parse(text):
        if not name:
            continue
        fig = case.figures.get(name)
        if fig is None or fig.value is None or not math.isfinite(fig.value):
            return None
        values[name] = number(fig.value, fig.unit)
    return _plurals(text.format_map(values))


def _plurals(text: str) -> str:
    """Write "word[s]"/"word[es]" as the number before it needs: 1 job, 4 jobs (no number: the plural)."""
    out, last = [], 0
    for m in PLURAL.finditer(text):
        before = NUMBER.findall(text, 0, m.start())
        out += [text[last:m.start()], m.group(1) if not before or before[-1] != "1" else ""]
        last = m.end()
    return "".join(out) + text[last:]


def _join(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def generic(case: CaseFacts) -> str:
    """Say the main tolerance's figure, measured against its limit (for a scenario without a Story)."""
    check = case.checks[0] if case.checks else None
    if check is None or check.value is None:
        return {"reproduced": "the disaster happened", "survived": "nothing went wrong"}.get(case.outcome, "no figures")
    fig = case.figures.get(check.figure, FigureFact(check.figure.replace("_", " "), check.value))
    limit = "?" if check.limit is None else number(check.limit, fig.unit)
    return (f"{fig.label} {number(check.value, fig.unit)}, "
            f"{'within' if check.held else 'beyond'} its limit ({check.op} {limit})")


def case_sentence(scenario: str, case: CaseFacts) -> str:
    """Return what one case's users lost (or that they lost nothing), from its figures."""
    if case.outcome == "error":
        first = re.split(r"(?<=\.)\s", case.explanation.strip(), maxsplit=1)[0] if case.explanation else ""
        reason = first if len(first) <= MAX_ERROR_CHARS else first[:MAX_ERROR_CHARS - 1] + "…"
        return "the scenario could not run" + (f" ({reason.rstrip('.:;')})" if reason else "")
    story = STORIES.get(scenario)
    if story is None:
        return generic(case)
    return _told(story, case) or generic(case)


def _told(story: Story, case: CaseFacts) -> str:
    """Return the story's sentence for a case ("" when nothing in it could be said from the figures)."""
    lost = _said(story.lost, case)
    if lost:
        context = ([story.context] if story.context else []) if isinstance(story.context, str) \
            else [c.text for c in story.context if c.applies(case)]
        head = " ".join([_join(lost), *filter(None, (_fill(c, case) for c in context))])
    else:
        fine = _fill(story.fine, case) if story.fine else ""
        if fine is None or (fine and story.lost and not story.lost[0].measured(case)):
            return ""  # "nothing lost" is said only of a loss that was measured
        price = ", ".join(_said(story.price, case))
        head = f"{fine} ({price})" if fine and price else fine or price
    return ", ".join(filter(None, [head, *_said(story.also, case)]))


def _said(clauses: Sequence[Clause], case: CaseFacts) -> list[str]:
    return [text for clause in clauses if clause.applies(case) and (text := _fill(clause.text, case))]


def sentence(scenario: str, cases: Sequence[CaseFacts]) -> list[tuple[str, str]]:
    """Return (label, what its users lost) for each judged case of a scenario (every case if none is judged)."""
    judged = [c for c in cases if c.expected] or list(cases)
    return [(c.label, case_sentence(scenario, c)) for c in judged]


def plain(scenario: str, cases: Sequence[CaseFacts]) -> str:
    """Return the scenario's sentence as plain text: 'stateful: ...; stateless: ...'."""
    return "; ".join(f"{label}: {text}" for label, text in sentence(scenario, cases))


__all__ = ["CaseFacts", "CheckFact", "Clause", "FigureFact", "STORIES", "Story", "case_sentence", "facts_from_json",
           "generic", "number", "plain", "sentence"]
