"""The Open Inference Protocol (KServe V2) over HTTP, with Triton's binary tensor data extension:
request bytes -> named arrays, prediction columns -> response bytes. Pure: no model, no server.

Binary extension (what ``tritonclient.http`` sends by default): the body is a JSON header of
``Inference-Header-Content-Length`` bytes followed by the raw tensors of the inputs whose
``parameters.binary_data_size`` says so, in input order; outputs asked for with
``parameters.binary_data`` (or every output, with the request parameter ``binary_data_output``)
come back the same way. Tensors are little-endian and row-major; BYTES elements are each a 4-byte
little-endian length and the bytes.

Example::

    >>> req = parse_infer(b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}')
    >>> req.inputs[0].data.tolist()
    [[1.0, 2.0]]
"""

from __future__ import annotations

import dataclasses
import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson

from batchserve.errors import RequestError, closest
from batchserve.predictions import Prediction

__all__ = ["DATATYPES", "Tensor", "InferRequest", "parse_infer", "prediction_tensor", "encode_infer", "datatype_of",
           "HEADER_LENGTH", "dumps", "load_json"]

#: The request header that says where the JSON ends and the binary tensors begin.
HEADER_LENGTH = "inference-header-content-length"

DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
_BY_DTYPE = {v: k for k, v in DATATYPES.items() if k != "BYTES"}
_JSON_OPTS = orjson.OPT_SERIALIZE_NUMPY


def dumps(value: Any) -> bytes:
    """JSON bytes (numpy arrays as lists, written by orjson's C code)."""
    return orjson.dumps(value, option=_JSON_OPTS)


def datatype_of(dtype: np.dtype[Any]) -> str:
    """The V2 datatype of a numpy dtype (strings and objects are BYTES)."""
    return _BY_DTYPE.get(np.dtype(dtype), "BYTES")


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One named input or output: V2 datatype, shape and values (already in that shape)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray
    parameters: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class InferRequest:
    id: str | None
    inputs: tuple[Tensor, ...]
    #: Outputs asked for, each with whether it comes back binary; None: all of them.
    outputs: tuple[tuple[str, bool], ...] | None
    #: The request parameter ``binary_data_output``: every output binary unless it says otherwise.
    binary_output: bool
    parameters: Mapping[str, Any]


def _fail(message: str, status: int = 400) -> RequestError:
    return RequestError(message, status=status)


def _parameters(doc: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A ``parameters`` member: absent or ``null`` (as generated clients send an unset field) is none; any
    other value that is not an object (``[]``, ``0``, ``false``, ``""``) is refused, ``where`` naming whose."""
    value = doc.get("parameters")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _fail(f"{where}parameters must be an object, got {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    """How a JSON value that should have been an object is named in an error (``[]``, ``0``, ``null``...)."""
    shown = orjson.dumps(value).decode()
    return shown if len(shown) <= 20 else type(value).__name__


def load_json(body: bytes | memoryview) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _fail(f"request body is not valid JSON: {exc}") from None


def _shape(spec: Mapping[str, Any], name: str) -> tuple[int, ...]:
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise _fail(f"input {name!r}: shape must be a list of non-negative integers, got {shape!r}")
    return tuple(shape)


def _decode_bytes(raw: memoryview, count: int, name: str) -> np.ndarray:
    out = np.empty(count, dtype=object)
    pos = 0
    for i in range(count):
        if pos + 4 > len(raw):
            raise _fail(f"input {name!r}: BYTES data ends inside element {i}")
        (size,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + size > len(raw):
            raise _fail(f"input {name!r}: BYTES element {i} runs past the data")
        out[i] = bytes(raw[pos:pos + size])
        pos += size
    if pos != len(raw):
        raise _fail(f"input {name!r}: binary_data_size is {len(raw)} bytes but its elements fill {pos}")
    return out


def _from_json(data: Any, dtype: np.dtype[Any], name: str, datatype: str) -> np.ndarray:
    """JSON values (flat or nested, row-major) as ``dtype``: never a silent truncation (1.5 is no INT64)."""
    if dtype.kind == "O":
        flat = np.asarray(data, dtype=object).reshape(-1)
        if not all(isinstance(v, str) for v in flat):
            raise _fail(f"input {name!r}: BYTES data must be strings")
        return flat
    try:
        raw = np.asarray(data)
        if raw.dtype.kind == "O" and dtype.kind == "f":  # nulls: missing values, NaN as in score
            raw = np.asarray(data, dtype=np.float64)
    except (ValueError, TypeError):
        raise _fail(f"input {name!r}: data is ragged or not {datatype} values") from None
    if raw.dtype.kind not in "biuf":
        raise _fail(f"input {name!r}: data holds values that are not {datatype} (e.g. {raw.reshape(-1)[0]!r})"
                    if raw.size else f"input {name!r}: data is not {datatype} values")
    if dtype.kind in "iub" and raw.dtype.kind == "f":
        if raw.size and not (np.isfinite(raw).all() and (raw == np.trunc(raw)).all()):
            raise _fail(f"input {name!r}: datatype {datatype} but data holds non-integral values")
    if dtype.kind in "iu" and raw.size:
        info = np.iinfo(dtype)
        lo, hi = raw.min(), raw.max()
        if lo < info.min or hi > info.max:
            raise _fail(f"input {name!r}: values [{lo}, {hi}] overflow {datatype}")
    if dtype.kind == "b" and raw.dtype.kind != "b" and raw.size and not np.isin(raw, (0, 1)).all():
        raise _fail(f"input {name!r}: BOOL data must be true/false")
    with np.errstate(over="ignore"):
        return raw.astype(dtype, copy=False).reshape(-1)


def _tensor(spec: Any, binary: memoryview, pos: int) -> tuple[Tensor, int]:
    if not isinstance(spec, dict):
        raise _fail("each input must be an object with name, datatype, shape and data")
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise _fail("an input has no name")
    datatype = spec.get("datatype")
    if datatype not in DATATYPES:
        raise _fail(f"input {name!r}: unknown datatype {datatype!r}"
                    + closest(str(datatype), list(DATATYPES)) + f"; one of {', '.join(DATATYPES)}")
    dtype = DATATYPES[datatype]
    shape = _shape(spec, name)
    count = math.prod(shape)
    params = _parameters(spec, f"input {name!r}: ")
    size = params.get("binary_data_size")
    if size is not None and "data" in spec:
        raise _fail(f"input {name!r} has both data and parameters.binary_data_size; send its values one way")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or pos + size > len(binary):
            raise _fail(f"input {name!r}: binary_data_size {size!r} does not fit the {len(binary) - pos} binary "
                        "bytes left in the body")
        raw = binary[pos:pos + size]
        pos += size
        if dtype.kind == "O":
            values = _decode_bytes(raw, count, name)
        else:
            if size != count * dtype.itemsize:
                raise _fail(f"input {name!r}: shape {list(shape)} of {datatype} needs {count * dtype.itemsize} "
                            f"bytes, binary_data_size is {size}")
            values = np.frombuffer(raw, dtype=dtype.newbyteorder("<"), count=count)
            if dtype.kind == "b" and not np.isin(np.frombuffer(raw, dtype=np.uint8), (0, 1)).all():
                raise _fail(f"input {name!r}: BOOL bytes must be 0 or 1")
    elif "data" in spec:
        values = _from_json(spec["data"], dtype, name, datatype)
        if values.size != count:
            raise _fail(f"input {name!r}: shape {list(shape)} holds {count} values but data has {values.size}")
    else:
        raise _fail(f"input {name!r} has neither data nor parameters.binary_data_size")
    return Tensor(name, datatype, shape, values.reshape(shape)), pos


def _wanted(outputs: Any, binary_default: bool) -> tuple[tuple[str, bool], ...] | None:
    if outputs is None:
        return None
    if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                                for o in outputs):
        raise _fail("outputs must be a list of objects with a name")
    wanted = []
    for o in outputs:
        params = _parameters(o, f"output {o['name']!r}: ")
        wanted.append((o["name"], bool(params.get("binary_data", binary_default))))
    return tuple(wanted)


def parse_infer(body: bytes | memoryview, header_length: int | None = None) -> InferRequest:
    """A V2 inference request, JSON or JSON + binary tensors; one :class:`RequestError` (400) naming the
    input for anything malformed."""
    view = memoryview(body)
    if header_length is not None:
        if not 0 < header_length <= len(view):
            raise _fail(f"Inference-Header-Content-Length {header_length} does not fit a body of {len(view)} bytes")
        head, binary = view[:header_length], view[header_length:]
    else:
        head, binary = view, memoryview(b"")
    doc = load_json(head)
    if not isinstance(doc, dict):
        raise _fail("request body must be a JSON object with inputs")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise _fail("request has no inputs (a list of tensors)")
    params = _parameters(doc, "")
    tensors = []
    pos = 0
    for spec in inputs:
        t, pos = _tensor(spec, binary, pos)
        tensors.append(t)
    if pos != len(binary):
        raise _fail(f"body has {len(binary) - pos} binary bytes that no input's binary_data_size claims")
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        raise _fail(f"input {next(n for n in names if names.count(n) > 1)!r} is given twice")
    rid = doc.get("id")
    binary_output = bool(params.get("binary_data_output", False))
    return InferRequest(None if rid is None else str(rid), tuple(tensors), _wanted(doc.get("outputs"), binary_output),
                        binary_output, params)


def prediction_tensor(name: str, p: Prediction) -> Tensor:
    """A prediction, as ``score`` writes its column, as a V2 output tensor: a plain column is ``[n]``,
    a ``fixed_size_list<K>`` column ``[n, K]``, and class probabilities (a struct, one field per
    label) ``FP32 [n, K]`` with the labels in ``parameters.labels``, in field order."""
    values = p.values
    if values.dtype.kind in "OUS":
        return Tensor(name, "BYTES", values.shape, values.astype(object))
    params = {"labels": list(p.labels)} if p.labels is not None else {}
    return Tensor(name, datatype_of(values.dtype), values.shape, values, params)


def _binary(t: Tensor) -> bytes:
    if t.datatype == "BYTES":
        parts = []
        for v in t.data.reshape(-1):
            b = v if isinstance(v, bytes) else str(v).encode()
            parts.append(struct.pack("<I", len(b)) + b)
        return b"".join(parts)
    return np.ascontiguousarray(t.data, dtype=t.data.dtype.newbyteorder("<")).tobytes()


def _json_data(t: Tensor) -> Any:
    if t.datatype == "BYTES":
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in t.data.reshape(-1)]
    return np.ascontiguousarray(t.data).reshape(-1)


def encode_infer(
    head: Mapping[str, Any], outputs: Sequence[Tensor], binary: Sequence[bool],
) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, the length of its JSON header."""
    described = []
    chunks = []
    for t, as_binary in zip(outputs, binary, strict=True):
        out: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
        params = dict(t.parameters)
        if as_binary:
            raw = _binary(t)
            params["binary_data_size"] = len(raw)
            chunks.append(raw)
        else:
            out["data"] = _json_data(t)
        if params:
            out["parameters"] = params
        described.append(out)
    header = dumps({**head, "outputs": described})
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)
