"""Model outputs as ``score`` stores them, and as ``serve`` answers with them: one set of rules.

A model output becomes a :class:`Prediction` (the batch on the first axis, ``[N, 1]`` as ``[N]``,
ZipMap class probabilities as ``float32 [N, K]`` with their labels), and a prediction an Arrow
column (:func:`prediction_to_arrow`). The batch path takes both steps; the server stops after the
first and writes the arrays on the wire, so an answer and a scored row cannot disagree on shape,
type or labels. Split from :mod:`batchserve.scoring`, which turns Arrow batches into model feeds.

Example::

    >>> import numpy as np
    >>> predictions({"score": np.zeros((2, 1), dtype=np.float32)}, 2)["score"].values.shape
    (2,)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from batchserve.errors import ModelError
from batchserve.signature import LabeledProbabilities

__all__ = ["Prediction", "predictions", "prediction_to_arrow", "arrow_to_prediction", "outputs_to_columns",
           "flat_prediction_columns",
           "numeric_array"]


def numeric_array(values: np.ndarray) -> pa.Array:
    """A 1-D numeric array as Arrow, sharing its memory.

    ``pa.array`` would copy nothing either, but its first call in a process imports pandas to ask
    whether the input is a pandas object (~0.15 s of a 0.9 s job, make bench "startup"); wrapping
    the buffer asks nothing. Bools (bit-packed in Arrow) and other kinds go through ``pa.array``.
    """
    if values.ndim != 1 or values.dtype.kind not in "iuf" or values.dtype.byteorder == ">":
        return pa.array(values)
    values = np.ascontiguousarray(values)
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)])


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One model output as ``score`` stores it, before it becomes Arrow: ``values`` has the batch on the
    first axis (``[N, 1]`` already ``[N]``); class probabilities (ZipMap) are ``float32 [N, K]`` with
    their class ``labels`` (the struct fields of the scored column). ``serve`` answers from these, so
    both sides apply the same rules."""

    values: np.ndarray
    labels: tuple[str, ...] | None = None

    def rows(self, start: int, count: int) -> Prediction:
        return Prediction(self.values[start:start + count], self.labels)


def _tensor_prediction(value: np.ndarray, name: str, n: int) -> Prediction:
    if value.ndim == 0 or value.shape[0] != n:
        raise ModelError(
            f"model output {name!r} has shape {list(value.shape)} for a batch of {n} rows; "
            "batchserve needs the batch on the first axis"
        )
    if value.ndim == 2 and value.shape[1] == 1:
        value = value.reshape(n)
    return Prediction(value)


def _zipmap_prediction(value: Sequence[Mapping[Any, float]], name: str, n: int) -> Prediction:
    if len(value) != n:
        raise ModelError(f"model output {name!r} has {len(value)} rows for a batch of {n}")
    labels = list(value[0].keys()) if n else []
    values = np.empty((n, len(labels)), dtype=np.float32)
    for k, label in enumerate(labels):
        values[:, k] = np.fromiter((row[label] for row in value), dtype=np.float32, count=n)
    return Prediction(values, tuple(str(label) for label in labels))


def _labeled_prediction(value: LabeledProbabilities, name: str, n: int) -> Prediction:
    values = value.values
    if values.ndim != 2 or values.shape != (n, len(value.labels)):
        raise ModelError(
            f"model output {name!r} has shape {list(values.shape)}; expected [{n}, {len(value.labels)}] "
            "(one probability per class label)"
        )
    return Prediction(np.asarray(values, dtype=np.float32), tuple(str(label) for label in value.labels))


def predictions(outputs: Mapping[str, Any], n: int, prefix: str = "") -> dict[str, Prediction]:
    """Model outputs checked and shaped as the scored columns will be (see :class:`Prediction`)."""
    out: dict[str, Prediction] = {}
    for name, value in outputs.items():
        if isinstance(value, LabeledProbabilities):
            out[prefix + name] = _labeled_prediction(value, name, n)
        elif isinstance(value, np.ndarray):
            out[prefix + name] = _tensor_prediction(value, name, n)
        elif isinstance(value, list) and (not value or isinstance(value[0], dict)):
            out[prefix + name] = _zipmap_prediction(value, name, n)
        else:
            raise ModelError(
                f"model output {name!r} is a {type(value).__name__}, which batchserve cannot store "
                "(supported: tensors and ZipMap sequences of maps)"
            )
    return out


def prediction_to_arrow(p: Prediction) -> pa.Array:
    """``[N]`` a plain column, ``[N, K...]`` nested ``fixed_size_list``s, class probabilities a struct
    with one float32 field per label (named by it)."""
    value = p.values
    if p.labels is not None:
        if not p.labels:
            return pa.array([], type=pa.struct([]))
        arrays = [numeric_array(np.ascontiguousarray(value[:, k])) for k in range(len(p.labels))]
        return pa.StructArray.from_arrays(arrays, fields=[pa.field(label, pa.float32()) for label in p.labels])
    if value.ndim == 1:
        if value.dtype.kind in "OUS":
            return pa.array(value.tolist(), type=pa.string())
        return numeric_array(value)
    flat = np.ascontiguousarray(value).reshape(-1)
    arr: pa.Array = pa.array(flat.tolist(), type=pa.string()) if flat.dtype.kind in "OUS" else numeric_array(flat)
    for size in reversed(value.shape[1:]):
        arr = pa.FixedSizeListArray.from_arrays(arr, int(size))
    return arr


def outputs_to_columns(outputs: Mapping[str, Any], n: int, prefix: str = "") -> dict[str, pa.Array]:
    """Model outputs as Arrow columns named after the ONNX outputs (plus ``prefix``).

    ``[N]``/``[N,1]`` become plain columns, ``[N,K]`` a ``fixed_size_list<K>``,
    and a ZipMap (a list of ``{label: probability}``, or the faster
    :class:`LabeledProbabilities` a session returns instead) a struct with one
    float32 field per class, named by the label.
    """
    return {name: prediction_to_arrow(p) for name, p in predictions(outputs, n, prefix).items()}


def flat_prediction_columns(name: str, arr: pa.Array) -> list[tuple[str, pa.Array]]:
    if pa.types.is_struct(arr.type):
        return [(f"{name}.{arr.type.field(i).name}", arr.field(i)) for i in range(arr.type.num_fields)]
    small_list = pa.types.is_fixed_size_list(arr.type) and arr.type.list_size <= 16
    if small_list and not pa.types.is_nested(arr.type.value_type):
        k = arr.type.list_size
        values = arr.flatten().to_numpy(zero_copy_only=False).reshape(-1, k) if len(arr) else np.zeros((0, k))
        return [(f"{name}[{i}]", numeric_array(values[:, i])) for i in range(k)]
    if pa.types.is_nested(arr.type):
        return []  # wide or nested outputs (embeddings) are not profiled
    return [(name, arr)]


def arrow_to_prediction(arr: pa.Array) -> Prediction:
    """A stored prediction column back as a :class:`Prediction` (the inverse of
    :func:`prediction_to_arrow`): how the server answers from a nightly run's output."""
    if pa.types.is_struct(arr.type):
        labels = tuple(arr.type.field(i).name for i in range(arr.type.num_fields))
        values = np.empty((len(arr), len(labels)), dtype=np.float32)
        for k in range(len(labels)):
            values[:, k] = arr.field(k).to_numpy(zero_copy_only=False)
        return Prediction(values, labels)
    dims = [len(arr)]
    flat = arr
    while pa.types.is_fixed_size_list(flat.type):
        dims.append(flat.type.list_size)
        flat = flat.flatten()
    if pa.types.is_string(flat.type) or pa.types.is_large_string(flat.type):
        return Prediction(np.asarray(flat.to_pylist(), dtype=object).reshape(dims))
    return Prediction(flat.to_numpy(zero_copy_only=False).reshape(dims))
