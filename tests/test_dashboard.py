"""The live dashboard: its page, JSON and SSE endpoints, and buttons that reach the control API.

The first tests run against a stub lab and a fake control server (no processes); the live test
runs a real stateless lab of two instances behind the builtin balancer.
"""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from typing import Any, Callable, Iterator

import pytest
import requests

from statelab.dashboard import Dashboard, Sampler
from tests.support.dashboard import FakeControl, StubLab, fake_stats


@pytest.fixture
def stub_dashboard() -> Iterator[tuple[Dashboard, FakeControl]]:
    with ExitStack() as stack:
        control = FakeControl()
        stack.callback(control.stop)
        dash = Dashboard(StubLab(), control.url, interval_s=0.1, stats=fake_stats).start()
        stack.callback(dash.stop)
        yield dash, control


def test_sampler_turns_counters_into_rates() -> None:
    sampler = Sampler(StubLab(), fake_stats)
    first = sampler.sample()
    assert [i["rps"] for i in first["instances"]] == [0.0, 0.0]
    second = sampler.sample()
    assert [i["rps"] for i in second["instances"]] == [10.0, 20.0]  # +10 and +20 requests over 1 s
    assert second["totals"]["rps"] == 30.0 and second["totals"]["active"] == 3
    assert second["totals"]["sessions_in_memory"] == 42  # app-2 did not answer /stats
    assert second["instances"][1]["stats"] is None
    assert [h["rps"] for h in second["history"]] == [0.0, 30.0]
    sampler.close()


def test_page_and_static_files(stub_dashboard: tuple[Dashboard, FakeControl]) -> None:
    dash, _ = stub_dashboard
    page = requests.get(dash.url, timeout=5)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert 'src="/web/dashboard.js"' in page.text and 'id="deploy"' in page.text
    assert "http://" not in page.text.replace('"http://www.w3.org/2000/svg"', "")
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    js = requests.get(dash.url + "web/dashboard.js", timeout=5)
    assert js.status_code == 200 and "EventSource" in js.text
    assert requests.get(dash.url + "web/../dashboard.py", timeout=5).status_code == 404


def test_state_endpoint(stub_dashboard: tuple[Dashboard, FakeControl]) -> None:
    dash, _ = stub_dashboard
    state = requests.get(dash.url + "api/state", timeout=5).json()
    assert state["app"] == "stateful" and [i["id"] for i in state["instances"]] == ["app-1", "app-2"]
    assert state["policies"][0] == "round-robin"
    assert state["events"][0]["detail"] == "<b>x</b>"  # the page inserts it as text


def test_event_stream_sends_fresh_snapshots(stub_dashboard: tuple[Dashboard, FakeControl]) -> None:
    dash, _ = stub_dashboard
    with requests.get(dash.url + "api/events", stream=True, timeout=5) as resp:
        assert resp.headers["Content-Type"] == "text/event-stream"
        seqs = []
        for line in resp.iter_lines():
            if line.startswith(b"data: "):
                snap = json.loads(line[6:])
                seqs.append(snap["seq"])
                if len(seqs) == 3:
                    break
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    assert snap["totals"]["rps"] > 0


def test_buttons_reach_the_control_api(stub_dashboard: tuple[Dashboard, FakeControl]) -> None:
    dash, control = stub_dashboard
    resp = requests.post(dash.url + "api/deploy", json={"batch": 1, "drain": True}, timeout=5)
    assert resp.status_code == 200 and resp.json() == {"app": "stateful"}
    assert control.calls == [("/deploy", {"batch": 1, "drain": True})]
    busy = requests.post(dash.url + "api/scale", json={"count": 4}, timeout=5)
    assert busy.status_code == 409 and busy.json()["error"] == "busy"  # the control API's answer, relayed
    assert control.calls[-1] == ("/scale", {"count": 4})


def test_requests_that_are_refused(stub_dashboard: tuple[Dashboard, FakeControl]) -> None:
    dash, control = stub_dashboard
    form = requests.post(dash.url + "api/deploy", data="batch=1",
                         headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=5)
    assert form.status_code == 415  # a cross-site form cannot send JSON
    assert requests.post(dash.url + "api/reboot", json={}, timeout=5).status_code == 404
    rebound = requests.get(dash.url + "api/state", headers={"Host": "evil.example:80"}, timeout=5)
    assert rebound.status_code == 403
    assert control.calls == []


def test_stop_without_start_returns() -> None:
    dash = Dashboard(StubLab(), "http://127.0.0.1:9", stats=fake_stats)
    dash.stop()
    dash.stop()


def test_control_api_down_is_a_clear_error() -> None:
    with Dashboard(StubLab(), "http://127.0.0.1:9", stats=fake_stats) as dash:
        resp = requests.post(dash.url + "api/kill", json={"id": "app-1"}, timeout=10)
        assert resp.status_code == 502 and "did not answer" in resp.json()["error"]


# --- live -----------------------------------------------------------------------------------

@pytest.mark.live
def test_live_dashboard_of_a_real_lab(small_lab: tuple[Any, Any]) -> None:
    lab, control = small_lab
    with Dashboard(lab, control.url, interval_s=0.2) as dash:
        for _ in range(20):
            requests.get(lab.balancer_url + "/healthz", timeout=5)
        state = requests.get(dash.url + "api/state", timeout=5).json()
        assert state["app"] == "stateless" and len(state["instances"]) == 2
        assert all(i["stats"] is not None and "sessions_in_memory" in i["stats"] for i in state["instances"])
        assert {s[0] for s in state["stores"]} == {"postgres", "redis", "s3"}
        before = {i["id"]: i["generation"] for i in state["instances"]}
        resp = requests.post(dash.url + "api/deploy", json={"batch": 1, "drain": True}, timeout=120)
        assert resp.status_code == 200, resp.text
        after = _wait_state(dash, lambda s: {i["id"]: i["generation"] for i in s["instances"]}
                            == {k: v + 1 for k, v in before.items()})
        assert any(e["kind"] == "draining" for e in after["events"])


def _wait_state(dash: Dashboard, ok: Callable[[dict[str, Any]], bool], timeout_s: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        state = requests.get(dash.url + "api/state", timeout=5).json()
        if ok(state):
            return state
        assert time.monotonic() < deadline, f"the dashboard never showed the expected state: {state}"
        time.sleep(0.1)
