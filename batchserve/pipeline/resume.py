"""Which outputs earlier runs committed can be kept by ``--resume``, and why the rest are rescored.

The earlier runs are the output's latest manifest and, for files it does not list (another
partition's run wrote it since), the ledger's records (:mod:`batchserve.pipeline.ledger`), newest first.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from batchserve import io, manifest
from batchserve.config import ScoreConfig
from batchserve.pipeline.plan import RunPlan, fingerprint

if TYPE_CHECKING:
    from batchserve.pipeline.output import Stamp

__all__ = ["Resumed", "resume_decisions"]

log = logging.getLogger("batchserve")


@dataclasses.dataclass(frozen=True)
class Resumed:
    """What ``--resume`` keeps: the reused outputs, why each other file is rescored, and which run's
    record listed each reused file (its statistics are carried forward from that run's sidecar)."""

    reused: tuple[manifest.FileEntry, ...] = ()
    notes: dict[str, str] = dataclasses.field(default_factory=dict)
    sources: dict[str, str] = dataclasses.field(default_factory=dict)


def resume_decisions(cfg: ScoreConfig, plan: RunPlan, earlier: Sequence[manifest.Manifest],
                     stamps: Mapping[str, Stamp] | None = None) -> Resumed:
    """Which committed outputs earlier runs left can be kept, and why the rest are rescored.

    Each file is judged against the newest run that lists it; a committed file no run lists (a run
    SIGKILLed before its journal caught up) by the record stamped in its own footer. Outputs of inputs
    that no longer exist are not kept: they are removed before ``_SUCCESS`` (inside the run's scope only).
    """
    storage = cfg.storage
    notes: dict[str, str] = {}
    digest = fingerprint(cfg, plan)
    if not earlier:
        kept = _from_footers(cfg, plan, digest, stamps or {},
                             {p.relpath: "no earlier manifest to resume from" for p in plan.partitions})
        return kept
    reused: list[manifest.FileEntry] = []
    sources: dict[str, str] = {}
    indexed = [(m, {e.relpath: e for e in m.outputs}, {e.relpath: e for e in m.inputs}) for m in earlier]
    for part in plan.partitions:
        prev, outs, ins = next((x for x in indexed if part.relpath in x[1]), indexed[0])
        out, inp = outs.get(part.relpath), ins.get(part.relpath)
        final = io.join_url(cfg.output, part.relpath)
        if prev.model.sha256 != plan.info.sha256:
            notes[part.relpath] = f"model changed (sha256 {prev.model.sha256[:12]} -> {plan.info.sha256[:12]})"
        elif prev.fingerprint != digest:
            notes[part.relpath] = "features, --keep or --prefix changed"
        elif out is None:
            notes[part.relpath] = f"not committed by run {prev.run.id} ({prev.run.status})"
        elif inp is None or inp.bytes != part.size or inp.version != part.version:
            notes[part.relpath] = "input changed (size or modification time)"
        elif not io.exists(final, storage) or io.file_size(final, storage) != out.bytes:
            notes[part.relpath] = "committed output is missing or changed"
        else:
            reused.append(dataclasses.replace(out, status="reused", note=f"committed by run {prev.run.id}"))
            sources[part.relpath] = prev.run.id
    found = _from_footers(cfg, plan, digest, stamps or {}, notes)
    log.info("resume: %d file(s) reused, %d to score", len(reused) + len(found.reused), len(found.notes))
    return Resumed((*reused, *found.reused), found.notes, {**sources, **found.sources})


def _from_footers(cfg: ScoreConfig, plan: RunPlan, digest: str, stamps: Mapping[str, Stamp],
                  notes: dict[str, str]) -> Resumed:
    """Of the files still to score, those a run committed after its last journal write: kept when the
    record in their footer says they were scored with these settings from this very input. Their
    checksum is computed from the file (the manifest that would have held it was never written)."""
    reused: list[manifest.FileEntry] = []
    sources: dict[str, str] = {}
    left = dict(notes)
    for part in plan.partitions:
        stamp = stamps.get(part.relpath)
        if part.relpath not in left or stamp is None or stamp.record is None:
            continue
        rec = stamp.record
        if (rec.get("fingerprint"), rec.get("input_size"), rec.get("input_version")) != (digest, part.size,
                                                                                        part.version):
            continue
        final = io.join_url(cfg.output, part.relpath)
        size, checksum = io.file_checksum(final, cfg.storage)
        reused.append(manifest.FileEntry(final, part.relpath, stamp.rows, size, checksum=checksum, status="reused",
                                         note=f"committed by run {stamp.run_id} (found by its footer stamp)"))
        sources[part.relpath] = stamp.run_id
        del left[part.relpath]
    return Resumed(tuple(reused), left, sources)
