"""The one settings path of every command and the Python API: explicit settings > ``BATCHSERVE_*``
environment > the job file > defaults, merged once into a frozen :class:`ScoreConfig`."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypedDict

from batchserve.config.environment import from_env
from batchserve.config.settings import ScoreConfig
from batchserve.config.values import CONVERTERS, merge_layers
from batchserve.errors import ConfigError, UsageError, closest
from batchserve.jobfile import load_job_file, parse_vars, substitute

__all__ = ["Command", "ScoreSettings", "resolve_config", "resolve_score_config"]


OnError = Literal["fail", "skip"]
NanPolicy = Literal["fail", "pass"]
Command = Literal["score", "validate", "profile"]
#: What each command cannot do without; the rest have defaults.
_REQUIRED: dict[str, tuple[str, ...]] = {
    "score": ("model", "input", "output"), "validate": ("model", "input"), "profile": ("input", "output"),
}


class ScoreSettings(TypedDict, total=False):
    """Every setting, as keyword arguments of :func:`batchserve.score` (and ``validate``/``profile``).

    The same names as the CLI flags and the job file keys; ``job`` names a job file.
    """

    model: str
    input: str
    output: str
    features: Sequence[str] | str | None
    features_override: bool
    keep: Sequence[str] | str | None
    batch_size: int | Literal["auto"]
    workers: int | None
    scheduler: str | None
    #: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``
    device: str
    overwrite: bool
    model_version: int | None
    prefix: str
    storage_options: Mapping[str, Any] | None
    split_rows: int | None
    reference: str | None
    drift: bool
    drift_metric: Sequence[str]
    drift_threshold: Sequence[str]
    fail_on_drift: bool
    max_drift_share: float | None
    resume: bool
    retries: int
    on_error: OnError
    max_failed_files: int | None
    nan: NanPolicy
    challenger: str | None
    challenger_output: str | None
    challenger_keep: Sequence[str] | str | None
    filter: Sequence[str]
    precision: Literal["fp32", "fp16"]
    trt_cache: str | None
    metrics_file: str | None
    push_timeout: float
    metrics_job: str | None
    pushgateway: str | None
    job: str | None
    #: values for ``${name}`` placeholders in the job file (``--var name=value``)
    vars: Mapping[str, str] | None


def resolve_config(
    settings: Mapping[str, Any], *, command: Command = "score", env: Mapping[str, str] | None = None,
) -> ScoreConfig:
    """The one settings path of every command, CLI and Python API alike: explicit settings >
    ``BATCHSERVE_*`` environment > the job file named by ``job`` > defaults.

    >>> resolve_config({"model": "m.onnx", "input": "in/"}, command="validate", env={}).output
    ''
    """
    flags = {k: v for k, v in settings.items() if k not in ("job", "vars")}
    job = settings.get("job")
    if job is not None and not isinstance(job, str):
        raise ConfigError(f"job must be the path of a TOML job file, got {job!r}")
    return resolve_score_config(flags, job_file=job, env=env, required=_REQUIRED[command],
                                variables=settings.get("vars"))


def resolve_score_config(
    flags: Mapping[str, Any],
    *,
    job_file: str | None = None,
    env: Mapping[str, str] | None = None,
    required: Sequence[str] = _REQUIRED["score"],
    variables: Sequence[str] | Mapping[str, str] | None = None,
) -> ScoreConfig:
    """Merge the four sources into one frozen config.

    ``flags`` holds only what the caller set explicitly (``None`` means unset); ``variables`` fill
    the job file's ``${name}`` placeholders (then the environment does).
    """
    env = os.environ if env is None else env
    given = parse_vars(variables)
    layers: list[tuple[str, Mapping[str, Any]]] = []
    if job_file:
        used: set[str] = set()
        table = load_job_file(job_file, CONVERTERS)
        filled = {k: substitute(v, given, env, f"job file {job_file}, key {k!r}", used) for k, v in table.items()}
        unused = sorted(set(given) - used)
        if unused:
            raise ConfigError(f"--var {unused[0]} is not used by the job file (it has no ${{{unused[0]}}})"
                              + closest(unused[0], sorted(used)).replace("did you mean ", "did you mean --var "),
                              path=job_file)
        layers.append((f"job file {job_file}", filled))
    elif given:
        raise ConfigError(f"--var {next(iter(given))} needs --job: variables fill a job file's ${{name}} placeholders")
    layers.append(("environment", from_env(env)))
    layers.append(("arguments", {k: v for k, v in flags.items() if v is not None}))
    merged = merge_layers(layers, CONVERTERS)
    missing = [n for n in required if n not in merged]
    if missing:
        raise UsageError(
            f"missing required setting(s): {', '.join(missing)}; pass --{missing[0]} or set it in the job file"
        )
    for name in ("model", "input", "output"):
        merged.setdefault(name, "")  # a command that needs no output (validate) or model (profile)
    if merged.get("batch_size") == "auto":
        del merged["batch_size"]
    elif "batch_size" in merged:
        merged["batch_auto"] = False  # a fixed size: every batch runs whole, as asked
    return ScoreConfig(**merged)
