"""Which request tensors feed which model input: the model's own inputs as they are, or one input per
feature column, converted exactly as ``score`` converts a Parquet batch (the same feature plan, casts
and NaN policy: :func:`batchserve.scoring.batch_to_feeds`).

Example: the sample model takes ``input: FP32 [n, 8]``; a request may send that tensor, or eight
``[n]`` tensors named ``amount``, ``hour`` ... in any order and any numeric datatype.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from batchserve import scoring
from batchserve.errors import RequestError, closest
from batchserve.online.protocol import Tensor, datatype_of
from batchserve.predictions import numeric_array

__all__ = ["to_feeds", "input_metadata", "describe_inputs"]


def describe_inputs(plan: scoring.FeaturePlan) -> str:
    native = ", ".join(f"{b.input_name} {datatype_of(np.dtype(b.dtype))} "
                       + (f"[n, {len(b.columns)}]" if b.rank == 2 else "[n]") for b in plan.bindings)
    return f"send the model's inputs ({native}) or one [n] input per feature ({', '.join(plan.features)})"


def input_metadata(plan: scoring.FeaturePlan) -> list[dict[str, object]]:
    """The model's own inputs, as V2 metadata lists them (``-1``: any number of rows)."""
    return [{"name": b.input_name, "datatype": datatype_of(np.dtype(b.dtype)),
             "shape": [-1, len(b.columns)] if b.rank == 2 else [-1]} for b in plan.bindings]


def _rows(tensors: Sequence[Tensor], max_rows: int) -> int:
    counts = {t.shape[0] if t.shape else 1 for t in tensors}
    if len(counts) != 1:
        raise RequestError(f"inputs disagree on the number of rows: {sorted(counts)}")
    n = counts.pop()
    if n == 0:
        raise RequestError("request has no rows")
    if n > max_rows:
        raise RequestError(f"request has {n:,} rows, more than --max-rows {max_rows:,}; split it", status=413)
    return n


def _native(tensors: Sequence[Tensor], plan: scoring.FeaturePlan, n: int) -> dict[str, np.ndarray]:
    by_name = {t.name: t for t in tensors}
    feeds = {}
    for b in plan.bindings:
        t = by_name[b.input_name]
        want = datatype_of(np.dtype(b.dtype))
        if t.datatype != want:
            raise RequestError(f"input {t.name!r} has datatype {t.datatype}; the model takes {want}")
        shape = (n, len(b.columns)) if b.rank == 2 else (n,)
        if t.shape != shape:
            raise RequestError(f"input {t.name!r} has shape {list(t.shape)}; the model takes {list(shape)}")
        values = t.data
        if plan.nan == "fail" and values.dtype.kind == "f" and not np.isfinite(values).all():
            raise RequestError(f"input {t.name!r} holds NaN or inf and --nan fail is set")
        feeds[b.input_name] = values
    return feeds


def _column(t: Tensor, n: int) -> pa.Array:
    if t.shape not in ((n,), (n, 1)):
        raise RequestError(f"input {t.name!r} has shape {list(t.shape)}; a feature input takes [{n}] (one value a row)")
    if t.datatype == "BYTES":
        raise RequestError(f"input {t.name!r} is BYTES; features are numeric (bool, int or float)")
    values = t.data.reshape(n)
    return pa.array(values) if values.dtype.kind == "b" else numeric_array(values)


def to_feeds(tensors: Sequence[Tensor], plan: scoring.FeaturePlan, max_rows: int) -> tuple[dict[str, np.ndarray], int]:
    """The model's feeds for a request and its number of rows; a :class:`RequestError` naming the input
    for a missing, unknown or mis-shaped one."""
    names = [t.name for t in tensors]
    given = set(names)
    n = _rows(tensors, max_rows)
    inputs = {b.input_name for b in plan.bindings}
    if given == set(plan.features):
        batch = pa.RecordBatch.from_arrays([_column(t, n) for t in tensors], names=names)
        return scoring.batch_to_feeds(batch, plan), n
    if given == inputs:
        return _native(tensors, plan, n), n
    unknown = [x for x in names if x not in inputs and x not in plan.features]
    native = sorted(given & (inputs - set(plan.features)))
    per_feature = sorted(given & (set(plan.features) - inputs))
    if native and per_feature and not unknown:
        raise RequestError(f"request mixes the model's input {native[0]!r} with per-feature inputs "
                           f"({', '.join(repr(f) for f in per_feature[:3])}{', ...' if len(per_feature) > 3 else ''}); "
                           f"send one or the other: {describe_inputs(plan)}")
    if unknown:
        raise RequestError(f"unknown input {unknown[0]!r}"
                           + closest(unknown[0], sorted(inputs | set(plan.features)), quote=True)
                           + f"; {describe_inputs(plan)}")
    wanted = inputs if given & inputs else set(plan.features)
    missing = [x for x in (*(b.input_name for b in plan.bindings), *plan.features) if x in wanted and x not in given]
    raise RequestError(f"missing input {missing[0]!r}; {describe_inputs(plan)}")
