"""The client side of a run, as a package with one job per module (data flows one way):

``plan`` (model, inputs, footers, schema) → ``output`` (what may be written, lock, journal) →
``cluster`` (where tasks run) → ``submit`` (tasks in, receipts out) → ``record`` (receipts to
manifest, drift verdict) → ``run`` (one scoring run, start to finish); beside them ``resume``,
``signals`` and ``profile``. This facade is what the CLI and the Python API call.

Example::

    >>> result = score(model="sample_data/model", input="sample_data/transactions",
    ...                output="out/", overwrite=True)  # doctest: +SKIP
    >>> result.manifest.totals.rows  # doctest: +SKIP
    100000
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from batchserve import io, manifest
from batchserve.config import DEFAULT_BATCH_SIZE, ScoreConfig, resolve_score_config
from batchserve.errors import InputError
from batchserve.pipeline.cluster import default_workers
from batchserve.pipeline.output import MANIFEST_NAME
from batchserve.pipeline.plan import RunPlan, inspect_model, plan_run
from batchserve.pipeline.profile import profile_config
from batchserve.pipeline.record import drift_failure
from batchserve.pipeline.run import RunResult, new_run_id, score_config
from batchserve.pipeline.submit import ProgressEvent

__all__ = [
    "ProgressEvent",
    "RunPlan",
    "RunResult",
    "inspect_model",
    "validate",
    "score",
    "profile",
    "default_workers",
    "read_manifest",
    "write_text",
    "drift_failure",
    "new_run_id",
]


def _config_from(settings: Mapping[str, Any], *, need_output: bool = True) -> ScoreConfig:
    flags = dict(settings)
    if not need_output:
        flags.setdefault("output", "")
    if "storage_options" in flags and isinstance(flags["storage_options"], Mapping):
        flags["storage_options"] = {k: str(v) for k, v in flags["storage_options"].items()}
    return resolve_score_config(flags, env={})


def score(
    config: ScoreConfig | None = None,
    /,
    *,
    on_progress: Callable[[ProgressEvent], None] | None = None,
    run_id: str | None = None,
    **settings: Any,
) -> RunResult:
    """Score a dataset; returns the manifest. Raises :class:`BatchserveError` on user errors.

    Commit protocol: files are committed one by one (staged, then renamed/copied);
    ``_manifest.json`` is journaled as ``running`` while they commit, rewritten as
    ``succeeded``/``failed``/``interrupted`` at the end, and ``_SUCCESS`` comes last.
    """
    return score_config(config or _config_from(settings), on_progress=on_progress, run_id=run_id)


def validate(config: ScoreConfig | None = None, /, **settings: Any) -> RunPlan:
    """Check the model-to-data mapping and every file's schema without scoring."""
    cfg = config or _config_from(settings, need_output=False)
    return plan_run(cfg)


def profile(
    *,
    input: str,
    output: str,
    features: list[str] | tuple[str, ...] | None = None,
    model: str | None = None,
    model_version: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int | None = None,
    scheduler: str | None = None,
    device: str = "auto",
    prefix: str = "",
    storage_options: Mapping[str, Any] | None = None,
    on_progress: Callable[[ProgressEvent], None] | None = None,
) -> manifest.Profile:
    """Build a reference profile of trusted data through the same Dask path as ``score``.

    Without ``model``, the features are ``features`` or every numeric column; with it, the
    model's features, and the prediction columns are profiled too.
    """
    opts = {k: str(v) for k, v in (storage_options or {}).items()}
    cfg = _config_from({
        "model": model or "", "input": input, "output": output, "features": features, "model_version": model_version,
        "batch_size": batch_size, "workers": workers, "scheduler": scheduler, "device": device, "prefix": prefix,
        "storage_options": opts,
    })
    return profile_config(cfg, on_progress=on_progress)


def read_manifest(uri: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A run manifest as a dict (checked and upgraded to the current schema version)."""
    storage = dict(storage_options or {})
    if io.isdir(uri, storage):
        uri = io.join_url(uri, MANIFEST_NAME)
    if not io.exists(uri, storage):
        raise InputError("manifest not found", path=uri)
    return manifest.loads(io.read_text(uri, storage), source=uri).to_dict()


def write_text(uri: str, text: str, storage_options: Mapping[str, Any] | None = None) -> None:
    io.write_text_atomic(uri, text, dict(storage_options or {}))
