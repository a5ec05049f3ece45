"""The cheapest errors first: a local model or input path that does not exist, and a local output
folder that already holds files when neither ``--overwrite`` nor ``--resume`` is given (an analyst's
commonest slip on a re-run), found with ``os`` before the CLI imports the scoring stack (pyarrow,
numpy, onnx, onnxruntime: ~0.15 s of a 0.35 s error; make bench "startup"). It raises exactly the
error planning raises for the same path, and decides nothing else: anything it is unsure of (a URL,
``@`` tags, globs, a broken link, ``--model-version``) is left to planning. One difference in
order: planning parses the model and checks the inputs before it looks at the output, so with a
broken model *and* a missing input this names the input first, and a full output is named before
either; all need fixing.
"""

from __future__ import annotations

import os

from batchserve import layout, selection
from batchserve.config import ScoreConfig
from batchserve.errors import InputError, ModelError

__all__ = ["check_local_paths"]

_GLOB_CHARS = set("*?[")


def _local(text: str) -> str | None:
    """The absolute form of a plain local path (as planning writes it in errors), else None."""
    if not text or "://" in text or "::" in text:
        return None
    path = os.path.abspath(text)
    return path + ("/" if text.endswith("/") and path != "/" else "")


def check_local_paths(cfg: ScoreConfig) -> None:
    """Raise planning's own error for a missing local model file or input, or a full local output."""
    _check_output(cfg)
    model = _local(cfg.model)
    if model is None or "@" in cfg.model or cfg.model_version is not None:
        return
    if not os.path.exists(model):
        raise ModelError("model not found", path=model)
    data = _local(cfg.input)
    if data is None or any(c in _GLOB_CHARS for c in cfg.input):
        return
    if not os.path.lexists(data):
        raise InputError("input not found: no such file, folder or prefix", path=data)


def _check_output(cfg: ScoreConfig) -> None:
    """A local output folder with files in it, and neither --overwrite nor --resume: planning's refusal,
    counted by the same listing and rule (:mod:`batchserve.layout`)."""
    output = _local(cfg.output)
    if output is None or cfg.overwrite or cfg.resume or any(c in _GLOB_CHARS for c in cfg.output):
        return
    found = layout.content(layout.local_files(output.rstrip("/") or "/"))
    if cfg.filter and found:  # only the run's scope counts: another day's partition is not in the way
        scope = selection.Scope.of(cfg.filter, output)
        found = [rel for rel in found if scope.owns(rel)]
    if found:
        raise layout.not_empty_error(len(found), output, scope=" and ".join(cfg.filter))
