"""How a session runs best on this machine, decided from measurements and ORT's own reports:
the inference batch size (a short timed probe), which provider ran each graph node (ORT's profile),
and a GPU session's providers and precision. Pure decisions, testable without a GPU; ``model``
builds the sessions with them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from batchserve.errors import DeviceError, ModelError

__all__ = ["parse_placement", "placement_warning", "probe_batch", "choose_batch", "infer_rows", "gpu_providers",
           "to_fp16", "PROBE_SIZES", "available_cores"]


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity: a container's or a batch system's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


def parse_placement(path: str) -> dict[str, dict[str, int]]:
    """provider -> operator type -> distinct nodes, from an ORT profile file (removed afterwards)."""
    import json
    import shutil

    try:
        with open(path, encoding="utf-8") as fh:
            events = json.load(fh)
    except (OSError, ValueError):
        return {}
    finally:
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)
    seen: dict[str, tuple[str, str]] = {}
    for e in events if isinstance(events, list) else []:
        args = e.get("args") or {}
        if e.get("cat") == "Node" and "provider" in args:
            seen[str(args.get("node_index", e.get("name")))] = (str(args["provider"]), str(args.get("op_name", "?")))
    out: dict[str, dict[str, int]] = {}
    for provider, op in seen.values():
        out.setdefault(provider, {}).setdefault(op, 0)
        out[provider][op] += 1
    return out


def placement_warning(placement: Mapping[str, Mapping[str, int]], provider: str) -> str | None:
    """A warning when a GPU session runs most of its nodes on the CPU (a tree ensemble, say): the
    GPU then mostly waits, and a CPU worker would do as well."""
    if provider == "CPUExecutionProvider" or not placement:
        return None
    total = sum(sum(ops.values()) for ops in placement.values())
    on_cpu = placement.get("CPUExecutionProvider", {})
    n_cpu = sum(on_cpu.values())
    if total == 0 or n_cpu * 2 <= total:
        return None
    ops = ", ".join(f"{op} x{n}" for op, n in sorted(on_cpu.items()))
    return (f"{provider} runs only {total - n_cpu} of {total} graph nodes; {n_cpu} run on the CPU ({ops}): "
            "onnxruntime has no GPU kernels for them, so this GPU mostly waits; --device cpu frees it")


#: Inference batch sizes the probe tries, smallest first.
PROBE_SIZES = (1024, 2048, 4096, 8192, 16384, 32768, 65536)
#: The probe stops growing the batch once one run takes this long (it stays well under a second).
PROBE_RUN_LIMIT_S = 0.1
#: The probe stops once a size runs this fraction of the best rows/s or less.
PROBE_PAST_PEAK = 0.8


def probe_batch(loaded: Any, make_feeds: Callable[[int], dict[str, np.ndarray]], most: int,
                clock: Callable[[], float] = time.perf_counter) -> tuple[int | None, dict[int, float]]:
    """Time the model's run at growing batch sizes (up to ``most`` rows) on synthetic rows of the model's
    input types; returns the rows per run to use (:func:`infer_rows`; None runs batches whole) and the
    rows/s per size tried.

    Why: ORT's speed per row changes 1.7x with batch size on the same CPU (an MLP 32-512-512-1 ran
    462k rows/s at 4,096 rows and 277k at 65,536, 2 cores; LightGBM is flat), and the best size
    differs between models and machines. The largest size within 10% of the best wins: fewer,
    larger runs cost less around them.
    """
    rates: dict[int, float] = {}
    for size in [s for s in PROBE_SIZES if s <= most] or [most]:
        # On a GPU the inputs go to the device first, as a task's reader thread sends them: the probe
        # times the run on the device, not the copy that the pipeline overlaps with it.
        feeds = loaded.prepare(make_feeds(size))
        loaded.run(feeds)  # warm: allocations, kernels
        t0 = clock()
        runs = 0
        while runs < 3 and (runs == 0 or clock() - t0 < 0.03):
            loaded.run(feeds)
            runs += 1
        took = max(clock() - t0, 1e-9)
        rates[size] = size * runs / took
        # Past the peak (rows/s 20% below the best so far) larger sizes only fall further, and
        # probing them grows ORT's arena for nothing: the MLP stops at 16,384 instead of 65,536.
        if took / runs > PROBE_RUN_LIMIT_S or rates[size] < PROBE_PAST_PEAK * max(rates.values()):
            break
    chosen = infer_rows(rates)
    # The largest runs grew ORT's arena to their size; give back what runs of the chosen size do not use.
    loaded.release_arena(make_feeds(chosen or max(rates)))
    return chosen, rates


def infer_rows(rates: Mapping[int, float]) -> int | None:
    """Rows per session.run for larger batches, from the probe's rows/s per size; None runs every
    batch whole.

    Sizes above the largest probed are unknown. Where rows/s was still at its peak at the largest
    size, a larger batch is taken to be no slower: batches run whole. Where it had fallen from its
    peak, the curve is past its best and keeps falling (the MLP 32-512-512-1 on 2 cores: 431k rows/s
    at 2,048, 388k at 8,192, 277k at 65,536), so batches run in pieces of the chosen size even when
    that is the largest tried. The old rule ran them whole whenever the largest size was within 10%
    of the peak, and flipped between runs with the probe's noise: one 1M-row file took 4.8 s whole
    and 3.5 to 3.9 s in pieces of 4,096.
    """
    largest = max(rates)
    if rates[largest] >= max(rates.values()):
        return None
    return choose_batch(rates)


def choose_batch(rates: Mapping[int, float]) -> int:
    """The largest batch size within 10% of the fastest rows/s: the run around each session.run
    (slicing, a concatenate, Python) is cheaper per row with fewer, larger runs."""
    top = max(rates.values())
    return max(s for s, r in rates.items() if r >= 0.90 * top)




def gpu_providers(gpu_id: int, *, precision: str = "fp32", trt_cache: str | None = None,
                  available: Sequence[str] = ()) -> list[Any]:
    """The provider list of a GPU session, CPU last (it runs what the GPU providers cannot).

    With ``trt_cache``, TensorRT first: its engines are built once per model, shape and GPU and cached
    in that folder, which must survive runs (a first run builds for minutes, later ones load in
    seconds). ``fp16`` is TensorRT's own fp16 mode there; on the CUDA provider the weights are
    converted instead (:func:`to_fp16`). Inputs and outputs keep their types either way.
    """
    cuda: tuple[str, dict[str, Any]] = ("CUDAExecutionProvider", {"device_id": gpu_id})
    if trt_cache is None:
        return [cuda, "CPUExecutionProvider"]
    if "TensorrtExecutionProvider" not in available:
        raise DeviceError("--trt-cache needs onnxruntime's TensorrtExecutionProvider (an onnxruntime-gpu build "
                          "with TensorRT, and TensorRT's libraries); drop --trt-cache to use the CUDA provider")
    trt = ("TensorrtExecutionProvider", {
        "device_id": gpu_id, "trt_engine_cache_enable": True, "trt_engine_cache_path": trt_cache,
        "trt_fp16_enable": precision == "fp16", "trt_timing_cache_enable": True,
        "trt_timing_cache_path": trt_cache,
    })
    return [trt, cuda, "CPUExecutionProvider"]


def to_fp16(data: bytes) -> bytes:
    """The model with float16 weights and arithmetic, float32 inputs and outputs kept (casts at the edges),
    for the CUDA provider's tensor cores. Needs onnxconverter-common (``pip install 'batchserve[gpu]'``)."""
    import onnx

    try:
        from onnxconverter_common import float16
    except ImportError:
        raise ModelError("--precision fp16 needs onnxconverter-common: pip install 'batchserve[gpu]'") from None
    proto = onnx.load_model_from_string(data)
    converted = float16.convert_float_to_float16(proto, keep_io_types=True, disable_shape_infer=True)
    return bytes(converted.SerializeToString())
