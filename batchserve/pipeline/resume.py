"""Which outputs earlier runs committed can be kept by ``--resume``, and why the rest are rescored.

The earlier runs are the output's latest manifest and, for files it does not list (another
partition's run wrote it since), the ledger's records (:mod:`batchserve.pipeline.ledger`), newest first.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

from batchserve import io, manifest
from batchserve.config import ScoreConfig
from batchserve.pipeline.plan import RunPlan, fingerprint

__all__ = ["Resumed", "resume_decisions"]

log = logging.getLogger("batchserve")


@dataclasses.dataclass(frozen=True)
class Resumed:
    """What ``--resume`` keeps: the reused outputs, why each other file is rescored, and which run's
    record listed each reused file (its statistics are carried forward from that run's sidecar)."""

    reused: tuple[manifest.FileEntry, ...] = ()
    notes: dict[str, str] = dataclasses.field(default_factory=dict)
    sources: dict[str, str] = dataclasses.field(default_factory=dict)


def resume_decisions(cfg: ScoreConfig, plan: RunPlan, earlier: Sequence[manifest.Manifest]) -> Resumed:
    """Which committed outputs earlier runs left can be kept, and why the rest are rescored.

    Each file is judged against the newest run that lists it. Outputs of inputs that no longer exist
    are not kept: they are removed before ``_SUCCESS`` (inside the run's scope only).
    """
    storage = cfg.storage
    notes: dict[str, str] = {}
    if not earlier:
        return Resumed(notes={p.relpath: "no earlier manifest to resume from" for p in plan.partitions})
    digest = fingerprint(cfg, plan)
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
    log.info("resume: %d file(s) reused, %d to score", len(reused), len(notes))
    return Resumed(tuple(reused), notes, sources)
