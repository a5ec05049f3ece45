"""Receipts in, the typed run manifest out: totals, per-file entries, merged drift statistics and
the drift verdict (``--fail-on-drift``)."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from batchserve import compare, drift, manifest, selection
from batchserve.compare import ChallengerSection
from batchserve.config import ScoreConfig, utc_now
from batchserve.config.secrets import redact_text
from batchserve.pipeline.ledger import Carried
from batchserve.pipeline.plan import RunPlan, fingerprint
from batchserve.reference import ColumnDrift, DriftSection, drift_section

if TYPE_CHECKING:
    from batchserve.worker import Receipt

__all__ = ["RunContext", "tool_version", "build_manifest", "current_stats", "drift_data", "drift_failure",
           "challenger_section", "shadow_context"]

log = logging.getLogger("batchserve")


@dataclasses.dataclass(frozen=True)
class RunContext:
    """What a run's manifest is built from besides its receipts: decided before the first task."""

    cfg: ScoreConfig
    plan: RunPlan
    run_id: str
    started_at: str
    t0: float
    #: Outputs kept by --resume, and why the others are rescored.
    reused: tuple[manifest.FileEntry, ...] = ()
    notes: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: The reused files' own statistics, carried forward from the run that scored them (by checksum).
    carried: Carried = dataclasses.field(default_factory=dict)


def tool_version() -> str:
    """This batchserve's version, as the manifest records it."""
    from batchserve.version import version

    return version()


def file_entries(receipts: list[Receipt], notes: Mapping[str, str]) -> list[manifest.FileEntry]:
    return [
        manifest.FileEntry(r.output_url, r.relpath, r.rows, r.bytes, checksum=r.checksum, status="scored",
                           note=notes.get(r.relpath))
        for r in receipts
    ]


def current_stats(plan: RunPlan, receipts: list[Receipt], carried: Carried | None = None
                  ) -> tuple[dict[str, drift.ColumnSummary], list[str]]:
    """Every current output's statistics merged: scored now, and carried forward for reused files."""
    maps = [r.stats for r in receipts if r.stats is not None]
    maps += [cols for _, cols in (carried or {}).values()]
    current = drift.merge_maps(maps)
    feats = list(plan.features.features)
    preds = [k for k in current if k not in set(feats)]
    order = {o.name: i for i, o in enumerate(plan.info.outputs)} if plan.info is not None else {}

    def output_rank(name: str) -> tuple[int, str]:
        base = name.split(".")[0].split("[")[0]
        return (order.get(base, len(order)), name)

    return current, sorted(preds, key=output_rank)


def drift_data(ctx: RunContext, receipts: list[Receipt]) -> DriftSection | None:
    """The run's drift section over every current output: a resumed run's reused files count with the
    statistics they were scored with, so a re-run of a drifted night gives the first run's verdict."""
    cfg, plan, carried = ctx.cfg, ctx.plan, ctx.carried
    if not cfg.drift:
        return None
    current, preds = current_stats(plan, receipts, carried)
    section = drift_section(current, list(plan.features.features), preds, plan.reference, plan.policy)
    missing = len(ctx.reused) - len(carried)
    if ctx.reused:
        section = dataclasses.replace(section, coverage=(
            f"statistics cover {len(receipts)} file(s) scored by this run and {len(carried)} reused file(s)"
            + (f"; {missing} reused file(s) had no statistics to carry forward" if missing else "")))
    if plan.reference is not None:
        drifted, dpred = section.drifted_features, section.drifted_predictions
        log.info(
            "drift against %s: %d of %d feature(s) drifted%s; %d of %d prediction column(s) drifted%s",
            plan.reference.uri, len(drifted), len(plan.features.features),
            (": " + ", ".join(drifted)) if drifted else "", len(dpred), len(section.predictions),
            (": " + ", ".join(dpred)) if dpred else "",
            extra={"fields": {"event": "drift", "reference": plan.reference.uri, "drifted_features": drifted,
                              "features": len(plan.features.features), "drifted_predictions": dpred,
                              "predictions": len(section.predictions)}},
        )
    return section


def drift_failure(result: manifest.Manifest, max_share: float | None) -> str | None:
    """The one-line reason to exit 3, or None when drift stays within the policy.

    Features fail the run when their drifted share passes ``--max-drift-share`` (any drifted feature
    without it). A prediction column past its limit always fails it: a model promoted by mistake
    shifts its predictions while every feature stays put, and that is the night the job must go red.
    """
    d = result.drift
    if d is None or d.reference is None or d.drift_share is None:
        return None
    reasons = []
    if d.drifted_features and (max_share is None or d.drift_share > max_share):
        limit_text = f" > --max-drift-share {max_share}" if max_share is not None else ""
        reasons.append(f"drift detected in {len(d.drifted_features)} of {len(d.features)} features "
                       f"(share {d.drift_share:.2f}{limit_text}): {_past_limit(d.features, d.drifted_features)}")
    if d.drifted_predictions:
        reasons.append(f"prediction drift in {len(d.drifted_predictions)} of {len(d.predictions)} prediction "
                       f"column(s): {_past_limit(d.predictions, d.drifted_predictions)}")
    return "; ".join(reasons) + "; outputs are committed" if reasons else None


def _past_limit(columns: Mapping[str, ColumnDrift], names: list[str]) -> str:
    parts = []
    for name in names:
        col = columns[name]
        metric = col.decided_by or "psi"
        limit = col.threshold if metric == col.metric else "null-rate limit"
        parts.append(f"{name} ({metric} {col.value(metric) or 0.0:.3f} > {limit})")
    return ", ".join(parts)


def build_manifest(
    ctx: RunContext,
    receipts: list[Receipt],
    failures: list[manifest.FailureEntry],
    engine: manifest.EngineInfo | None,
    status: str,
    error: str | None = None,
    section: DriftSection | None = None,
    challenger: ChallengerSection | None = None,
    removed: list[str] | None = None,
) -> manifest.Manifest:
    cfg, plan = ctx.cfg, ctx.plan
    seconds = time.perf_counter() - ctx.t0
    outputs = sorted([*ctx.reused, *file_entries(receipts, ctx.notes)], key=lambda e: e.relpath)
    rows = sum(e.rows for e in outputs)
    info = plan.info
    return manifest.Manifest(
        run=manifest.RunInfo(
            id=ctx.run_id, started_at=ctx.started_at, finished_at=utc_now(), status=status,
            batchserve_version=tool_version(), config=cfg.redacted(), engine=engine, error=error,
        ),
        model=manifest.ModelSection(
            uri=redact_text(plan.model_uri), resolved_uri=redact_text(plan.model_url), version=plan.model_version,
            **info.as_dict(),
            features=list(plan.features.features), feature_source=plan.features.source,
            alias_event=plan.alias_event.as_dict() if plan.alias_event else None,
        ),
        inputs=[
            manifest.FileEntry(p.url, p.relpath, f.num_rows, p.size, version=p.version)
            for p, f in zip(plan.partitions, plan.footers, strict=True)
        ],
        outputs=outputs,
        totals=manifest.Totals(
            files=len(outputs), rows=rows,
            bytes_in=sum(p.size for p in plan.partitions), bytes_out=sum(e.bytes for e in outputs),
            seconds=round(seconds, 4), rows_per_second=round(rows / seconds, 1) if seconds > 0 else 0.0,
            read_seconds=round(sum(r.read_s for r in receipts), 4),
            infer_seconds=round(sum(r.infer_s for r in receipts), 4),
            write_seconds=round(sum(r.write_s for r in receipts), 4),
        ),
        drift=section,
        fingerprint=fingerprint(cfg, plan),
        failures=list(plan.failures) + list(failures),
        challenger=challenger,
        scope=selection.Scope.of(cfg.filter, cfg.output).as_dict(),
        removed=list(removed or []),
    )


def challenger_section(cfg: ScoreConfig, plan: RunPlan, receipts: list[Receipt]) -> ChallengerSection | None:
    """How the challenger's predictions differ from the champion's, merged over every file."""
    ch = plan.challenger
    if ch is None or cfg.challenger_output is None:
        return None
    comparisons = compare.merge_comparisons(r.comparisons for r in receipts if r.comparisons)
    return ChallengerSection(
        model={"uri": redact_text(ch.model_uri), "resolved_uri": redact_text(ch.model_url), "version": ch.model_version,
               "sha256": ch.info.sha256, "alias_event": ch.alias_event.as_dict() if ch.alias_event else None},
        output=cfg.challenger_output,
        columns=compare.section_columns(comparisons),
        infer_seconds={"champion": round(sum(r.infer_s for r in receipts), 4),
                       "challenger": round(sum(r.challenger.infer_s for r in receipts if r.challenger), 4)},
        failures=[{"relpath": r.relpath, "error": r.challenger_error} for r in receipts if r.challenger_error],
    )


def shadow_context(ctx: RunContext) -> RunContext:
    """The challenger output's own run: the same inputs and run id, the challenger as its model."""
    ch, cfg = ctx.plan.challenger, ctx.cfg
    assert ch is not None and cfg.challenger_output is not None
    shadow_cfg = dataclasses.replace(
        cfg, output=cfg.challenger_output, keep=ch.keep, challenger=None, challenger_output=None,
        challenger_keep=None, drift=False, reference=None, fail_on_drift=False, max_drift_share=None,
    )
    shadow_plan = dataclasses.replace(
        ctx.plan, model_uri=ch.model_uri, model_url=ch.model_url, model_version=ch.model_version, info=ch.info,
        features=ch.features, alias_event=ch.alias_event, reference=None, challenger=None,
    )
    return dataclasses.replace(ctx, cfg=shadow_cfg, plan=shadow_plan)
