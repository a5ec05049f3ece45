"""The frozen settings of a run (:class:`ScoreConfig`) and the checks every value passes, whichever
source it came from (flag, ``BATCHSERVE_*``, job file, keyword argument)."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from batchserve.config.secrets import redact, redact_text
from batchserve.config.values import storage_dict
from batchserve.errors import ConfigError
from batchserve.selection import parse_filter

__all__ = ["DEFAULT_BATCH_SIZE", "MAX_BATCH_SIZE", "ScoreConfig"]

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
    storage_options: tuple[tuple[str, Any], ...] = ()
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
    #: Seconds a finished run waits for the Pushgateway, in all (then one warning; the run's result stands).
    push_timeout: float = 15.0
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
        if not 0 < self.push_timeout <= 3600:
            raise ConfigError(f"--push-timeout must be between 0 and 3600 seconds, got {self.push_timeout}")
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
        if self.pushgateway is not None and not re.match(r"^(https?://)?([^\s/@]+@)?[^\s/:@]+(:\d{1,5})?(/\S*)?$",
                                                         self.pushgateway):
            raise ConfigError("--pushgateway must be a URL such as http://pushgateway:9091 (user:password@ allowed), "
                              f"got {redact_text(self.pushgateway)!r}")

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
        data["storage_options"] = redact(storage_dict(self.storage_options))
        for name in ("model", "input", "output", "reference", "challenger", "challenger_output", "pushgateway",
                     "metrics_file", "trt_cache"):
            if isinstance(data.get(name), str):  # a URL's userinfo password: http://user:PASS@host/m.onnx
                data[name] = redact_text(data[name])
        return data
