"""The client side of a run, as a package with one job per module (data flows one way):

``plan`` (model, inputs, footers, schema) → ``output`` (what may be written, lock, journal) →
``cluster`` (where tasks run) → ``submit`` (tasks in, receipts out) → ``record`` (receipts to
manifest, drift verdict) → ``run`` (one scoring run, start to finish); beside them ``resume``,
``signals`` and ``profiling``. This facade is what the CLI and the Python API call.

Example::

    >>> result = score(model="sample_data/model", input="sample_data/transactions",
    ...                output="out/", overwrite=True)  # doctest: +SKIP
    >>> result.manifest.totals.rows  # doctest: +SKIP
    100000
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Unpack

from batchserve import io, manifest
from batchserve.config import Command, ScoreConfig, ScoreSettings, resolve_config
from batchserve.errors import ConfigError, InputError
from batchserve.pipeline.dryrun import DryRun, plan_dry_run
from batchserve.pipeline.output import MANIFEST_NAME
from batchserve.pipeline.plan import RunPlan, inspect_model, plan_run
from batchserve.pipeline.progress import ProgressEvent
from batchserve.pipeline.record import drift_failure
from batchserve.pipeline.run import RunResult, new_run_id, score_config
from batchserve.reference import Profile

__all__ = [
    "DryRun",
    "dry_run",
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


def _resolve(config: ScoreConfig | None, settings: Mapping[str, Any], command: Command) -> ScoreConfig:
    """A resolved config, or settings resolved the way the CLI resolves them (environment and job
    file included); both at once would silently drop one, so that is an error."""
    if config is not None and settings:
        raise ConfigError(
            f"pass either a ScoreConfig or keyword settings, not both (got {', '.join(sorted(settings))} "
            "beside a config); use dataclasses.replace(config, ...) to change a config"
        )
    return config if config is not None else resolve_config(settings, command=command)


def score(
    config: ScoreConfig | None = None,
    /,
    *,
    on_progress: Callable[[ProgressEvent], None] | None = None,
    run_id: str | None = None,
    **settings: Unpack[ScoreSettings],
) -> RunResult:
    """Score a dataset; returns the result. Raises :class:`BatchserveError` on user errors, and
    :class:`DriftError` after committing when ``fail_on_drift`` finds drift past the policy.

    Settings resolve as on the command line: keywords > ``BATCHSERVE_*`` > ``job`` file > defaults.
    Commit protocol: files are committed one by one (staged, then renamed/copied);
    ``_manifest.json`` is journaled as ``running`` while they commit, rewritten as
    ``succeeded``/``failed``/``interrupted`` at the end, and ``_SUCCESS`` comes last.
    """
    return score_config(_resolve(config, settings, "score"), on_progress=on_progress, run_id=run_id)


def dry_run(config: ScoreConfig | None = None, /, **settings: Unpack[ScoreSettings]) -> DryRun:
    """What ``score`` with these settings would do (files, rows, bytes, model version, what
    ``--resume`` would keep, an estimate), checked as a run checks it; nothing is written."""
    return plan_dry_run(_resolve(config, settings, "score"))


def validate(config: ScoreConfig | None = None, /, **settings: Unpack[ScoreSettings]) -> RunPlan:
    """Check the model-to-data mapping and every file's schema without scoring."""
    return plan_run(_resolve(config, settings, "validate"))


def profile(
    config: ScoreConfig | None = None,
    /,
    *,
    on_progress: Callable[[ProgressEvent], None] | None = None,
    **settings: Unpack[ScoreSettings],
) -> Profile:
    """Build a reference profile of trusted data through the same Dask path as ``score``;
    ``output`` is the profile's path.

    Without ``model``, the features are ``features`` or every numeric column; with it, the
    model's features, and the prediction columns are profiled too.
    """
    from batchserve.pipeline.profiling import profile_config

    return profile_config(_resolve(config, settings, "profile"), on_progress=on_progress)


def default_workers() -> int:
    """The local cluster's size when --workers is not given (one per GPU, else cores/4)."""
    from batchserve.pipeline.cluster import default_workers as count

    return count()


def read_manifest(uri: str, storage_options: Mapping[str, Any] | None = None) -> manifest.Manifest:
    """A run's manifest, typed (checked against its schema and upgraded to the current version);
    ``uri`` may be the output folder. ``.to_dict()`` gives the JSON form."""
    storage = dict(storage_options or {})
    if io.isdir(uri, storage):
        uri = io.join_url(uri, MANIFEST_NAME)
    if not io.exists(uri, storage):
        raise InputError("manifest not found", path=uri)
    return manifest.loads(io.read_text(uri, storage), source=uri)


def write_text(uri: str, text: str, storage_options: Mapping[str, Any] | None = None) -> None:
    io.write_text_atomic(uri, text, dict(storage_options or {}))
