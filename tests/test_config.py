"""Typed LAB_* settings, masked secrets, lab spec validation and the CLI's help and errors (pure)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from statelab.balancer.policies import POLICY_NAMES
from statelab.cli import build_parser, main
from statelab.config import APP_KINDS, BackingUrls, Secret
from statelab.engines import ENGINE_NAMES
from statelab.errors import ConfigError
from statelab.topology import LabSpec, _public_url


def test_secret_never_shows_its_value() -> None:
    s = Secret("hunter2")
    assert "hunter2" not in repr(s) and "hunter2" not in str(s) and "hunter2" not in f"{s}"
    assert s.value == "hunter2"
    assert Secret.random().value != Secret.random().value


@pytest.mark.parametrize("kind", APP_KINDS)
def test_missing_and_malformed_values_name_the_variable(kind: str) -> None:
    """Each app reads LAB_* once, with its own strict reader (the runtime only writes them)."""
    config = importlib.import_module(f"{kind}_app.config")
    env = BackingUrls("postgresql://db", "redis://r", "http://s3", "key", Secret("sk")).app_env()
    with pytest.raises(config.ConfigError, match="LAB_DATABASE_URL is not set"):
        config.Config.from_env({k: v for k, v in env.items() if k != "LAB_DATABASE_URL"})
    with pytest.raises(config.ConfigError, match="LAB_CACHE_TTL_S='soon' is not an integer"):
        config.Config.from_env({**env, "LAB_CACHE_TTL_S": "soon"})
    with pytest.raises(config.ConfigError, match="LAB_STORE_TIMEOUT_S='x' is not a number"):
        config.Config.from_env({**env, "LAB_STORE_TIMEOUT_S": "x"})
    assert config.Config.from_env(env).cache_ttl_s == 60


def test_backing_urls_become_the_app_environment() -> None:
    env = BackingUrls("postgresql://db", "redis://r", "http://s3", "key", Secret("sk")).app_env()
    assert env == {"LAB_DATABASE_URL": "postgresql://db", "LAB_REDIS_URL": "redis://r", "LAB_S3_ENDPOINT": "http://s3",
                   "LAB_S3_ACCESS_KEY": "key", "LAB_S3_SECRET_KEY": "sk", "LAB_S3_BUCKET": "statelab-uploads"}
    assert "LAB_REDIS_URL" not in BackingUrls("postgresql://db").app_env()


@pytest.mark.parametrize("change, message", [
    ({"app": "both"}, "unknown app"), ({"policy": "random"}, "unknown policy"),
    ({"lb": "nginx"}, "unknown balancer engine"), ({"instances": 0}, "between 1 and 32"),
])
def test_lab_spec_rejects_what_it_cannot_run(change: dict[str, object], message: str) -> None:
    spec = LabSpec(**{"app": "stateful", **change})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=message):
        spec.validate()


def test_status_urls_mask_passwords() -> None:
    assert _public_url("postgresql://lab:s3cr3t@127.0.0.1:5432/statelab") == "postgresql://lab:****@127.0.0.1:5432/statelab"
    assert _public_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_policy_names_are_kebab_case_and_match_the_cli_help() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices  # type: ignore[attr-defined]
    help_text = " ".join(sub[cmd].format_help() for cmd in ("up", "policy", "lb"))
    for name in POLICY_NAMES:
        assert name == name.lower() and "_" not in name and name in help_text


def test_the_cli_offers_the_runtimes_own_engines_and_apps() -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices  # type: ignore[attr-defined]
    for cmd in ("run", "up"):
        by_dest = {a.dest: a for a in sub[cmd]._actions}
        assert tuple(by_dest["lb"].choices) == ENGINE_NAMES
        assert set(APP_KINDS) <= set(by_dest["app"].choices)


def test_every_subcommand_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    for cmd in ("list", "run", "up", "deploy", "kill", "scale", "policy", "status", "lb", "seed", "load"):
        with pytest.raises(SystemExit) as exc:
            main([cmd, "--help"])
        assert exc.value.code == 0
        assert "usage: statelab " + cmd in capsys.readouterr().out


def test_control_without_a_running_lab_exits_2_with_advice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--state-file", str(tmp_path / "nope.json")]) == 2
    assert "`statelab up --app stateful`" in " ".join(capsys.readouterr().err.split())
