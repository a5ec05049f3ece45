"""Resolve a run's configuration once, at the edge, into a frozen value.

Precedence, highest first: explicit arguments (CLI flags or keyword arguments to
:func:`batchserve.score`) > ``BATCHSERVE_*`` environment variables > a TOML job
file > defaults. This is the only module that reads the environment, so a run
is fully described by its :class:`ScoreConfig` (which the manifest records).

Example::

    >>> cfg = resolve_score_config({"model": "m.onnx", "input": "in/", "output": "out/"}, env={})
    >>> cfg.batch_size
    65536
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypedDict

from batchserve.errors import ConfigError, UsageError, closest
from batchserve.jobfile import load_job_file, parse_vars, substitute
from batchserve.selection import parse_filter

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "ScoreConfig",
    "ScoreSettings",
    "Command",
    "resolve_config",
    "resolve_score_config",
    "parse_storage_options",
    "storage_dict",
    "redact",
    "current_actor",
    "utc_now",
    "new_run_id",
    "TIMESTAMP_FORMAT",
    "EXTRA_ENV",
]

DEFAULT_BATCH_SIZE = 65_536
#: Larger batches only cost memory (about batch x features x 4 bytes, several in flight) and
#: overflow pyarrow's and onnxruntime's size arguments long before they could pay.
MAX_BATCH_SIZE = 1 << 24
#: Bounds on counts, so a typo (an extra zero or twenty) is a clear error, not an overflow deep inside.
_MAX_COUNT = {"workers": 4096, "retries": 100, "split_rows": 1 << 40, "max_failed_files": 1 << 40}
#: A Dask scheduler address: protocol://host[:port], host:port, or inproc://...
_SCHEDULER_RE = re.compile(
    r"^(tcp|tls|ucx|ws|wss)://(\[[0-9a-fA-F:.]+\]|[^\s:/\[\]]+)(:\d{1,5})?/?$"
    r"|^(\[[0-9a-fA-F:.]+\]|[^\s:/\[\]]+):\d{1,5}$|^inproc://\S+$"
)
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
_SECRET_RE = re.compile(r"(secret|password|passwd|token|credential|session|private|key)", re.I)
# Keys that match _SECRET_RE but hold no secret: keep them readable in manifests.
_NOT_SECRET = {"key_id", "anon", "endpoint_url", "region_name"}


@dataclasses.dataclass(frozen=True)
class ScoreConfig:
    """Everything that decides what a scoring run does; immutable once resolved."""

    model: str
    input: str
    output: str
    features: tuple[str, ...] | None = None
    #: Score with ``features`` even where they contradict the model's feature_names metadata.
    features_override: bool = False
    keep: tuple[str, ...] | None = None
    #: Rows per read, write and statistics batch (and per inference run unless ``batch_auto``).
    batch_size: int = DEFAULT_BATCH_SIZE
    #: ``--batch-size auto`` (the default): each worker probes onnxruntime's fastest rows per run
    #: for this model on this machine and runs each I/O batch in such pieces.
    batch_auto: bool = True
    workers: int | None = None
    scheduler: str | None = None
    device: str = "auto"
    overwrite: bool = False
    model_version: int | None = None
    prefix: str = ""
    storage_options: tuple[tuple[str, str], ...] = ()
    #: Split files above about this many rows into row-group pieces (None: automatic).
    split_rows: int | None = None
    #: A reference profile or an earlier run's _manifest.json to compare against.
    reference: str | None = None
    #: Record drift statistics while scoring (off only to measure their cost).
    drift: bool = True
    #: ``[COLUMN:]METRIC`` items: which metric decides, globally or per column.
    drift_metric: tuple[str, ...] = ()
    #: ``[COLUMN:]METRIC=VALUE`` items overriding the default thresholds.
    drift_threshold: tuple[str, ...] = ()
    fail_on_drift: bool = False
    max_drift_share: float | None = None
    #: Reuse outputs an earlier run committed with the same model, settings and inputs.
    resume: bool = False
    #: Retries of a task after a transient error (I/O, object-store 5xx), with backoff.
    retries: int = 2
    #: "fail": the first bad file fails the run; "skip": bad files are recorded and skipped.
    on_error: str = "fail"
    #: With on_error "skip": fail the run when more files than this are bad.
    max_failed_files: int | None = None
    #: "pass": NaN/inf/nulls in float features reach the model as NaN; "fail": they fail the file.
    nan: str = "pass"
    #: A second model scored beside the champion in the same pass (shadow scoring), and where its
    #: predictions go, with these input columns beside them (default: the --keep columns).
    challenger: str | None = None
    challenger_output: str | None = None
    challenger_keep: tuple[str, ...] | None = None
    #: On a GPU: ``fp32`` or ``fp16`` (weights and arithmetic; inputs and outputs keep their types).
    precision: str = "fp32"
    #: A TensorRT engine cache folder that survives runs: TensorRT first, then CUDA, then CPU.
    trt_cache: str | None = None
    #: ``--filter`` expressions on hive partition keys; a file is scored when it passes all of them.
    filter: tuple[str, ...] = ()
    #: Prometheus text file written (atomically) after the run, for node_exporter's textfile collector.
    metrics_file: str | None = None
    #: The job's stable name in metrics (label ``batchserve_job``, the push's grouping key).
    metrics_job: str | None = None
    #: Prometheus Pushgateway the run's metrics are pushed to (job ``batchserve``, grouped by output).
    pushgateway: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise ConfigError(f"--batch-size must be between 1 and {MAX_BATCH_SIZE:,}, got {self.batch_size}")
        for name, most in _MAX_COUNT.items():
            value = getattr(self, name)
            if value is not None and value > most:
                raise ConfigError(f"--{name.replace('_', '-')} must be at most {most:,}, got {value}")
        if self.max_failed_files is not None and self.max_failed_files < 0:
            raise ConfigError(f"--max-failed-files must be >= 0, got {self.max_failed_files}")
        if self.scheduler is not None and not _SCHEDULER_RE.match(self.scheduler):
            raise ConfigError(
                f"--scheduler must be a Dask scheduler address such as tcp://10.0.0.5:8786, got {self.scheduler!r}"
            )
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {self.workers}")
        if not _DEVICE_RE.match(self.device):
            raise ConfigError(
                f"--device must be auto, cpu, cuda or cuda:N, got {self.device!r}"
            )
        if self.split_rows is not None and self.split_rows < 1:
            raise ConfigError(f"--split-rows must be at least 1, got {self.split_rows}")
        if self.retries < 0:
            raise ConfigError(f"--retries must be >= 0, got {self.retries}")
        if self.nan not in ("fail", "pass"):
            raise ConfigError(f"--nan must be fail or pass, got {self.nan!r}")
        if self.on_error not in ("fail", "skip"):
            raise ConfigError(f"--on-error must be fail or skip, got {self.on_error!r}")
        if self.max_failed_files is not None and self.on_error != "skip":
            raise ConfigError("--max-failed-files only applies with --on-error skip")
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite contradict each other; pick one")
        if self.max_drift_share is not None and not 0 <= self.max_drift_share <= 1:
            raise ConfigError(f"--max-drift-share must be between 0 and 1, got {self.max_drift_share}")
        if self.fail_on_drift and not self.reference:
            raise ConfigError("--fail-on-drift needs --reference (a profile or an earlier run's _manifest.json)")
        if self.reference and not self.drift:
            raise ConfigError("--reference needs drift statistics; drop --no-drift")
        if (self.challenger is None) != (self.challenger_output is None):
            raise ConfigError("--challenger and --challenger-output go together: name the model and its output")
        if self.challenger_keep is not None and self.challenger is None:
            raise ConfigError("--challenger-keep needs --challenger")
        if self.challenger is not None and self.resume:
            raise ConfigError("--resume is not supported with --challenger yet; re-run both with --overwrite")
        if self.model_version is not None and self.model_version < 0:
            raise ConfigError(f"--model-version must be >= 0, got {self.model_version}")
        for name in ("features", "keep", "challenger_keep"):
            cols = getattr(self, name)
            if cols is not None and len(set(cols)) != len(cols):
                dup = sorted({c for c in cols if cols.count(c) > 1})
                raise ConfigError(f"--{name} lists a column twice: {', '.join(dup)}")
            if cols is not None and name == "features" and not cols:
                raise ConfigError("--features is empty; name at least one column")

        for expr in self.filter:
            parse_filter(expr)
        if self.precision not in ("fp32", "fp16"):
            raise ConfigError(f"--precision must be fp32 or fp16, got {self.precision!r}")
        if (self.precision == "fp16" or self.trt_cache) and self.device == "cpu":
            raise ConfigError("--precision fp16 and --trt-cache are for GPU sessions; drop them or use --device cuda")
        if self.pushgateway is not None and not re.match(r"^(https?://)?[^\s/:]+(:\d{1,5})?(/\S*)?$", self.pushgateway):
            raise ConfigError(f"--pushgateway must be a URL such as http://pushgateway:9091, got {self.pushgateway!r}")

    @property
    def storage(self) -> dict[str, Any]:
        """Storage options as fsspec wants them (``true``/``false``/numbers decoded)."""
        return storage_dict(self.storage_options)

    def redacted(self) -> dict[str, Any]:
        """The config as JSON-able data with secrets in storage options masked."""
        data = dataclasses.asdict(self)
        data["features"] = list(self.features) if self.features is not None else None
        data["keep"] = list(self.keep) if self.keep is not None else None
        data["challenger_keep"] = list(self.challenger_keep) if self.challenger_keep is not None else None
        data["drift_metric"] = list(self.drift_metric)
        data["drift_threshold"] = list(self.drift_threshold)
        data["filter"] = list(self.filter)
        data["storage_options"] = redact(dict(self.storage_options))
        return data


#: How every artifact and audit event writes a time: UTC, to the microsecond.
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def utc_now() -> str:
    """Now, as manifests, locks and the model repository's audit trail record it."""
    import datetime as dt

    return dt.datetime.now(dt.UTC).strftime(TIMESTAMP_FORMAT)


def new_run_id() -> str:
    """A run id: sortable by start time, unique enough to name staging folders and Dask keys."""
    import datetime as dt

    # os.urandom is what secrets.token_hex reads; importing secrets (hmac, random) costs ~5 ms per command
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + os.urandom(3).hex()


def current_actor(env: Mapping[str, str] | None = None) -> str:
    """Who changes the model repository, for its audit trail: ``BATCHSERVE_ACTOR`` or user@host."""
    import getpass
    import socket

    env = os.environ if env is None else env
    actor = env.get("BATCHSERVE_ACTOR", "").strip()
    if actor:
        return actor
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def redact(options: Mapping[str, Any]) -> dict[str, Any]:
    """Mask values whose key looks like a credential; manifests and logs are shared."""
    return {
        k: ("***" if _SECRET_RE.search(k) and k not in _NOT_SECRET else v)
        for k, v in options.items()
    }


def storage_dict(pairs: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    """Storage options kept as text pairs (hashable, picklable) decoded for fsspec."""
    return {k: _decode_scalar(v) for k, v in pairs}


def _decode_scalar(value: str) -> Any:
    low = value.lower()
    if low in ("true", "false"):
        return low == "true"
    if re.fullmatch(r"-?\d+", value):
        return int(value)
    return value


def parse_storage_options(items: list[str] | tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """Parse repeated ``key=value`` flags; a bare key is a usage mistake worth naming."""
    pairs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--storage-option takes key=value, got {item!r}")
        pairs[key.strip()] = value.strip()
    return tuple(sorted(pairs.items()))


def _split_columns(value: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(c.strip() for c in value.split(",") if c.strip())
    if isinstance(value, (list, tuple)) and all(isinstance(c, str) for c in value):
        return tuple(value)
    raise ConfigError(f"expected a list of column names, got {value!r}")


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        return value.lower() in ("1", "true", "yes", "on")
    raise ConfigError(f"expected true or false, got {value!r}")


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"expected a whole number, got {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"expected a whole number, got {value!r}") from None


def _to_batch(value: Any) -> int | str:
    """``auto`` or a whole number of rows."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        return _to_int(value)
    except ConfigError:
        raise ConfigError(f"expected auto or a whole number of rows, got {value!r}") from None


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"expected a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"expected a number, got {value!r}") from None


def _to_items(value: Any) -> tuple[str, ...]:
    """A list of short strings; from the environment, comma-separated."""
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigError(f"expected a list of strings, got {value!r}")


def _to_expressions(value: Any) -> tuple[str, ...]:
    """Expressions, one per item; from the environment, separated by ``;`` (they may hold commas)."""
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(";") if v.strip())
    return _to_items(value)


def _to_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"expected text, got {value!r}")
    return value


def _to_options(value: Any) -> tuple[tuple[str, str], ...]:
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), str(v).lower() if isinstance(v, bool) else str(v)) for k, v in value.items()))
    if isinstance(value, str):
        return parse_storage_options([v for v in value.split(",") if v])
    if isinstance(value, (list, tuple)):
        return parse_storage_options(list(value))
    raise ConfigError(f"storage_options must be a table of key = value, got {value!r}")


_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "model": _to_str,
    "input": _to_str,
    "output": _to_str,
    "features": _split_columns,
    "features_override": _to_bool,
    "keep": _split_columns,
    "batch_size": _to_batch,
    "workers": _to_int,
    "scheduler": _to_str,
    "device": _to_str,
    "overwrite": _to_bool,
    "model_version": _to_int,
    "prefix": _to_str,
    "storage_options": _to_options,
    "split_rows": _to_int,
    "reference": _to_str,
    "drift": _to_bool,
    "drift_metric": _to_items,
    "drift_threshold": _to_items,
    "fail_on_drift": _to_bool,
    "max_drift_share": _to_float,
    "resume": _to_bool,
    "retries": _to_int,
    "on_error": _to_str,
    "max_failed_files": _to_int,
    "nan": _to_str,
    "challenger": _to_str,
    "challenger_output": _to_str,
    "challenger_keep": _split_columns,
    "filter": _to_expressions,
    "precision": _to_str,
    "trt_cache": _to_str,
    "metrics_file": _to_str,
    "metrics_job": _to_str,
    "pushgateway": _to_str,
}

#: ``BATCHSERVE_*`` variables that are not settings but are still ours (so not a typo):
#: the audit trail's actor, and the CLI's log format and log file.
EXTRA_ENV = frozenset({"BATCHSERVE_ACTOR", "BATCHSERVE_LOG_FORMAT", "BATCHSERVE_LOG_FILE"})


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """The ``BATCHSERVE_*`` settings; one that is no setting is a typo (``BATCHSERVE_OUPUT`` would
    otherwise be ignored and the run write somewhere else), named with the closest real one."""
    known = {f"BATCHSERVE_{n.upper()}" for n in _CONVERTERS} | EXTRA_ENV
    for key in sorted(env):
        if key.startswith("BATCHSERVE_") and key not in known:
            raise ConfigError(f"unknown environment variable {key}{closest(key, sorted(known))}; "
                              "unset it, or see `batchserve score --help` for the variables batchserve reads")
    found: dict[str, Any] = {}
    for name in _CONVERTERS:
        key = f"BATCHSERVE_{name.upper()}"
        if key in env and env[key] != "":
            found[name] = env[key]
    return found


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
        table = load_job_file(job_file, _CONVERTERS)
        filled = {k: substitute(v, given, env, f"job file {job_file}, key {k!r}", used) for k, v in table.items()}
        unused = sorted(set(given) - used)
        if unused:
            raise ConfigError(f"--var {unused[0]} is not used by the job file (it has no ${{{unused[0]}}})"
                              + closest(unused[0], sorted(used)).replace("did you mean ", "did you mean --var "),
                              path=job_file)
        layers.append((f"job file {job_file}", filled))
    elif given:
        raise ConfigError(f"--var {next(iter(given))} needs --job: variables fill a job file's ${{name}} placeholders")
    layers.append(("environment", _from_env(env)))
    layers.append(("arguments", {k: v for k, v in flags.items() if v is not None}))
    merged: dict[str, Any] = {}
    for source, layer in layers:
        for name, value in layer.items():
            if name not in _CONVERTERS:
                raise ConfigError(f"unknown setting {name!r} from {source}{closest(name, sorted(_CONVERTERS))}")
            try:
                merged[name] = _CONVERTERS[name](value)
            except ConfigError as exc:
                raise ConfigError(f"setting {name!r} from {source}: {exc.message}") from None
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
