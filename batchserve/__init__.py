"""batchserve: score Parquet datasets with ONNX models on Dask.

The command line is a thin layer over these functions, so Airflow's
PythonOperator or a notebook can call them directly::

    import batchserve
    result = batchserve.score(model="sample_data/model", input="sample_data/transactions",
                              output="out/", overwrite=True)
    print(result.manifest.totals.rows)

Names are imported on first use (PEP 562): ``import batchserve`` stays cheap, so the
console script can install its signal handlers before Dask and onnxruntime load.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from batchserve.config import ScoreConfig, resolve_score_config
    from batchserve.errors import (
        BatchserveError,
        ClusterError,
        ConfigError,
        DataError,
        DeviceError,
        DriftError,
        InputError,
        Interrupted,
        LockedError,
        ModelError,
        OutputError,
        RequestError,
        SchemaError,
        StorageError,
        UsageError,
        WorkerStateError,
    )
    from batchserve.history import diff_runs as diff
    from batchserve.history import files, runs
    from batchserve.manifest import Manifest
    from batchserve.online import create_app, serve
    from batchserve.pipeline import (
        DryRun,
        ProgressEvent,
        RunPlan,
        RunResult,
        dry_run,
        inspect_model,
        profile,
        score,
        validate,
    )

_WHERE = {
    "score": "pipeline",
    "dry_run": "pipeline",
    "DryRun": "pipeline",
    "runs": "history",
    "files": "history",
    "diff": "history:diff_runs",
    "UsageError": "errors",
    "profile": "pipeline",
    "Interrupted": "errors",
    "LockedError": "errors",
    "DriftError": "errors",
    "validate": "pipeline",
    "inspect_model": "pipeline",
    "RunResult": "pipeline",
    "RunPlan": "pipeline",
    "ProgressEvent": "pipeline",
    "resolve_score_config": "config",
    "ScoreConfig": "config",
    "Manifest": "manifest",
    "BatchserveError": "errors",
    "ConfigError": "errors",
    "InputError": "errors",
    "SchemaError": "errors",
    "DataError": "errors",
    "ModelError": "errors",
    "DeviceError": "errors",
    "OutputError": "errors",
    "StorageError": "errors",
    "ClusterError": "errors",
    "WorkerStateError": "errors",
    "serve": "online",
    "create_app": "online",
    "RequestError": "errors",
}

__all__ = [
    "__version__",
    "score",
    "dry_run",
    "DryRun",
    "runs",
    "files",
    "diff",
    "UsageError",
    "validate",
    "profile",
    "Interrupted",
    "LockedError",
    "DriftError",
    "inspect_model",
    "resolve_score_config",
    "ScoreConfig",
    "RunResult",
    "RunPlan",
    "ProgressEvent",
    "Manifest",
    "BatchserveError",
    "ConfigError",
    "InputError",
    "SchemaError",
    "DataError",
    "ModelError",
    "DeviceError",
    "OutputError",
    "StorageError",
    "ClusterError",
    "WorkerStateError",
    "serve",
    "create_app",
    "RequestError",
]


#: Set on first use by ``__getattr__`` (an annotation alone creates no attribute).
__version__: str


def __getattr__(name: str) -> Any:
    if name == "__version__":  # looked up on first use: importlib.metadata is ~20 ms of every start
        global __version__
        from batchserve.version import version

        __version__ = version()
        return __version__
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'batchserve' has no attribute {name!r}")
    module, _, attr = module.partition(":")  # "history:diff_runs": exported under another name
    value = getattr(importlib.import_module(f"batchserve.{module}"), attr or name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
