"""Mixed load through the builtin balancer: the workshop's re-login journey meets no 400, no 5xx, no reset.

A stateful lab of 3 instances behind the builtin balancer, round robin, so most requests after a
login land on an instance that never saw the session: 401, log in again, go on. Two kinds of
users do this at once for 10 s: 10 Locust `Shopper`s (the workshop's live part; Locust sends a
POST's head and body in two writes, which is what made early 401s frequent and let their late
bodies corrupt other clients' requests: 5-9% 400/502 before the fix) and 10 users of statelab's
own crowd (`shopper` journey). Every status the balancer relayed is counted from its records.
"""

from __future__ import annotations

from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import pytest

from statelab.loadgen import LOCUSTFILE, LoadOptions, locust_argv, locust_env, read_summary, wait_finished
from statelab.procs import ManagedProcess
from statelab.topology import Lab, LabSpec
from statelab.users import CrowdHandle, Population

pytestmark = pytest.mark.live

USERS = 10
RUN_S = 10
EXPECTED = {200, 201, 401}  # pages and logins, items added, "log in first" on an instance without the session
# What Locust may report: the stateful app's own lesson under round robin, not the balancer's doing.
LESSONS = {"logged out", "cart lost"}


def test_relogin_journeys_through_the_builtin_balancer_meet_only_200_201_401(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAB_LOCUST_THINK_S", "0.1")  # a brisk workshop: more requests in the same 10 s
    with ExitStack() as stack:
        lab = Lab(LabSpec(app="stateful", instances=3, policy="round-robin", lb="builtin", run_dir=tmp_path / "lab",
                          seed_users=200, seed_products=500))
        stack.callback(lab.stop)
        lab.start()
        assert lab.engine is not None
        opts = LoadOptions(host=lab.balancer_url, run_dir=tmp_path / "locust", users=USERS, spawn_rate=USERS,
                           run_time=f"{RUN_S}s", accounts=USERS)  # Locust users are user0001..user0010
        opts.run_dir.mkdir(parents=True)
        locust = ManagedProcess("locust", [*locust_argv(opts), "Shopper"], opts.log_path, env=locust_env(opts),
                                cwd=LOCUSTFILE.parent).start()
        stack.callback(locust.stop)
        crowd = CrowdHandle(lab.balancer_url, Population(distinct_users=USERS, think_s=0.1, first_account=101),
                            "shopper", duration_s=RUN_S).start()
        assert wait_finished(locust, f"{RUN_S}s") in (0, 1), opts.log_path.read_text()[-2000:]  # 1: "logged out"
        result = crowd.result(timeout=RUN_S + 30)

        statuses: Counter[int] = Counter()
        since = 0
        while True:
            since, records = lab.engine.records(since)
            if not records:
                break
            statuses.update(r.status for r in records)
        locust_summary = read_summary(opts.csv_prefix)

    print(f"\nstatuses through the builtin balancer: {dict(sorted(statuses.items()))}; crowd errors {result.errors};"
          f" Locust {locust_summary.total.requests} requests, failures "
          f"{[(f.name, f.error, f.occurrences) for f in locust_summary.failures]}")
    assert statuses[401] > 0 and statuses[201] > 0, statuses  # the journey really did re-login and add items
    assert sum(statuses.values()) >= 300, statuses
    assert {s: n for s, n in statuses.items() if s not in EXPECTED} == {}, statuses
    assert {kind: n for kind, n in result.errors.items() if kind != "4xx"} == dict.fromkeys(
        ("connect", "timeout", "5xx", "protocol"), 0), result.errors  # 4xx: 401s while logged out, counted above
    assert locust_summary.total.requests > 0
    assert [f for f in locust_summary.failures if f.error not in LESSONS] == [], locust_summary.failures
