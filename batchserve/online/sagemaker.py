"""SageMaker's container contract on top of the same scoring: ``POST /invocations`` with CSV rows
(the features in order, no header; an empty field is missing) or JSON (``{"instances": [...]}`` as rows
or as objects by feature name, or a v2 request), answered as one JSON object per row. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from batchserve.errors import RequestError, closest
from batchserve.online import protocol
from batchserve.predictions import Prediction

__all__ = ["request_tensors", "prediction_rows"]


def request_tensors(body: bytes, kind: str, features: tuple[str, ...]) -> list[protocol.Tensor]:
    """The request's feature tensors, whatever form SageMaker sent them in."""
    if kind == "text/csv":
        return _csv_tensors(body, features)
    if kind == "application/json":
        doc = protocol.load_json(body)
        if isinstance(doc, dict) and "inputs" in doc:
            return list(protocol.parse_infer(body).inputs)
        return _instance_tensors(doc, features)
    raise RequestError(f"Content-Type {kind[:60]!r} is not supported; send text/csv or application/json", status=415)


def prediction_rows(columns: Mapping[str, Prediction], n: int) -> list[dict[str, Any]]:
    """One object per row, a field per value (``probabilities.<label>``, ``score[i]``, or the name)."""
    values = [pair for k, p in columns.items() for pair in _flat(k, p)]
    return [{k: v[i] for k, v in values} for i in range(n)]


def _flat(name: str, p: Prediction) -> list[tuple[str, list[Any]]]:
    v = p.values
    if p.labels is not None:
        return [(f"{name}.{label}", v[:, k].tolist()) for k, label in enumerate(p.labels)]
    if v.ndim == 2:
        return [(f"{name}[{i}]", v[:, i].tolist()) for i in range(v.shape[1])]
    return [(name, v.tolist())]


def _feature_tensors(matrix: np.ndarray, features: tuple[str, ...]) -> list[protocol.Tensor]:
    n = matrix.shape[0]
    return [protocol.Tensor(f, "FP64", (n,), np.ascontiguousarray(matrix[:, j])) for j, f in enumerate(features)]


def _csv_tensors(body: bytes, features: tuple[str, ...]) -> list[protocol.Tensor]:
    """SageMaker's CSV: one row per line, the features in order, no header; an empty field is missing."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError("CSV body is not UTF-8 text") from None
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        cells = line.split(",")
        if len(cells) != len(features):
            raise RequestError(f"CSV line {i} has {len(cells)} fields; the model takes {len(features)} "
                               f"({', '.join(features)})")
        try:
            rows.append([float(c) if c.strip() else np.nan for c in cells])
        except ValueError:
            raise RequestError(f"CSV line {i} holds a value that is not a number") from None
    if not rows:
        raise RequestError("CSV body has no rows")
    return _feature_tensors(np.asarray(rows, dtype=np.float64), features)


def _instance_tensors(doc: Any, features: tuple[str, ...]) -> list[protocol.Tensor]:
    """SageMaker's JSON: ``{"instances": [[...], ...]}`` in feature order, or ``[{feature: value}, ...]``."""
    rows = doc.get("instances") if isinstance(doc, dict) else None
    if not isinstance(rows, list) or not rows:
        raise RequestError('JSON body must be {"instances": [...]} (rows) or a V2 request with inputs')
    if all(isinstance(r, dict) for r in rows):
        for r in rows:
            unknown = [k for k in r if k not in features]
            if unknown:
                raise RequestError(f"unknown feature {unknown[0]!r}{closest(unknown[0], list(features), quote=True)}")
        rows = [[r.get(f) for f in features] for r in rows]
    try:
        matrix = np.asarray(rows, dtype=np.float64)
    except (TypeError, ValueError):
        raise RequestError("instances must be rows of numbers (null for missing)") from None
    if matrix.ndim != 2 or matrix.shape[1] != len(features):
        raise RequestError(f"each instance needs {len(features)} values ({', '.join(features)})")
    return _feature_tensors(matrix, features)
