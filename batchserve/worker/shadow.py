"""The challenger's side of a task (shadow scoring): the same batches, already read and decoded,
through a second session; its own writer stage and staged file; and the comparison with the
champion, summarised on that writer's thread so it overlaps the next inference."""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
from collections.abc import Mapping

import numpy as np
import pyarrow as pa

from batchserve import compare, io, predictions, scoring
from batchserve.errors import BatchserveError, located
from batchserve.worker.commit import commit_fence
from batchserve.worker.plugin import WorkerModel
from batchserve.worker.stages import Writer

__all__ = ["ChallengerTask", "Shadow"]


@dataclasses.dataclass(frozen=True)
class ChallengerTask:
    """What a task needs to score the challenger beside the champion."""

    plugin_name: str
    plan: scoring.FeaturePlan
    #: The challenger reads the champion's feature arrays as they are (the same bindings).
    same_features: bool
    output_url: str
    staging_url: str
    keep: tuple[str, ...] | None


class Shadow:
    """One task's challenger: run per batch, then committed after the champion's file."""

    def __init__(self, spec: ChallengerTask, plugin: WorkerModel, schema_names: list[str], run_id: str,
                 storage: Mapping[str, object], stop: threading.Event) -> None:
        self.spec, self.plugin, self.run_id = spec, plugin, run_id
        self.keep = list(schema_names) if spec.keep is None else list(spec.keep)
        self.comparisons: dict[str, compare.Comparison] = {}
        self.infer_s = 0.0
        #: Why the challenger failed on this file (it then stops; the champion's file goes on as alone).
        self.error: str | None = None
        self._storage = storage
        self.writer = Writer(self._open, stop)

    def _open(self, schema: pa.Schema) -> io.StagedWriter:
        return io.StagedWriter(self.spec.output_url, self.spec.staging_url, schema, self._storage, owner=self.run_id)

    @property
    def columns(self) -> list[str]:
        """The input columns the challenger needs read (beside the champion's)."""
        return [*self.keep, *self.spec.plan.features]

    def score(self, batch: pa.RecordBatch, feeds: Mapping[str, np.ndarray], champion: Mapping[str, pa.Array],
              prefix: str, input_url: str) -> None:
        """Score one batch with the challenger. Its failure on a file (nulls its integer input cannot take,
        an output it cannot produce) is recorded and stops it for this file; it never touches the
        champion's file, which is exactly what a run without --challenger writes."""
        if self.error is not None:
            return
        t0 = time.perf_counter()
        try:
            with located(input_url, "challenger: "):
                mine = feeds if self.spec.same_features else scoring.batch_to_feeds(batch, self.spec.plan)
                assert self.plugin.model is not None
                preds = predictions.outputs_to_columns(self.plugin.model.run(mine), batch.num_rows, prefix)
        except BatchserveError as exc:
            self.fail(exc)
            return
        self.infer_s += time.perf_counter() - t0
        self.writer.put(scoring.assemble(batch, self.keep, preds),
                        functools.partial(self._compare, champion, preds))

    def _compare(self, champion: Mapping[str, pa.Array], challenger: Mapping[str, pa.Array]) -> None:
        fresh = compare.compare_batch(champion, challenger)
        self.comparisons = compare.merge_comparisons([self.comparisons, fresh])

    def commit(self, footer_schema: pa.Schema) -> tuple[int, int, str]:
        """Commit the challenger's file (an empty file with its schema for 0 rows); rows, bytes, checksum."""
        staged = self.writer.writer
        if staged is None:
            assert self.plugin.prediction_schema is not None
            staged = self._open(scoring.output_schema(footer_schema, self.keep, self.plugin.prediction_schema)
                                .remove_metadata())
        size, checksum = staged.commit(commit_fence(self.run_id))
        return staged.rows, size, checksum

    def fail(self, exc: BatchserveError) -> None:
        """The challenger failed on this file: note why and drop its staged file."""
        self.error = self.error or str(exc)
        self.abort()

    def abort(self) -> None:
        if self.writer.writer is not None:
            self.writer.writer.abort()
