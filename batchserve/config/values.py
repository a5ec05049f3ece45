"""Each setting's value from whatever a source gave (TOML types, environment text, Python values)
into the one type :class:`ScoreConfig` holds, or a :class:`ConfigError` naming what was expected."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from batchserve.errors import ConfigError, closest

__all__ = ["CONVERTERS", "SERVE_CONVERTERS", "merge_layers", "Table", "storage_dict", "parse_storage_options"]


class Table(tuple):  # type: ignore[type-arg]
    """A nested table of storage options (``[score.storage_options.client_kwargs]``), kept as sorted
    pairs so the config stays hashable and picklable, and given back to fsspec as a dict: flattened to
    its text it lost its type (s3fs: 'str' object has no attribute 'copy') and hid its secrets from
    redaction."""


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return Table(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _thaw(value: Any) -> Any:
    if isinstance(value, Table):
        return {k: _thaw(v) for k, v in value}
    return _decode_scalar(value)


def storage_dict(pairs: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    """Storage options kept as text pairs (hashable, picklable; nested tables as :class:`Table`)
    decoded for fsspec."""
    return {k: _thaw(v) for k, v in pairs}


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
    """A whole number from an int or its text; a float (a job file's 1.5 or 100.7) is refused, never
    truncated into another model version or batch size."""
    if isinstance(value, bool | float):
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
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, str):
        return parse_storage_options([v for v in value.split(",") if v])
    if isinstance(value, (list, tuple)):
        return parse_storage_options(list(value))
    raise ConfigError(f"storage_options must be a table of key = value, got {value!r}")


#: Every setting's name and converter: the one list of settings (job-file keys and variables follow it).
CONVERTERS: dict[str, Callable[[Any], Any]] = {
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
    "push_timeout": _to_float,
    "metrics_job": _to_str,
    "pushgateway": _to_str,
}


#: The settings of ``batchserve serve``: its own list (a ``[serve]`` table, the same ``BATCHSERVE_*``
#: names), sharing the converters and the meaning of the names it has in common with ``score``.
SERVE_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "model": _to_str,
    "name": _to_str,
    "host": _to_str,
    "port": _to_int,
    "features": _split_columns,
    "features_override": _to_bool,
    "device": _to_str,
    "nan": _to_str,
    "storage_options": _to_options,
    "workers": _to_int,
    "max_batch_size": _to_int,
    "max_queue_delay_us": _to_int,
    "inline_rows": _to_int,
    "max_queue_rows": _to_int,
    "max_body": _to_int,
    "max_rows": _to_int,
    "poll_seconds": _to_float,
    "token_file": _to_str,
    "allow_unauthenticated": _to_bool,
    "tls_cert": _to_str,
    "tls_key": _to_str,
    "drain_seconds": _to_float,
    "read_timeout": _to_float,
    "max_connections": _to_int,
    "shadow_budget": _to_float,
    "access_log": _to_bool,
    "log_requests": _to_str,
    "log_flush_rows": _to_int,
    "log_flush_seconds": _to_float,
    "log_buffer_rows": _to_int,
    "log_sample": _to_float,
    "reference": _to_str,
    "drift_window": _to_str,
    "drift_metric": _to_items,
    "drift_threshold": _to_items,
    "challenger": _to_str,
    "precomputed": _to_str,
    "key": _to_str,
    "precomputed_only": _to_bool,
}


def merge_layers(layers: Sequence[tuple[str, Mapping[str, Any]]],
                 converters: Mapping[str, Callable[[Any], Any]]) -> dict[str, Any]:
    """Later layers win; every value is converted, and a bad or unknown one names the layer it came
    from (``setting 'port' from environment: expected a whole number``). One merge for every command."""
    merged: dict[str, Any] = {}
    for source, layer in layers:
        for name, value in layer.items():
            if name not in converters:
                raise ConfigError(f"unknown setting {name!r} from {source}{closest(name, sorted(converters))}")
            try:
                merged[name] = converters[name](value)
            except ConfigError as exc:
                raise ConfigError(f"setting {name!r} from {source}: {exc.message}") from None
    return merged
