"""Where tasks run: a local cluster we start (one worker per GPU, each seeing its own GPU first),
an existing one with ``--scheduler``, or, for a small job on a CPU machine (or many small files on
up to 2 cores), threads of this process (``inprocess``, no Dask imported); and the model installed
on every worker as a plugin.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from batchserve import manifest, model, scoring, tuning
from batchserve.config import ScoreConfig
from batchserve.errors import ClusterError
from batchserve.pipeline import inprocess
from batchserve.pipeline.plan import RunPlan
from batchserve.worker import ModelSpec, WorkerModel, worker_report

if TYPE_CHECKING:
    from distributed import Client

    #: A Dask client, or the in-process engine's stand-in for one.
    TaskClient = Client | inprocess.InProcessClient

__all__ = ["default_workers", "gpu_env", "attach", "install_model", "install_challenger", "worker_count",
           "as_completed", "workers_died"]

log = logging.getLogger("batchserve")


def default_workers() -> int:
    """One worker per GPU; on CPU, a worker per 4 cores this process may use (ORT threads do the rest;
    the affinity, not the host's count: a container limited to 4 of 64 cores gets one worker, not 16)."""
    gpus = model.visible_gpu_count()
    if gpus:
        return gpus
    return max(1, tuning.available_cores() // 4)


def gpu_env(i: int) -> dict[str, str]:
    """Rotate the visible GPUs so worker i sees its own first (dask-cuda's convention)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = (
        [v.strip() for v in visible.split(",") if v.strip()]
        if visible is not None
        else [str(g) for g in range(model.visible_gpu_count())]
    )
    if not ids:
        return {}
    k = i % len(ids)
    return {"CUDA_VISIBLE_DEVICES": ",".join(ids[k:] + ids[:k])}


#: Up to this many rows, and with one CPU worker, the run uses a thread of this process and no Dask
#: (pipeline/inprocess.py): a worker process costs ~0.4 s to start and ~0.1 s to stop, plus its own
#: imports and session (~0.5 s), and Dask's import ~0.3 s, which is most of a small job's time (make
#: bench, "startup"). Larger jobs keep worker processes (memory isolation, the nanny's restarts).
THREADS_MAX_ROWS = 2_000_000
#: One task at a time in the threads engine: two ran 2,000 small files 8% faster and one large file
#: 31% slower (ORT then gets half the cores per task); measured on 2 cores.
THREADS_TASKS = 1


def _has_dask_cuda() -> bool:
    import importlib.util

    return importlib.util.find_spec("dask_cuda") is not None


#: From this many files of at most SMALL_FILE_ROWS rows on average, a CPU run without --workers runs
#: a task per core (at most SMALL_FILES_WORKERS_MAX, each with one ORT thread). On up to
#: SMALL_FILES_THREADS_MAX_CORES cores they are threads of this process, beyond that worker processes:
#: a small file takes ~5.3 ms of CPU, ~2 ms of it holding the GIL (py-spy --gil, 2,000 files of 500
#: rows), so threads can keep at most ~2.6 cores busy. Measured on 2 cores (make bench, small files):
#: 8.1 to 8.4 s on two threads against 8.8 to 9.0 s on two processes, which also start (0.8 s) and
#: hand every task through Dask's scheduler. (Before per-file costs were cut, ~5.5 ms of it under the
#: GIL, one thread took 15.0 s and two processes 10.0 s.)
SMALL_FILES_MIN = 512
SMALL_FILE_ROWS = 16_384
SMALL_FILES_WORKERS_MAX = 8
SMALL_FILES_THREADS_MAX_CORES = 2


def engine_for(cfg: ScoreConfig, rows: int, *, files: int = 0, gpus: int | None = None,
               dask_cuda: bool | None = None) -> str:
    """Which engine runs the tasks: ``scheduler`` (--scheduler); with GPUs, ``local-cuda`` (dask-cuda's
    LocalCUDACluster, one worker per GPU, when dask-cuda is installed) or ``local`` (our own worker
    per GPU, CUDA_VISIBLE_DEVICES rotated); on CPU without --workers and up to THREADS_MAX_ROWS,
    ``local-threads`` for a job of one worker or many small files on up to 2 cores, else ``local``
    worker processes (see :func:`local_workers`)."""
    if cfg.scheduler:
        return "scheduler"
    gpus = model.visible_gpu_count() if gpus is None else gpus
    if cfg.device != "cpu" and gpus > 0:
        # each GPU worker needs its own CUDA_VISIBLE_DEVICES: a process, preferably dask-cuda's
        return "local-cuda" if (_has_dask_cuda() if dask_cuda is None else dask_cuda) else "local"
    small_files = _many_small_files(rows, files)
    if cfg.workers is not None or rows > THREADS_MAX_ROWS:
        return "local"
    if small_files:
        return "local-threads" if tuning.available_cores() <= SMALL_FILES_THREADS_MAX_CORES else "local"
    return "local-threads" if default_workers() == 1 else "local"


def _many_small_files(rows: int, files: int) -> bool:
    return files >= SMALL_FILES_MIN and rows <= files * SMALL_FILE_ROWS and tuning.available_cores() > 1


def tasks_in_process(rows: int, files: int) -> int:
    """Task threads of the in-process engine: one per core for many small files (their ORT sessions
    get a thread each), else THREADS_TASKS (a large file's ORT gets every core)."""
    return min(tuning.available_cores(), SMALL_FILES_WORKERS_MAX) if _many_small_files(rows, files) else THREADS_TASKS


def local_workers(cfg: ScoreConfig, rows: int, files: int, *, gpus: int | None = None) -> int:
    """How many workers a local cluster starts: --workers; one per GPU; a process per core (capped) for
    many small files on CPU; else :func:`default_workers`."""
    if cfg.workers:
        return cfg.workers
    gpus = model.visible_gpu_count() if gpus is None else gpus
    if (cfg.device == "cpu" or gpus == 0) and _many_small_files(rows, files):
        return min(tuning.available_cores(), SMALL_FILES_WORKERS_MAX)
    return default_workers()


@contextmanager
def attach(cfg: ScoreConfig, rows: int, files: int) -> Iterator[tuple[TaskClient, str, str]]:
    if cfg.scheduler:
        from distributed import Client

        try:
            client = Client(cfg.scheduler, timeout="15s")
        except (OSError, TimeoutError, ValueError, TypeError) as exc:
            raise ClusterError(
                f"cannot reach the Dask scheduler: {exc}; check --scheduler and that the scheduler is up",
                path=cfg.scheduler,
            ) from None
        try:
            try:
                client.wait_for_workers(1, timeout=60)
            except TimeoutError:
                raise ClusterError("the Dask cluster has no workers", path=cfg.scheduler) from None
            yield client, "scheduler", cfg.scheduler
        finally:
            client.close()
        return
    engine = engine_for(cfg, rows, files=files)
    if engine == "local-threads":
        local = inprocess.InProcessClient(tasks_in_process(rows, files))
        try:
            yield local, engine, local.worker.address
        finally:
            local.close()
        return
    from distributed import Client

    n = local_workers(cfg, rows, files)
    # Worker-side logs would repeat, with tracebacks, errors we report once ourselves;
    # --debug (DEBUG on our logger) lets them through.
    quiet = logging.WARNING if log.isEnabledFor(logging.DEBUG) else logging.CRITICAL
    cluster = _local_cluster(engine, n, quiet)
    try:
        client = Client(cluster)
        try:
            client.wait_for_workers(n, timeout=120)
            yield client, engine, str(cluster.scheduler_address)
        finally:
            client.close()
    finally:
        cluster.close()


def as_completed(client: TaskClient, futures: list[Any]) -> Iterator[Any]:
    """The futures as they finish, whichever engine runs them."""
    if isinstance(client, inprocess.InProcessClient):
        return inprocess.as_completed(futures)
    from distributed import as_completed as dask_as_completed

    return iter(dask_as_completed(futures))


def workers_died(exc: BaseException) -> bool:
    """Whether Dask gave up on a task because it kept killing the workers that ran it."""
    distributed = sys.modules.get("distributed")  # not loaded: no Dask cluster ran the task
    return distributed is not None and isinstance(exc, distributed.KilledWorker)


def _local_cluster(engine: str, n: int, quiet: int) -> Any:
    """The cluster an engine runs on, with n workers, started on 127.0.0.1.

    ``local-cuda`` is dask-cuda's LocalCUDACluster: one worker process per GPU, each pinned to its own
    device (it sets CUDA_VISIBLE_DEVICES and CPU affinity per worker), as `dask cuda worker` does on
    remote nodes. ``local`` is worker processes under nannies, each GPU worker with its own rotated
    CUDA_VISIBLE_DEVICES.
    """
    if engine == "local-cuda":
        from dask_cuda import LocalCUDACluster

        return LocalCUDACluster(n_workers=n, threads_per_worker=1, host="127.0.0.1", dashboard_address=None,
                                silence_logs=quiet, preload=["batchserve.worker.no_sigint"])
    from distributed import Nanny, Scheduler, SpecCluster

    workers = {
        i: {"cls": Nanny, "options": {"nthreads": 1, "host": "127.0.0.1", "env": gpu_env(i), "name": i,
                                   "silence_logs": quiet, "preload": ["batchserve.worker.no_sigint"]}}
        for i in range(n)
    }
    return SpecCluster(
        scheduler={"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard": False,
                                                  "dashboard_address": "127.0.0.1:0"}},
        workers=workers,
        silence_logs=quiet,
        name="batchserve-local",
    )


def install_model(
    client: TaskClient, cfg: ScoreConfig, plan: RunPlan
) -> tuple[ModelSpec, list[manifest.WorkerInfo], int]:
    """Register the model plugin on every worker (a no-op for one that has it) and read back what each
    really runs on: the spec tasks refer to, the per-worker facts for the manifest, the worker count."""
    return _install(client, cfg, plan, plan.model_url, plan.info.sha256, plan.features)


def probe_limit(cfg: ScoreConfig, rows: int, largest_file: int | None = None) -> int | None:
    """The largest inference batch ``--batch-size auto`` may probe, or None for no probe.

    The probe costs about two runs of its largest size and saves at most a part of inference, so
    it only runs where the run is at least 100 times that size, in powers of two up to the I/O batch
    (a 100k-row job is not probed at all; 2M rows probe up to 16,384). No batch is larger than the
    largest file, so files under 1,024 rows are never probed: 2,000 files of 500 rows spent 0.28 s
    of each worker's start on a probe whose answer no batch could use.
    """
    if not cfg.batch_auto:
        return None
    most = min(cfg.batch_size, rows // 100, rows if largest_file is None else largest_file)
    if most < 1024:
        return None
    return 1 << (most.bit_length() - 1)


def install_challenger(client: TaskClient, cfg: ScoreConfig, plan: RunPlan) -> ModelSpec:
    """The challenger's session beside the champion's on every worker (its own plugin name)."""
    assert plan.challenger is not None
    ch = plan.challenger
    return _install(client, cfg, plan, ch.model_url, ch.info.sha256, ch.features)[0]


def _install(
    client: TaskClient, cfg: ScoreConfig, plan: RunPlan, url: str, sha256: str, features: scoring.FeaturePlan
) -> tuple[ModelSpec, list[manifest.WorkerInfo], int]:
    workers_info = client.scheduler_info(n_workers=-1)["workers"]
    hosts: dict[str, list[str]] = {}
    for addr, w in sorted(workers_info.items()):
        hosts.setdefault(w.get("host", addr), []).append(addr)
    spec = ModelSpec(
        url=url, sha256=sha256, device=cfg.device, plan=features, prefix=cfg.prefix,
        storage_options=cfg.storage_options,
        workers_per_host=tuple((h, len(a)) for h, a in hosts.items()),
        worker_slots=tuple((a, i) for addrs in hosts.values() for i, a in enumerate(addrs)),
        probe_up_to=probe_limit(cfg, plan.rows, plan.largest_file), precision=cfg.precision, trt_cache=cfg.trt_cache,
    )
    if isinstance(client, inprocess.InProcessClient):
        client.register_plugin(WorkerModel(spec), name=spec.plugin_name)
    else:
        from batchserve.worker.dask_plugin import ModelPlugin

        client.register_plugin(ModelPlugin(spec), name=spec.plugin_name)
    reports = client.run(worker_report, spec.plugin_name)
    per_worker = [manifest.WorkerInfo(**r) for _, r in sorted(reports.items())]
    for w in per_worker:
        if w.fallback_reason:  # expected under --device auto on CPU machines: info, not a warning
            log.info("worker %s runs on CPU: %s", w.address, w.fallback_reason)
    warnings = {tuning.placement_warning(w.node_placement or {}, w.provider) for w in per_worker} - {None}
    for text in sorted(w for w in warnings if w):  # once per distinct placement, not once per worker
        log.warning("%s", text, extra={"fields": {"event": "placement"}})
    return spec, per_worker, len(workers_info)


def worker_count(client: TaskClient) -> int:
    return len(client.scheduler_info(n_workers=-1)["workers"])
