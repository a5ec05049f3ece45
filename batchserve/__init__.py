"""batchserve: score Parquet datasets with ONNX models on Dask.

The command line is a thin layer over these functions, so Airflow's
PythonOperator or a notebook can call them directly::

    import batchserve
    result = batchserve.score(model="sample_data/model", input="sample_data/transactions",
                              output="out/", overwrite=True)
    print(result.manifest.totals.rows)
"""

from batchserve.config import ScoreConfig, resolve_score_config
from batchserve.errors import (
    BatchserveError,
    ClusterError,
    ConfigError,
    DataError,
    DeviceError,
    InputError,
    ModelError,
    OutputError,
    SchemaError,
    StorageError,
    WorkerStateError,
)
from batchserve.manifest import Manifest
from batchserve.pipeline import ProgressEvent, RunPlan, RunResult, inspect_model, score, validate

__all__ = [
    "score",
    "validate",
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
]
