"""Which outputs an earlier run committed can be kept by ``--resume``, and why the rest are rescored."""

from __future__ import annotations

import dataclasses
import logging

from batchserve import io, manifest
from batchserve.config import ScoreConfig
from batchserve.pipeline.plan import RunPlan, fingerprint

__all__ = ["resume_decisions"]

log = logging.getLogger("batchserve")


def resume_decisions(
    cfg: ScoreConfig, plan: RunPlan, prev: manifest.Manifest | None
) -> tuple[list[manifest.FileEntry], dict[str, str]]:
    """Which committed outputs an earlier run left can be kept, and why the rest are rescored.

    Outputs of inputs that no longer exist are not kept: they are removed before ``_SUCCESS``.
    """
    storage = cfg.storage
    notes: dict[str, str] = {}
    if prev is None:
        return [], {p.relpath: "no earlier manifest to resume from" for p in plan.partitions}
    same_settings = prev.fingerprint == fingerprint(cfg, plan)
    why_all = None
    if prev.model.sha256 != plan.info.sha256:
        why_all = f"model changed (sha256 {prev.model.sha256[:12]} -> {plan.info.sha256[:12]})"
    elif not same_settings:
        why_all = "features, --keep or --prefix changed"
    prev_in = {e.relpath: e for e in prev.inputs}
    prev_out = {e.relpath: e for e in prev.outputs}
    reused: list[manifest.FileEntry] = []
    for part in plan.partitions:
        out, inp = prev_out.get(part.relpath), prev_in.get(part.relpath)
        final = io.join_url(cfg.output, part.relpath)
        if why_all:
            notes[part.relpath] = why_all
        elif out is None:
            notes[part.relpath] = f"not committed by run {prev.run.id} ({prev.run.status})"
        elif inp is None or inp.bytes != part.size or inp.version != part.version:
            notes[part.relpath] = "input changed (size or modification time)"
        elif not io.exists(final, storage) or io.file_size(final, storage) != out.bytes:
            notes[part.relpath] = "committed output is missing or changed"
        else:
            reused.append(dataclasses.replace(out, status="reused", note=f"committed by run {prev.run.id}"))
    log.info("resume: %d file(s) reused, %d to score", len(reused), len(notes))
    return reused, notes
