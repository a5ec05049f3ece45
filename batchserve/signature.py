"""What a model takes and returns, as plain data: read by ``model`` from the ONNX graph, used by the
pure ``scoring`` core. No onnxruntime here, so scoring can be imported (and tested) without it.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from batchserve.errors import ModelError

__all__ = ["ONNX_NUMPY_TYPES", "TensorInfo", "ModelInfo", "LabeledProbabilities", "ModelRunner"]


# ONNX tensor element types we can feed from numeric Arrow columns.
ONNX_NUMPY_TYPES: dict[str, np.dtype[Any]] = {
    "float": np.dtype(np.float32),
    "double": np.dtype(np.float64),
    "float16": np.dtype(np.float16),
    "int64": np.dtype(np.int64),
    "int32": np.dtype(np.int32),
    "int16": np.dtype(np.int16),
    "int8": np.dtype(np.int8),
    "uint8": np.dtype(np.uint8),
    "uint16": np.dtype(np.uint16),
    "uint32": np.dtype(np.uint32),
    "uint64": np.dtype(np.uint64),
    "bool": np.dtype(np.bool_),
}


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One model input or output as the graph declares it."""

    name: str
    #: ORT-style type string: ``tensor(float)``, ``seq(map(int64,tensor(float)))``.
    type: str
    #: Dimensions; ``None`` or a symbolic name for dynamic axes.
    shape: tuple[int | str | None, ...] | None

    @property
    def elem_type(self) -> str | None:
        m = re.fullmatch(r"tensor\((\w+)\)", self.type)
        return m.group(1) if m else None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "shape": list(self.shape) if self.shape is not None else None}


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """Everything the manifest records about a model, read without running it."""

    sha256: str
    bytes: int
    producer_name: str
    producer_version: str
    ir_version: int
    opset: dict[str, int]
    graph_name: str
    doc_string: str
    metadata_props: dict[str, str]
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]

    @property
    def feature_names(self) -> list[str] | None:
        """``metadata_props["feature_names"]`` (a JSON list), the convention we document."""
        raw = self.metadata_props.get("feature_names")
        if raw is None:
            return None
        try:
            names = json.loads(raw)
        except (json.JSONDecodeError, RecursionError):  # deeply nested garbage must not crash the run
            names = None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ModelError(
                'metadata_props["feature_names"] must be a JSON list of strings',
                found=repr(raw[:80]),
            )
        return names

    def as_dict(self) -> dict[str, Any]:
        return {
            "sha256": self.sha256,
            "bytes": self.bytes,
            "producer_name": self.producer_name,
            "producer_version": self.producer_version,
            "ir_version": self.ir_version,
            "opset": dict(self.opset),
            "graph_name": self.graph_name,
            "metadata_props": dict(self.metadata_props),
            "inputs": [t.as_dict() for t in self.inputs],
            "outputs": [t.as_dict() for t in self.outputs],
        }


@dataclasses.dataclass(frozen=True)
class LabeledProbabilities:
    """Class probabilities ``[N, K]`` with their labels: what a ZipMap output means.

    Sessions strip a model's final ZipMap node and return this instead of a list
    of N dicts; building those dicts cost ~16% of LightGBM inference time.
    """

    values: np.ndarray
    labels: tuple[int | str, ...]


class ModelRunner(Protocol):
    """What scoring needs from a model: named arrays in, named outputs out."""

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, Any]: ...
