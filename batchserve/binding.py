"""Inputs on the device before the run: IO binding for a GPU session.

Why: ``session.run`` with numpy feeds copies each input to the GPU inside the run, from pageable
memory, on the inference thread: the GPU idles during the copy and the copy waits for the GPU. Here
the task's reader thread builds a batch's features, stages them in page-locked (pinned) host memory
and copies them to the device (:meth:`Binder.upload`) while the inference thread runs the batch
before; the run then reads device memory only (:meth:`Binder.run`), and its numeric outputs come back
through ORT's IO binding, allocated by ORT at their final size.

Pinned memory comes from the CUDA runtime the CUDA provider has already loaded into the process
(``cudaHostAlloc``, through ctypes: no CUDA Python package to install). Where that library cannot be
found, inputs are copied from ordinary memory, still on the reader thread; the manifest says which
(``engine.per_worker[].io_binding``). A CPU session uses none of this: there is no copy to hide.

Only :mod:`batchserve.model` and this module import onnxruntime (here, once a session exists).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["Binder", "DeviceFeeds", "PinnedPool", "cuda_runtime", "joined", "row_pieces"]

#: Sonames of the CUDA runtime, newest first; the one onnxruntime-gpu loaded answers first.
CUDART_NAMES = ("libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0", "libcudart.so")

_NUMERIC = ("tensor(float)", "tensor(double)", "tensor(float16)", "tensor(int8)", "tensor(int16)",
            "tensor(int32)", "tensor(int64)", "tensor(uint8)", "tensor(uint16)", "tensor(uint32)",
            "tensor(uint64)", "tensor(bool)")


def _loaded_cudart() -> list[str]:
    """Paths of CUDA runtimes already mapped into this process (the one the CUDA provider linked)."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            return sorted({line.split()[-1] for line in maps if "libcudart.so" in line and "/" in line})
    except OSError:  # not Linux: try the sonames alone
        return []


@functools.lru_cache(maxsize=1)
def cuda_runtime() -> ctypes.CDLL | None:
    """The CUDA runtime library, or None where there is none (a CPU machine, a build without CUDA).
    The copy the CUDA provider already loaded comes first, so the blocks are pinned by its runtime."""
    for name in [*_loaded_cudart(), *CUDART_NAMES]:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        if hasattr(lib, "cudaHostAlloc") and hasattr(lib, "cudaFreeHost"):
            lib.cudaHostAlloc.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_uint]
            lib.cudaFreeHost.argtypes = [ctypes.c_void_p]
            return lib
    return None


class PinnedPool:
    """Page-locked host blocks, kept and handed out again: pinning is slow (the driver locks and maps
    every page), so it is done once per block, and each concurrent upload borrows one and returns it.

    ``runtime`` None (no CUDA runtime) lends ordinary numpy memory: the same code, tested on CPU."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime
        self._free: list[np.ndarray] = []
        self._pointers: list[int] = []
        self._lock = threading.Lock()
        #: Why pinning failed, once it has: later blocks are ordinary memory.
        self.refused: str | None = None

    @property
    def pinned(self) -> bool:
        return self.runtime is not None and self.refused is None

    def _allocate(self, nbytes: int) -> np.ndarray:
        if self.runtime is None:
            return np.empty(nbytes, dtype=np.uint8)
        ptr = ctypes.c_void_p()
        status = self.runtime.cudaHostAlloc(ctypes.byref(ptr), ctypes.c_size_t(nbytes), 0)
        if status != 0 or not ptr.value:
            # Pinning can be refused (a container's locked-memory limit): the run goes on with
            # ordinary memory, slower to copy from, and the manifest says "pageable".
            self.refused = f"cudaHostAlloc of {nbytes} bytes failed (CUDA error {status})"
            return np.empty(nbytes, dtype=np.uint8)
        self._pointers.append(ptr.value)
        return np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(ptr.value))

    @contextlib.contextmanager
    def block(self, nbytes: int) -> Iterator[np.ndarray]:
        """A host block of at least ``nbytes``, this caller's until the ``with`` ends."""
        with self._lock:
            fits = [i for i, b in enumerate(self._free) if b.nbytes >= nbytes]
            if fits:
                buf = self._free.pop(min(fits, key=lambda i: self._free[i].nbytes))
            else:
                buf = self._allocate(max(nbytes, 1))
        try:
            yield buf
        finally:
            with self._lock:
                self._free.append(buf)

    def close(self) -> None:
        """Unpin every block (after the session's last upload)."""
        with self._lock:
            self._free.clear()
            pointers, self._pointers = self._pointers, []
        for ptr in pointers:
            self.runtime.cudaFreeHost(ctypes.c_void_p(ptr))


def row_pieces(feeds: Mapping[str, Any], step: int | None) -> list[dict[str, Any]]:
    """``feeds`` cut into pieces of at most ``step`` rows, in order (one piece when ``step`` is None
    or not smaller than the batch): how a batch meets ORT's fastest run size."""
    n = len(next(iter(feeds.values()))) if feeds else 0
    if step is None or n <= step:
        return [dict(feeds)]
    return [{k: v[s : s + step] for k, v in feeds.items()} for s in range(0, n, step)]


def joined(parts: Sequence[Sequence[Any]]) -> list[Any]:
    """The outputs of runs on :func:`row_pieces`, put back together row-wise."""
    if len(parts) == 1:
        return list(parts[0])
    return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]


@dataclasses.dataclass
class DeviceFeeds:
    """A batch's inputs already on the session's device, as the runs will take them: one dict of
    OrtValues per run of at most ``infer_rows`` rows."""

    rows: int
    chunks: list[dict[str, Any]]


class Binder:
    """Uploads feeds to a session's device and runs the session on them.

    Outputs are bound (ORT allocates them once at their final size and copies them back once) when
    every fetched output is a numeric tensor; a string output (a classifier's labels) cannot be bound
    (onnxruntime 1.31 crashes the process copying it back), so such a model keeps ``session.run``,
    with its inputs still on the device.
    """

    def __init__(self, session: Any, device_type: str, device_id: int, fetch: Sequence[str],
                 pool: PinnedPool) -> None:
        self.session = session
        self.device_type = device_type
        self.device_id = device_id
        self.fetch = list(fetch)
        self.pool = pool
        types = {o.name: o.type for o in session.get_outputs()}
        self.bind_outputs = all(types.get(n) in _NUMERIC for n in self.fetch)

    @staticmethod
    def can_bind(session: Any) -> bool:
        """Whether every input can live on a GPU (strings cannot: such a model keeps numpy feeds)."""
        return all(i.type in _NUMERIC for i in session.get_inputs())

    @property
    def host_memory(self) -> str:
        return "pinned" if self.pool.pinned else "pageable"

    def _to_device(self, values: np.ndarray) -> Any:
        import onnxruntime as ort  # bound sessions exist only once model.py has imported it

        values = np.ascontiguousarray(values)
        if not self.pool.pinned:
            return ort.OrtValue.ortvalue_from_numpy(values, self.device_type, self.device_id)
        with self.pool.block(values.nbytes) as buf:
            staged = buf[: values.nbytes].view(values.dtype).reshape(values.shape)
            np.copyto(staged, values)
            # A GPU upload copies, synchronously (onnxruntime's Python binding copies a numpy array to
            # CUDA with cudaMemcpy), so the block is free again when this returns and the next upload
            # reuses it. On the CPU device an OrtValue would share the block's memory instead: it gets
            # its own copy, as a device would.
            if self.device_type == "cpu":
                staged = staged.copy()
            return ort.OrtValue.ortvalue_from_numpy(staged, self.device_type, self.device_id)

    def upload(self, feeds: Mapping[str, np.ndarray], step: int | None = None) -> DeviceFeeds:
        """The feeds on the device, cut into runs of at most ``step`` rows (all rows in one when None)."""
        n = len(next(iter(feeds.values()))) if feeds else 0
        pieces = row_pieces(feeds, step)
        return DeviceFeeds(n, [{k: self._to_device(v) for k, v in piece.items()} for piece in pieces])

    def _run_chunk(self, chunk: Mapping[str, Any]) -> list[Any]:
        if not self.bind_outputs:
            return list(self.session.run(self.fetch, dict(chunk)))
        binding = self.session.io_binding()
        for name, value in chunk.items():
            binding.bind_ortvalue_input(name, value)
        for name in self.fetch:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        return list(binding.copy_outputs_to_cpu())

    def run(self, feeds: DeviceFeeds) -> list[Any]:
        """The fetched outputs for every row of ``feeds``, in order."""
        return joined([self._run_chunk(c) for c in feeds.chunks])

    def close(self) -> None:
        self.pool.close()
