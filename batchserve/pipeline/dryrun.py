"""``--dry-run``: what a run would do, decided exactly as the run decides it, with nothing written.

What an analyst needs before rescoring a month: which files (after ``--filter``), how many rows
and bytes (from the footers, no data page read), which model version the reference resolves to,
where the output goes, what ``--resume`` would keep, and a time estimate from the last run in
the output. Every check a real run makes before scoring runs here too (model load, schemas,
input/output overlap, foreign files in the output), so a dry run that passes is a run that
starts; no lock is taken, no cluster started, nothing created. It names every file the run would
remove (an earlier output inside the run's scope whose input is gone) before anything happens.
"""

from __future__ import annotations

import dataclasses

from batchserve import manifest
from batchserve.config import ScoreConfig
from batchserve.pipeline import ledger
from batchserve.pipeline.output import check_challenger_location, check_output_location, stale_outputs, survey_output
from batchserve.pipeline.plan import RunPlan, absolute_paths, plan_run
from batchserve.pipeline.resume import resume_decisions

__all__ = ["DryRun", "plan_dry_run"]


@dataclasses.dataclass(frozen=True)
class DryRun:
    """The plan of a run that was not started."""

    plan: RunPlan
    output: str
    files: int
    rows: int
    bytes: int
    #: Files ``--resume`` would keep from the earlier run in the output (0 when there is none).
    reusable: int
    #: Rows those files hold: what a resumed run would not score again.
    reusable_rows: int
    #: The earlier run in the output, if any: id, status, and its rows per second.
    previous_run: str | None
    previous_status: str | None
    previous_rows_per_second: float | None
    #: Estimated seconds for the rows this run would score (with ``--resume``: the rest), from the
    #: earlier run's throughput; None without an earlier run to go by.
    estimate_seconds: float | None
    #: What the run owns in the output (``--filter``; empty: all of it).
    scope: tuple[str, ...] = ()
    #: Earlier outputs inside the scope whose input is gone: the run would remove them (``--overwrite``
    #: or ``--resume``; without either, a non-empty scope is refused).
    removes: tuple[str, ...] = ()


def plan_dry_run(cfg: ScoreConfig) -> DryRun:
    """Plan a run and check everything a real run checks before scoring; write nothing."""
    cfg = absolute_paths(cfg)
    plan = plan_run(cfg)
    check_output_location(cfg, plan)
    check_challenger_location(cfg, plan)
    survey = survey_output(cfg)  # the real run's refusal (not empty, foreign files) is the dry run's too
    previous = survey.previous
    kept: list[manifest.FileEntry] = []
    if previous is not None or survey.ours:
        as_resume = dataclasses.replace(cfg, overwrite=False, resume=True, challenger=None, challenger_output=None,
                                        challenger_keep=None)
        earlier = ledger.earlier_runs(cfg.output, previous, cfg.storage, [p.relpath for p in plan.partitions])
        kept = list(resume_decisions(as_resume, plan, earlier, survey.stamps).reused)
    reusable_rows = sum(e.rows for e in kept)
    rows = plan.rows
    to_score = rows - reusable_rows if cfg.resume else rows
    rps = previous.totals.rows_per_second if previous is not None and previous.totals.rows > 0 else None
    return DryRun(
        plan=plan,
        output=cfg.output,
        files=len(plan.partitions),
        rows=rows,
        bytes=sum(p.size for p in plan.partitions),
        reusable=len(kept),
        reusable_rows=reusable_rows,
        previous_run=previous.run.id if previous is not None else None,
        previous_status=previous.run.status if previous is not None else None,
        previous_rows_per_second=rps,
        estimate_seconds=(to_score / rps) if rps else None,
        scope=tuple(cfg.filter),
        removes=tuple(stale_outputs(survey, (p.relpath for p in plan.partitions))),
    )
