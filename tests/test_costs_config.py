"""The settings the costs scenarios turn (pure): each read once, typed, and refused with the variable's name."""

from __future__ import annotations

import pytest

from statelab.cli import main

BASE = {"LAB_DATABASE_URL": "postgresql://db", "LAB_REDIS_URL": "redis://127.0.0.1:1/0",
        "LAB_S3_ENDPOINT": "http://127.0.0.1:2", "LAB_S3_ACCESS_KEY": "k", "LAB_S3_SECRET_KEY": "s"}


def _stateless(**env: str) -> object:
    from stateless_app.config import Config

    return Config.from_env({**BASE, **env})


def test_the_defaults_keep_todays_behaviour() -> None:
    from stateless_app.config import Config

    config = Config.from_env(BASE)
    assert (config.redis_sentinels, config.jwt_revocation, config.jwt_reuse_detection, config.s3_downloads,
            config.s3_read_cache_bytes, config.job_delay_s, config.job_idempotent, config.cart_mode) == \
        ((), "denylist", False, "proxy", 0, 0.0, True, "atomic")
    assert config.s3_public_endpoint == BASE["LAB_S3_ENDPOINT"]


def test_sentinels_replace_the_redis_url() -> None:
    from stateless_app.config import Config

    config = Config.from_env({**BASE, "LAB_REDIS_URL": "", "LAB_REDIS_SENTINELS": "127.0.0.1:26379, 127.0.0.1:26380",
                              "LAB_REDIS_MASTER": "shop"})
    assert config.redis_sentinels == (("127.0.0.1", 26379), ("127.0.0.1", 26380))
    assert config.redis_master == "shop" and config.redis_url == ""


@pytest.mark.parametrize("name, value", [
    ("REDIS_SENTINELS", "127.0.0.1"), ("REDIS_SENTINELS", "127.0.0.1:0"), ("JWT_REVOCATION", "sometimes"),
    ("JWT_REUSE_DETECTION", "yes"), ("S3_DOWNLOADS", "direct"), ("S3_PRESIGN_TTL_S", "0"),
    ("S3_READ_CACHE_BYTES", "-1"), ("JOB_DELAY_S", "soon"), ("JOB_DELAY_S", "-1"), ("JOB_IDEMPOTENT", "true"),
    ("CART_MODE", "optimistic"),
])
def test_a_bad_value_is_refused_naming_the_variable(name: str, value: str) -> None:
    from stateless_app.config import ConfigError

    with pytest.raises(ConfigError, match=f"LAB_{name}"):
        _stateless(**{f"LAB_{name}": value})


def test_the_stateful_app_reads_the_job_delay_too() -> None:
    from stateful_app.config import Config, ConfigError

    assert Config.from_env({**BASE, "LAB_JOB_DELAY_S": "1.5"}).job_delay_s == 1.5
    with pytest.raises(ConfigError, match="LAB_JOB_DELAY_S"):
        Config.from_env({**BASE, "LAB_JOB_DELAY_S": "x"})


def test_the_faults_subcommand_has_help_and_refuses_a_bad_proxy(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["faults", "--help"])
    assert exc.value.code == 0 and "usage: statelab faults" in capsys.readouterr().out
    assert main(["faults", "--proxy", "s3=127.0.0.1:1"]) == 2
    assert "NAME=LISTEN=UPSTREAM" in capsys.readouterr().err
    assert main(["faults", "--proxy", "s3=10.0.0.1:1=127.0.0.1:2"]) == 2
    assert "loopback" in capsys.readouterr().err
