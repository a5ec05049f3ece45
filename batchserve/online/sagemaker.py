"""SageMaker's container contract on top of the same scoring: ``POST /invocations`` with CSV rows
(the features in order, no header; an empty field is missing) or JSON (``{"instances": [...]}`` as rows
or as objects by feature name, or a v2 request), answered as the ``Accept`` header asks: JSON (one object
per row, the default), CSV (one line per row, the fields in order, no header, as Batch Transform joins
them) or JSON Lines; anything else is a 406. Pure.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from typing import Any

import numpy as np

from batchserve.errors import RequestError, closest
from batchserve.online import protocol
from batchserve.predictions import Prediction

__all__ = ["request_tensors", "prediction_rows", "response_kind", "encode_rows", "RESPONSE_KINDS"]

#: What ``Accept`` may ask for (``*/*`` and no header: JSON). SageMaker spells JSON Lines both ways.
RESPONSE_KINDS = {"application/json": "json", "text/csv": "csv", "application/jsonlines": "jsonl",
                  "application/x-jsonlines": "jsonl"}


def response_kind(accept: str) -> str:
    """The answer's form for an ``Accept`` header: the first type it names that is served (parameters and
    q-values aside), or a 406 naming what is."""
    wanted = [part.split(";")[0].strip().lower() for part in accept.split(",") if part.strip()]
    if not wanted:
        return "json"
    for kind in wanted:
        if kind in RESPONSE_KINDS:
            return RESPONSE_KINDS[kind]
        if kind in ("*/*", "application/*"):
            return "json"
        if kind == "text/*":
            return "csv"
    raise RequestError(f"Accept {accept[:80]!r} names no form this server answers in; ask for "
                       f"{', '.join(RESPONSE_KINDS)}", status=406)


def encode_rows(columns: Mapping[str, Prediction], n: int, version: str | None, kind: str) -> tuple[bytes, bytes]:
    """The body and its content type, as ``kind`` (from :func:`response_kind`) asks."""
    rows = prediction_rows(columns, n)
    if kind == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        for row in rows:
            writer.writerow(row.values())
        return out.getvalue().encode(), b"text/csv; charset=utf-8"
    if kind == "jsonl":
        return b"".join(protocol.dumps(row) + b"\n" for row in rows), b"application/jsonlines"
    return protocol.dumps({"predictions": rows, "model_version": version}), b"application/json"


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
