"""Config precedence (flags > env > job file > defaults), validation and redaction."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchserve.config import DEFAULT_BATCH_SIZE, parse_storage_options, resolve_score_config
from batchserve.errors import ConfigError, UsageError

BASE = {"model": "m.onnx", "input": "in/", "output": "out/"}


def test_defaults() -> None:
    cfg = resolve_score_config(BASE, env={})
    assert cfg.batch_size == DEFAULT_BATCH_SIZE and cfg.device == "auto" and not cfg.overwrite
    assert cfg.features is None and cfg.keep is None and cfg.workers is None


def test_precedence_flags_over_env_over_job_file(tmp_path: Path) -> None:
    job = tmp_path / "job.toml"
    job.write_text('[score]\nmodel = "job.onnx"\ninput = "job/"\noutput = "jobout/"\nbatch_size = 10\n'
                   'workers = 3\nfeatures = ["a", "b"]\n[score.storage_options]\nanon = true\n')
    env = {"BATCHSERVE_BATCH_SIZE": "20", "BATCHSERVE_INPUT": "env/", "BATCHSERVE_FEATURES": "x,y,z"}
    cfg = resolve_score_config({"input": "flag/"}, job_file=str(job), env=env)
    assert cfg.model == "job.onnx"  # job file only
    assert cfg.input == "flag/"  # flag beats env and job
    assert cfg.batch_size == 20  # env beats job
    assert cfg.workers == 3
    assert cfg.features == ("x", "y", "z")
    assert cfg.storage == {"anon": True}


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"batch_size": 0}, "--batch-size must be between 1 and"),
        ({"device": "gpu"}, "--device must be"),
        ({"features": "a,b,a"}, "lists a column twice: a"),
        ({"workers": 0}, "--workers must be at least 1"),
        ({"batch_size": "many"}, "expected auto or a whole number"),
    ],
)
def test_invalid_values_are_named(flags: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_score_config({**BASE, **flags}, env={})


def test_missing_required_and_unknown_job_keys(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="missing required setting") as missing:
        resolve_score_config({"model": "m"}, env={})
    assert missing.value.exit_code == 2  # a usage error, like any missing option
    job = tmp_path / "j.toml"
    job.write_text('[score]\nmodle = "typo"\n')
    with pytest.raises(ConfigError, match=r"unknown key 'modle' \(did you mean model\?\)"):
        resolve_score_config(BASE, job_file=str(job), env={})
    job.write_text("not = [valid")
    with pytest.raises(ConfigError, match="not valid TOML"):
        resolve_score_config(BASE, job_file=str(job), env={})


def test_secrets_are_redacted_and_options_parsed() -> None:
    opts = parse_storage_options(["key=AKIA123", "secret=shh", "endpoint_url=http://x", "anon=false"])
    cfg = resolve_score_config({**BASE, "storage_options": dict(opts)}, env={})
    red = cfg.redacted()["storage_options"]
    assert red["secret"] == "***" and red["key"] == "***"
    assert red["endpoint_url"] == "http://x"
    assert cfg.storage["anon"] is False
    with pytest.raises(ConfigError, match="key=value"):
        parse_storage_options(["novalue"])


def test_config_is_frozen_and_hashable() -> None:
    cfg = resolve_score_config(BASE, env={})
    with pytest.raises(AttributeError):
        cfg.batch_size = 5  # type: ignore[misc]
    assert hash(cfg) == hash(resolve_score_config(BASE, env={}))


def test_shipped_job_file_resolves() -> None:
    repo = Path(__file__).resolve().parents[1]
    cfg = resolve_score_config({}, job_file=str(repo / "jobs" / "nightly.toml"), env={}, variables=["ds=2026-11-05"])
    assert cfg.model == "sample_data/model" and cfg.resume and cfg.keep == ("transaction_id", "card_id", "amount")
    assert (cfg.input, cfg.output) == ("sample_data/transactions/date=2026-11-05", "out/nightly/date=2026-11-05")
    assert (repo / cfg.input).is_dir() and (repo / str(cfg.reference)).is_file()


def test_the_api_resolves_settings_like_the_cli(tmp_path, monkeypatch) -> None:
    """Keywords > BATCHSERVE_* > job file > defaults, for batchserve.score/validate/profile too."""
    from batchserve.config import resolve_config

    job = tmp_path / "job.toml"
    job.write_text('[score]\nmodel = "from-job.onnx"\ninput = "in/"\noutput = "out/"\nbatch_size = 7\nretries = 5\n')
    monkeypatch.setenv("BATCHSERVE_BATCH_SIZE", "11")
    cfg = resolve_config({"job": str(job), "retries": 1})
    assert (cfg.model, cfg.batch_size, cfg.retries) == ("from-job.onnx", 11, 1)
    assert resolve_config({"model": "m", "input": "i"}, command="validate").output == ""
    assert resolve_config({"input": "i", "output": "p.json"}, command="profile").model == ""
    with pytest.raises(ConfigError, match="missing required setting"):
        resolve_config({"input": "i"}, command="profile")
    with pytest.raises(ConfigError, match="unknown setting 'batchsize'"):
        resolve_config({"model": "m", "input": "i", "output": "o", "batchsize": 3})


def test_a_config_and_keywords_together_are_refused_not_dropped() -> None:
    import batchserve
    from batchserve.config import resolve_config

    cfg = resolve_config({"model": "m", "input": "i", "output": "o"}, env={})
    with pytest.raises(ConfigError, match=r"not both.*batch_size"):
        batchserve.score(cfg, batch_size=10)
    with pytest.raises(ConfigError, match="not both"):
        batchserve.validate(cfg, features=["a"])


def test_job_file_placeholders_fill_from_vars_then_environment(tmp_path: Path) -> None:
    job = tmp_path / "j.toml"
    job.write_text('[score]\nmodel = "m"\ninput = "in/date=${ds}/"\noutput = "${root}/date=${ds}"\n'
                   'keep = ["id_${ds}"]\nprefix = "p$$"\n[score.storage_options]\nendpoint_url = "http://${host}"\n')
    cfg = resolve_score_config({}, job_file=str(job), env={"root": "s3://b", "host": "h:9000", "ds": "env-loses"},
                               variables=["ds=2026-11-05"])
    assert (cfg.input, cfg.output) == ("in/date=2026-11-05/", "s3://b/date=2026-11-05")
    assert cfg.keep == ("id_2026-11-05",) and cfg.prefix == "p$" and cfg.storage["endpoint_url"] == "http://h:9000"
    with pytest.raises(ConfigError, match=r"key 'input' uses \$\{ds\} but no --var ds=\.\.\. was given"):
        resolve_score_config({}, job_file=str(job), env={"root": "r", "host": "h"})
    with pytest.raises(ConfigError, match=r"--var dss is not used by the job file.*did you mean --var ds\?"):
        resolve_score_config({}, job_file=str(job), env={"root": "r", "host": "h"}, variables=["ds=1", "dss=2"])
    with pytest.raises(ConfigError, match="--var takes name=value"):
        resolve_score_config({}, job_file=str(job), env={}, variables=["ds"])
    with pytest.raises(ConfigError, match="needs --job"):
        resolve_score_config(BASE, env={}, variables=["ds=1"])


def test_unknown_batchserve_environment_variable_is_named_with_the_closest(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown environment variable BATCHSERVE_OUPUT \(did you mean BATCHSERVE_OUTPUT\?\)"):
        resolve_score_config(BASE, env={"BATCHSERVE_OUPUT": "elsewhere/"})
    # ours but not settings: fine; other programs' variables: not ours to judge
    cfg = resolve_score_config(BASE, env={"BATCHSERVE_ACTOR": "a", "BATCHSERVE_LOG_FORMAT": "json", "OUTPUT": "x"})
    assert cfg.output == BASE["output"]


def test_filter_expressions_are_checked_where_they_enter() -> None:
    cfg = resolve_score_config({**BASE, "filter": ["date>=2026-11-03", "region in (eu, us)"]}, env={})
    assert cfg.filter == ("date>=2026-11-03", "region in (eu, us)")
    env_cfg = resolve_score_config(BASE, env={"BATCHSERVE_FILTER": "date>=2026-11-03; region in (eu,us)"})
    assert env_cfg.filter == ("date>=2026-11-03", "region in (eu,us)")
    for bad in ("date", "date>>3", "=3", "date in ()", "date<="):
        with pytest.raises(ConfigError, match="--filter"):
            resolve_score_config({**BASE, "filter": [bad]}, env={})
