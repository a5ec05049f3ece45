"""One scoring run, start to finish: plan, lock, journal, tasks, stale files, the client's check,
the manifest, and ``_SUCCESS`` last, so a reader that sees ``_SUCCESS`` sees a complete output."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import TYPE_CHECKING

from batchserve import io, manifest
from batchserve.config import ScoreConfig, new_run_id, utc_now
from batchserve.errors import BatchserveError, DataError, DriftError, Interrupted, OutputError
from batchserve.pipeline import ledger
from batchserve.pipeline.output import (
    MANIFEST_NAME,
    SUCCESS_NAME,
    Journal,
    OutputSurvey,
    check_challenger_location,
    check_output,
    check_output_location,
    output_lock,
    remove_stale_outputs,
    stale_outputs,
    verify_outputs,
)
from batchserve.pipeline.plan import absolute_paths, plan_run
from batchserve.pipeline.progress import ProgressEvent
from batchserve.pipeline.record import RunContext, build_manifest, challenger_section, drift_data, drift_failure
from batchserve.pipeline.resume import resume_decisions
from batchserve.pipeline.signals import RESUME_ADVICE, deferred, raise_interrupted

if TYPE_CHECKING:
    from batchserve.pipeline.challenger import ChallengerOutput
    from batchserve.pipeline.submit import Submission

__all__ = ["RunResult", "new_run_id", "score_config"]

log = logging.getLogger("batchserve")


@dataclasses.dataclass(frozen=True)
class RunResult:
    manifest: manifest.Manifest
    output: str
    manifest_url: str


def score_config(
    cfg: ScoreConfig, *, on_progress: Callable[[ProgressEvent], None] | None = None, run_id: str | None = None
) -> RunResult:
    """Score with a resolved config; raises :class:`BatchserveError` on user errors."""
    cfg = absolute_paths(cfg)
    started_at = utc_now()
    t0 = time.perf_counter()
    plan = plan_run(cfg)
    check_output_location(cfg, plan)
    check_challenger_location(cfg, plan)
    run_id = run_id or new_run_id()
    with output_lock(cfg, run_id), ExitStack() as stack:
        survey = check_output(cfg)
        ctx = RunContext(cfg, plan, run_id, started_at, t0)
        if cfg.resume:
            wanted = [p.relpath for p in plan.partitions]
            earlier = ledger.earlier_runs(cfg.output, survey.previous, cfg.storage, wanted)
            kept = resume_decisions(cfg, plan, earlier, survey.stamps)
            carried = ledger.carried_stats(cfg.output, kept.reused, kept.sources, cfg.storage) if cfg.drift else {}
            ctx = dataclasses.replace(ctx, reused=kept.reused, notes=kept.notes, carried=carried)
        shadow = None
        if plan.challenger is not None:
            from batchserve.pipeline.challenger import ChallengerOutput

            shadow = ChallengerOutput(ctx)
            stack.enter_context(shadow.locked())
        result = _score_locked(ctx, survey, on_progress, shadow)
    if cfg.fail_on_drift:  # after _SUCCESS and the lock: the scored data stands, the caller decides
        reason = drift_failure(result.manifest, cfg.max_drift_share)
        if reason:
            raise DriftError(reason, result=result, path=result.manifest_url)
    return result


def _score_locked(ctx: RunContext, survey: OutputSurvey, on_progress: Callable[[ProgressEvent], None] | None,
                  shadow: ChallengerOutput | None = None) -> RunResult:
    cfg, storage = ctx.cfg, ctx.cfg.storage
    _start_changing_output(ctx)
    if shadow is not None:
        shadow.start()
    if on_progress:
        on_progress(ProgressEvent("planned", 0, len(ctx.plan.partitions) - len(ctx.reused), 0, ctx.plan.rows, 0.0))
    # Dask is imported here, once planning passed: an error found before scoring costs no Dask import.
    from batchserve.pipeline.submit import Submission

    sub = Submission(cfg, ctx.plan, ctx.run_id, skip_relpaths=frozenset(e.relpath for e in ctx.reused))
    journal = Journal(io.join_url(cfg.output, MANIFEST_NAME), storage,
                      lambda status: build_manifest(ctx, sub.receipts, sub.failures, sub.engine, status))
    journal.tick(force=True)
    try:
        # --resume is refused with a challenger (both outputs would have to resume as one): never advise it
        advice = ("re-run with --overwrite (--resume is not supported with --challenger yet)"
                  if ctx.plan.challenger is not None else RESUME_ADVICE)
        with raise_interrupted(advice):
            sub.run(with_model=True, t0=ctx.t0, on_receipt=journal.tick, on_progress=on_progress)
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, Interrupted | KeyboardInterrupt) else "failed"
        error = str(exc) if isinstance(exc, BatchserveError) else f"{type(exc).__name__}: {exc}"
        with deferred():
            try:
                if shadow is not None:
                    shadow.fail(sub, status, error)
                final = build_manifest(ctx, sub.receipts, sub.failures, sub.engine, status, error,
                                       challenger=challenger_section(cfg, ctx.plan, sub.receipts))
                journal.write(final)
                ledger.write_record(cfg.output, final, None, storage)
            finally:
                io.remove_staging(cfg.output, storage, ctx.run_id)
        raise
    with deferred():
        result, failure = _finish_run(ctx, sub, survey)
        if shadow is not None:  # the challenger's output is complete before the champion says so
            shadow_result, shadow_failure = shadow.finish(sub)
            failure = failure or shadow_failure
            if shadow_failure is not None and result.run.status == "succeeded":
                result = dataclasses.replace(result, run=dataclasses.replace(result.run, status="failed",
                                                                             error=str(shadow_failure)))
            shadow.commit(shadow_result, complete=failure is None and shadow_result.run.status == "succeeded")
        journal.write(result)
        ledger.write_record(cfg.output, result, ledger.file_stats(sub.receipts, ctx.carried) if cfg.drift else None,
                            storage)
        io.remove_staging(cfg.output, storage)
        if failure is not None:
            raise failure
        io.write_text_atomic(io.join_url(cfg.output, SUCCESS_NAME), "", storage)
    if on_progress:
        on_progress(ProgressEvent(
            "done", len(sub.receipts), len(sub.receipts), result.totals.rows, ctx.plan.rows, result.totals.seconds
        ))
    return RunResult(result, cfg.output, journal.url)


def _start_changing_output(ctx: RunContext) -> None:
    """From here the output is being changed: first make sure nothing marks it complete."""
    cfg, plan = ctx.cfg, ctx.plan
    io.remove(io.join_url(cfg.output, SUCCESS_NAME), cfg.storage)
    if not cfg.resume:
        io.remove(io.join_url(cfg.output, MANIFEST_NAME), cfg.storage)
    io.remove_staging(cfg.output, cfg.storage)  # leftovers of a SIGKILLed run are never committed
    todo = len(plan.partitions) - len(ctx.reused)
    log.info(
        "planned %d file(s), %d rows; model %s (sha256 %s)%s",
        len(plan.partitions), plan.rows, plan.model_url, plan.info.sha256[:12],
        f"; resuming: {len(ctx.reused)} reused, {todo} to score" if cfg.resume else "",
        extra={"fields": {"event": "planned", "files": len(plan.partitions), "rows": plan.rows,
                          "model": plan.model_url, "model_version": plan.model_version, "reused": len(ctx.reused)}},
    )
    if plan.failures:
        log.warning("skipping %d bad file(s): %s", len(plan.failures), "; ".join(f.error for f in plan.failures),
                    extra={"fields": {"event": "skipped_files", "files": [f.relpath for f in plan.failures]}})


def _finish_run(
    ctx: RunContext, sub: Submission, survey: OutputSurvey
) -> tuple[manifest.Manifest, BatchserveError | None]:
    """The final manifest: stale files of earlier runs removed, the output checked from this side."""
    cfg, plan = ctx.cfg, ctx.plan
    section = drift_data(ctx, sub.receipts)
    versus = challenger_section(cfg, plan, sub.receipts)
    draft = build_manifest(ctx, sub.receipts, sub.failures, sub.engine, "succeeded", None, section, versus)
    removed = stale_outputs(survey, (e.relpath for e in draft.outputs))
    remove_stale_outputs(cfg, removed)
    draft.removed = removed
    failure: BatchserveError | None = None
    problem = verify_outputs(cfg, draft.outputs, survey)
    if problem is not None:
        failure = OutputError(problem, path=cfg.output)
    n_bad = len(plan.failures) + len(sub.failures)
    if failure is None and cfg.max_failed_files is not None and n_bad > cfg.max_failed_files:
        first = (list(plan.failures) + sub.failures)[0]
        failure = DataError(
            f"{n_bad} file(s) failed, more than --max-failed-files {cfg.max_failed_files}; first: {first.error}",
            path=cfg.output,
        )
    if failure is None:
        return draft, None
    return build_manifest(ctx, sub.receipts, sub.failures, sub.engine, "failed", str(failure), section,
                          versus, removed), failure
