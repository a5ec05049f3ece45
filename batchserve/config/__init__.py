"""Resolve a run's configuration once, at the edge, into a frozen value.

Precedence, highest first: explicit arguments (CLI flags or keyword arguments to
:func:`batchserve.score`) > ``BATCHSERVE_*`` environment variables > a TOML job
file > defaults. This is the only package that reads the environment, so a run
is fully described by its :class:`ScoreConfig` (which the manifest records).

Example::

    >>> cfg = resolve_score_config({"model": "m.onnx", "input": "in/", "output": "out/"}, env={})
    >>> cfg.batch_size
    65536

One job per module: ``settings`` (the frozen :class:`ScoreConfig` and its checks), ``values`` (each
value into its type), ``environment`` (``BATCHSERVE_*``), ``resolve`` (the sources merged),
``secrets`` (redaction) and ``clock`` (timestamps, run ids, the actor); job files are
:mod:`batchserve.jobfile`. This facade keeps ``from batchserve.config import ...`` as it was.
"""

from __future__ import annotations

from batchserve.config.clock import TIMESTAMP_FORMAT, current_actor, new_run_id, utc_now
from batchserve.config.environment import EXTRA_ENV
from batchserve.config.resolve import Command, ScoreSettings, resolve_config, resolve_score_config
from batchserve.config.secrets import redact
from batchserve.config.serving import ServeConfig, resolve_serve_config
from batchserve.config.settings import DEFAULT_BATCH_SIZE, ScoreConfig
from batchserve.config.values import parse_storage_options, storage_dict

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "ScoreConfig",
    "ServeConfig",
    "resolve_serve_config",
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
