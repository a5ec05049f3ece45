"""ONNX models: version resolution, description, and one inference session per worker.

The only module that imports onnxruntime (and onnx, for metadata ORT does not
expose). Sessions are built where they live, on the worker, from bytes; this
module never touches storage, so the caller decides how bytes are fetched.

Device policy (no silent fallback): ``cpu`` uses the CPU provider; ``cuda`` or
``cuda:N`` must get the CUDA provider or fail with :class:`DeviceError`;
``auto`` tries CUDA when a GPU is visible and records why it fell back if not.

Example::

    >>> info = describe(open("sample_data/model/1/model.onnx", "rb").read())  # doctest: +SKIP
    >>> [i.name for i in info.inputs]  # doctest: +SKIP
    ['input']
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from batchserve import tuning
from batchserve.binding import Binder, DeviceFeeds, PinnedPool, cuda_runtime, joined, row_pieces
from batchserve.errors import DeviceError, ModelError
from batchserve.signature import ONNX_NUMPY_TYPES, LabeledProbabilities, ModelInfo, ModelRunner, TensorInfo

if TYPE_CHECKING:
    import onnx
    import onnxruntime as ort
else:  # onnx and onnxruntime cost ~0.2 s to import: paid by the first model parsed, not by `batchserve --help`
    onnx = ort = None


def _load_onnx() -> None:
    """Bind ``onnx`` in this module on first use: enough to read a model's signature, so a plan that
    fails on its inputs' columns never loads onnxruntime."""
    global onnx
    if onnx is None:
        import onnx as _onnx

        onnx = _onnx


def _load_ort() -> None:
    """Bind ``onnx`` and ``onnxruntime`` in this module on first use."""
    global ort
    _load_onnx()
    if ort is None:
        import onnxruntime as _ort

        ort = _ort


__all__ = [
    "TensorInfo",
    "ModelInfo",
    "LoadedModel",
    "LabeledProbabilities",
    "ModelRunner",
    "describe",
    "sha256_hex",
    "visible_gpu_count",
    "pick_gpu",
    "build_session",
    "check_runnable",
    "bind",
    "ort_reason",
    "ONNX_NUMPY_TYPES",
]

@functools.cache
def _elem_names() -> dict[int, str]:
    _load_onnx()
    return {v: k.lower() for k, v in onnx.TensorProto.DataType.items()}


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _type_string(tp: onnx.TypeProto) -> str:
    kind = tp.WhichOneof("value")
    if kind == "tensor_type":
        return f"tensor({_elem_names().get(tp.tensor_type.elem_type, 'undefined')})"
    if kind == "sequence_type":
        return f"seq({_type_string(tp.sequence_type.elem_type)})"
    if kind == "map_type":
        key = _elem_names().get(tp.map_type.key_type, "undefined")
        return f"map({key},{_type_string(tp.map_type.value_type)})"
    return kind or "undefined"


def _shape(tp: onnx.TypeProto) -> tuple[int | str | None, ...] | None:
    if tp.WhichOneof("value") != "tensor_type" or not tp.tensor_type.HasField("shape"):
        return None
    dims: list[int | str | None] = []
    for d in tp.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return tuple(dims)


def describe(data: bytes) -> ModelInfo:
    """Parse an ONNX model's header: I/O signature, opsets, producer, metadata."""
    _load_onnx()
    from google.protobuf.message import DecodeError

    try:
        proto = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ModelError(f"not an ONNX model ({type(exc).__name__})") from None
    if not proto.graph.output:
        raise ModelError("not an ONNX model (the graph has no outputs)")
    initializers = {t.name for t in proto.graph.initializer}
    inputs = tuple(
        TensorInfo(i.name, _type_string(i.type), _shape(i.type))
        for i in proto.graph.input
        if i.name not in initializers
    )
    outputs = tuple(TensorInfo(o.name, _type_string(o.type), _shape(o.type)) for o in proto.graph.output)
    return ModelInfo(
        sha256=sha256_hex(data),
        bytes=len(data),
        producer_name=proto.producer_name,
        producer_version=proto.producer_version,
        ir_version=int(proto.ir_version),
        opset={(o.domain or "ai.onnx"): int(o.version) for o in proto.opset_import},
        graph_name=proto.graph.name,
        doc_string=proto.doc_string,
        metadata_props={p.key: p.value for p in proto.metadata_props},
        inputs=inputs,
        outputs=outputs,
    )


def visible_gpu_count(env: Mapping[str, str] | None = None) -> int:
    """How many NVIDIA GPUs this process may use, without initialising CUDA."""
    env = os.environ if env is None else env
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [v for v in visible.split(",") if v.strip() and not v.strip().startswith("-")]
        return len(ids)
    try:
        return len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return 0


def pick_gpu(device: str, worker_index: int, env: Mapping[str, str] | None = None) -> int | None:
    """The CUDA device id a worker should use, or ``None`` for CPU.

    ``cuda:N`` is explicit. Otherwise a worker whose ``CUDA_VISIBLE_DEVICES`` was
    set for it (dask-cuda's convention, and our local cluster's) owns device 0;
    without it, worker *i* takes GPU *i mod n*.
    """
    if device == "cpu":
        return None
    n = visible_gpu_count(env)
    if device.startswith("cuda:"):
        return int(device.split(":", 1)[1])
    if n == 0:
        return 0 if device == "cuda" else None
    env = os.environ if env is None else env
    if env.get("CUDA_VISIBLE_DEVICES"):
        return 0
    return worker_index % n


def _strip_zipmap(data: bytes) -> tuple[bytes, dict[str, tuple[str, tuple[int | str, ...]]]]:
    """Remove ZipMap nodes that only feed graph outputs; map each output to its tensor and labels."""
    _load_onnx()
    proto = onnx.load_model_from_string(data)
    graph = proto.graph
    output_names = [o.name for o in graph.output]
    consumed = {i for node in graph.node for i in node.input}
    mapping: dict[str, tuple[str, tuple[int | str, ...]]] = {}
    for node in list(graph.node):
        if node.op_type != "ZipMap" or node.output[0] not in output_names or node.output[0] in consumed:
            continue
        if node.input[0] in output_names:
            continue
        attrs = {a.name: a for a in node.attribute}
        if "classlabels_int64s" in attrs:
            labels: tuple[int | str, ...] = tuple(int(v) for v in attrs["classlabels_int64s"].ints)
        elif "classlabels_strings" in attrs:
            labels = tuple(v.decode("utf-8") for v in attrs["classlabels_strings"].strings)
        else:
            continue
        position = output_names.index(node.output[0])
        graph.node.remove(node)
        del graph.output[position]
        graph.output.insert(position, onnx.helper.make_tensor_value_info(node.input[0], onnx.TensorProto.FLOAT, None))
        output_names[position] = node.input[0]
        mapping[node.output[0]] = (node.input[0], labels)
    if not mapping:
        return data, {}
    return proto.SerializeToString(), mapping


@dataclasses.dataclass
class LoadedModel:
    """An ORT session plus the facts the manifest needs about where it runs."""

    session: ort.InferenceSession
    provider: str
    device: str
    gpu_id: int | None
    intra_op_threads: int
    fallback_reason: str | None
    #: The model's declared output names, in order (what columns are named after).
    output_names: list[str]
    #: Output name -> (tensor fetched instead, class labels) for stripped ZipMaps.
    zipmaps: dict[str, tuple[str, tuple[int | str, ...]]] = dataclasses.field(default_factory=dict)
    #: Rows per session.run when a batch is larger (``--batch-size auto``: from :func:`probe_batch`);
    #: None runs each batch whole.
    infer_rows: int | None = None
    #: provider -> operator -> nodes, from the profile of the first run (:meth:`node_placement`).
    placement: dict[str, dict[str, int]] | None = None
    #: A GPU session's IO binding (inputs copied to the device ahead of the run); None on the CPU.
    binder: Binder | None = None

    @property
    def fetch(self) -> list[str]:
        return [self.zipmaps[n][0] if n in self.zipmaps else n for n in self.output_names]

    @property
    def io_binding(self) -> str | None:
        """For the manifest: where a bound session's inputs are staged (pinned or pageable), or None."""
        return None if self.binder is None else self.binder.host_memory

    def prepare(self, feeds: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray] | DeviceFeeds:
        """The feeds as :meth:`run` takes them fastest: on a bound (GPU) session, already on the
        device. A task calls this on its reader thread, so the copy overlaps the previous batch's run."""
        return feeds if self.binder is None else self.binder.upload(feeds, self.infer_rows)

    def release_arena(self, feeds: Mapping[str, np.ndarray]) -> None:
        """One run on ``feeds`` that hands back what ORT's memory arenas hold beyond that run's needs.

        Why: the arenas keep their high-water mark for the session's life. The batch-size probe's
        largest runs (up to 65,536 rows) left 440 MiB in the arena of the MLP 32-512-512-1, which then
        ran in pieces of 4,096 rows needing 40 MiB; this run gave it back (495 -> 95 MiB RSS)."""
        _load_ort()
        opts = ort.RunOptions()
        arenas = "cpu:0" if self.gpu_id is None else f"cpu:0;gpu:{self.gpu_id}"
        opts.add_run_config_entry("memory.enable_memory_arena_shrinkage", arenas)
        self.session.run(None, dict(feeds), opts)

    def node_placement(self) -> dict[str, dict[str, int]]:
        """Which provider ran each graph node in the run(s) so far, read from ORT's profile; ends the
        profiling, so later runs cost nothing. A GPU session runs what has no GPU kernel (tree
        ensembles, most ONNX-ML operators) on the CPU provider beside it: this is how we know."""
        if self.placement is None:
            path = self.session.end_profiling()
            self.placement = tuning.parse_placement(path)
        return self.placement

    def close(self) -> None:
        """End the session's profiling (and remove its profile folder) if no run did: a session
        dropped before its first run would otherwise leave the folder in the temp directory. Unpins
        a bound session's host memory."""
        self.node_placement()
        if self.binder is not None:
            self.binder.close()

    def run(self, feeds: Mapping[str, np.ndarray] | DeviceFeeds) -> dict[str, Any]:
        """The model's outputs for every row of ``feeds`` (numpy arrays, or :meth:`prepare`'s result)."""
        if self.binder is not None:
            on_device = feeds if isinstance(feeds, DeviceFeeds) else self.binder.upload(feeds, self.infer_rows)
            values = self.binder.run(on_device)
        else:  # I/O batches stay large (cheap per row to decode and encode); ORT gets its fastest size
            assert not isinstance(feeds, DeviceFeeds), "device feeds need a bound session"
            fetch = self.fetch
            values = joined([self.session.run(fetch, piece) for piece in row_pieces(feeds, self.infer_rows)])
        if self.placement is None:  # the first run was profiled; read it and stop profiling
            self.node_placement()
        out: dict[str, Any] = {}
        for name, value in zip(self.output_names, values, strict=True):
            if name in self.zipmaps:
                out[name] = LabeledProbabilities(value, self.zipmaps[name][1])
            else:
                out[name] = value
        return out


_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*")
_ORT_LOCATION = re.compile(r"\S+\.(?:cc|h|cpp|hpp):\d+\s+")


def ort_reason(exc: BaseException) -> str:
    """ONNX Runtime's error text without its status prefix, source location and C++ signature:
    what a user can act on (``Unsupported model IR version: 11, max supported IR version: 10``)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = _ORT_PREFIX.sub("", text)
    m = _ORT_LOCATION.search(text)
    if m is None:
        return text
    rest = text[m.end():]
    depth, cut = 0, 0
    for i, ch in enumerate(rest):  # skip "ns::Fn(args, with<nested(parens)>) " up to the closing paren
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                cut = i + 1
                break
    rest = rest[cut:].lstrip()
    if rest.startswith("const "):
        rest = rest[len("const "):]
    return (text[: m.start()] + rest).strip() or text


def check_runnable(info: ModelInfo, data: bytes) -> None:
    """What would otherwise fail on every worker, found once on the client before anything is written:
    a fixed batch dimension, a scalar output, an IR or opset this onnxruntime cannot load."""
    _load_ort()
    for t in info.inputs:
        if t.shape and isinstance(t.shape[0], int):
            raise ModelError(
                f"model input {t.name!r} has a fixed batch dimension of {t.shape[0]} (shape {list(t.shape)}); "
                "batchserve scores many rows per call: re-export the model with a dynamic first axis "
                "(e.g. skl2onnx initial_types with None as the first dimension)"
            )
    for t in info.outputs:
        if t.shape is not None and len(t.shape) == 0:
            raise ModelError(f"model output {t.name!r} is a scalar; batchserve needs one value per input row")
    ort.set_default_logger_severity(3)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own Fail/InvalidGraph types
        raise ModelError(f"onnxruntime {ort.__version__} cannot load the model: {ort_reason(exc)}") from None


def _session(data: bytes, providers: list[Any], threads: int) -> ort.InferenceSession:
    """A session whose first run is profiled (ORT's profile says which provider ran each node,
    :meth:`LoadedModel.node_placement`), and no other run."""
    _load_ort()
    # ORT's own warnings (e.g. skl2onnx's declared [1] label shape) would flood cron logs.
    ort.set_default_logger_severity(3)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, threads)
    opts.inter_op_num_threads = 1
    # No spinning: ORT's idle threads busy-wait for the next run by default, taking the cores the
    # task's reader and writer threads decode and encode Parquet on. Measured end to end on 2 cores
    # (2M rows, make bench data): LightGBM 10.6 -> 9.8 s, MLP 10.4 -> 10.05 s, logreg 3.31 -> 3.13 s.
    # Intra-op threads stay at the worker's share of the cores: one thread instead of two was 35%
    # slower for both LightGBM and the MLP.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only: a failed CUDA load is reported by us, once
    import tempfile

    opts.enable_profiling = True
    opts.profile_file_prefix = os.path.join(tempfile.mkdtemp(prefix="batchserve-ort-"), "placement")
    try:
        return ort.InferenceSession(data, sess_options=opts, providers=providers)
    except Exception as exc:  # noqa: BLE001 - ORT raises its own Fail/InvalidGraph types
        raise ModelError(f"onnxruntime cannot load the model: {ort_reason(exc)}") from None


def bind(loaded: LoadedModel, device_type: str, device_id: int) -> Binder | None:
    """IO binding for a session on ``device_type`` (see :mod:`batchserve.binding`), or None for a
    model with a string input (it cannot live on a GPU)."""
    if not Binder.can_bind(loaded.session):
        return None
    pool = PinnedPool(cuda_runtime() if device_type == "cuda" else None)
    return Binder(loaded.session, device_type, device_id, loaded.fetch, pool)


def build_session(
    data: bytes, *, device: str, intra_op_threads: int, gpu_id: int | None, precision: str = "fp32",
    trt_cache: str | None = None,
) -> LoadedModel:
    """One session for this process, honouring the device policy (and on a GPU, the precision and
    the TensorRT engine cache)."""
    _load_ort()
    declared = [o.name for o in describe(data).outputs]
    data, zipmaps = _strip_zipmap(data)
    cpu = ["CPUExecutionProvider"]
    wants_cuda = device != "cpu" and gpu_id is not None
    fallback: str | None = None
    if device != "cpu" and gpu_id is None:
        fallback = "no GPU visible to this worker"
    if device.startswith("cuda") and visible_gpu_count() == 0:
        # Checked before ORT tries (and logs) a doomed CUDA provider load.
        raise DeviceError(
            f"--device {device} requested but no GPU is visible to this worker "
            "(no NVIDIA driver, or CUDA_VISIBLE_DEVICES hides them); use --device cpu or auto"
        )
    if wants_cuda:
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            reason = "this onnxruntime build has no CUDAExecutionProvider (install onnxruntime-gpu)"
            if device.startswith("cuda"):
                raise DeviceError(f"--device {device} requested but {reason}")
            fallback = reason
        else:
            assert gpu_id is not None  # wants_cuda
            providers = tuning.gpu_providers(gpu_id, precision=precision, trt_cache=trt_cache,
                                      available=ort.get_available_providers())
            gpu_data = tuning.to_fp16(data) if precision == "fp16" and trt_cache is None else data
            sess = _session(gpu_data, providers, intra_op_threads)
            if sess.get_providers()[0] == "CUDAExecutionProvider":
                loaded = LoadedModel(
                    sess, "CUDAExecutionProvider", f"cuda:{gpu_id}", gpu_id, intra_op_threads, None,
                    declared, zipmaps,
                )
                loaded.binder = bind(loaded, "cuda", gpu_id)
                return loaded
            tuning.parse_placement(sess.end_profiling())  # the discarded session's profile folder goes too
            reason = "the CUDA provider failed to load (CUDA/cuDNN libraries missing or no GPU)"
            if device.startswith("cuda"):
                raise DeviceError(f"--device {device} requested but {reason}; use --device cpu or auto")
            fallback = reason
    sess = _session(data, cpu, intra_op_threads)
    return LoadedModel(
        sess, "CPUExecutionProvider", "cpu", None, intra_op_threads, fallback, declared, zipmaps,
    )
