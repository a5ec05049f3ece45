"""The challenger's output during a run (shadow scoring): checked, locked, cleared, verified and
finished by the same protocol as the champion's, with its own manifest and ``_SUCCESS``, written
before the champion's. Each promises its own output: a challenger that failed on a file leaves its
output without ``_SUCCESS`` (the file and why are in its manifest's failures and in the champion's
challenger section), while the champion's output is exactly what a run without --challenger writes."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from batchserve import io, manifest
from batchserve.errors import BatchserveError, OutputError
from batchserve.pipeline import ledger
from batchserve.pipeline.output import (
    MANIFEST_NAME,
    SUCCESS_NAME,
    OutputSurvey,
    check_output,
    output_lock,
    remove_stale_outputs,
    stale_outputs,
    verify_outputs,
)
from batchserve.pipeline.record import RunContext, build_manifest, shadow_context
from batchserve.pipeline.submit import Submission

__all__ = ["ChallengerOutput"]

log = logging.getLogger("batchserve")


class ChallengerOutput:
    """The challenger output's side of one run."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = shadow_context(ctx)
        self.cfg = self.ctx.cfg
        self.champion_output = ctx.cfg.output
        self.survey = OutputSurvey()

    @contextmanager
    def locked(self) -> Iterator[None]:
        with output_lock(self.cfg, self.ctx.run_id):
            self.survey = check_output(self.cfg)
            yield

    def start(self) -> None:
        """Nothing may mark it complete while it changes; a SIGKILLed run's staging is never committed."""
        io.remove(io.join_url(self.cfg.output, SUCCESS_NAME), self.cfg.storage)
        io.remove(io.join_url(self.cfg.output, MANIFEST_NAME), self.cfg.storage)
        io.remove_staging(self.cfg.output, self.cfg.storage)

    def build(self, sub: Submission, status: str, error: str | None = None) -> manifest.Manifest:
        receipts = [r.challenger for r in sub.receipts if r.challenger is not None]
        failed = [manifest.FailureEntry(r.input_url, r.relpath, f"challenger: {r.challenger_error}")
                  for r in sub.receipts if r.challenger_error]
        m = build_manifest(self.ctx, receipts, [*sub.failures, *failed], sub.engine, status, error)
        m.shadow_of = self.champion_output
        return m

    def fail(self, sub: Submission, status: str, error: str) -> None:
        try:
            self._write(self.build(sub, status, error))
        finally:
            io.remove_staging(self.cfg.output, self.cfg.storage, self.ctx.run_id)

    def finish(self, sub: Submission) -> tuple[manifest.Manifest, BatchserveError | None]:
        draft = self.build(sub, "succeeded")
        remove_stale_outputs(self.cfg, stale_outputs(self.survey, (e.relpath for e in draft.outputs)))
        problem = verify_outputs(self.cfg, draft.outputs, self.survey)
        if problem is not None:
            failure = OutputError(f"challenger output: {problem}", path=self.cfg.output)
            return self.build(sub, "failed", str(failure)), failure
        failed = [r for r in sub.receipts if r.challenger_error]
        if failed:  # the challenger's output is incomplete (no _SUCCESS); the champion's run is not failed by it
            why = (f"the challenger failed on {len(failed)} file(s) (first: {failed[0].relpath}: "
                   f"{failed[0].challenger_error}); the champion's output is complete")
            log.warning("%s", why, extra={"fields": {"event": "challenger_failed",
                                                      "files": [r.relpath for r in failed]}})
            return self.build(sub, "failed", why), None
        return draft, None

    def commit(self, m: manifest.Manifest, complete: bool) -> None:
        self._write(m)
        io.remove_staging(self.cfg.output, self.cfg.storage)
        if complete:
            io.write_text_atomic(io.join_url(self.cfg.output, SUCCESS_NAME), "", self.cfg.storage)

    def _write(self, m: manifest.Manifest) -> None:
        io.write_text_atomic(io.join_url(self.cfg.output, MANIFEST_NAME), manifest.dumps(m), self.cfg.storage)
        ledger.write_record(self.cfg.output, m, None, self.cfg.storage)
