"""The model repository: versions, aliases, and an append-only audit trail, on any fsspec store.

Layout (today's ``<model>/<version>/model.onnx`` stays readable as it is)::

    <model>/<version>/model.onnx
    <model>/<version>/version.json     written last by `register`: sha256, bytes, who, when, why
    <model>/_events/00000001.json      one object per event (register, promote, rollback)

A version is *complete* once ``version.json`` stands beside a ``model.onnx`` of the size it records
(a folder being uploaded by hand, or cut off by a crash, is not). In a repository with no
``version.json`` at all (the layout before registration existed) every version folder with a
``model.onnx`` counts. Aliases are not stored anywhere mutable: an alias points where its last event
says, so there is no read-modify-write to lose. Each event is created with the store's exclusive
create (``O_EXCL`` locally, ``If-None-Match: *`` on S3), so two promotes at the same moment cannot
both take one sequence number: the loser re-reads and appends after the winner.

Example::

    >>> resolve("models/fraud@production", {})  # doctest: +SKIP
    Resolved(url='models/fraud/3/model.onnx', version='3', ...)
"""

# Modules: ``store`` (what the repository holds, and resolving a reference: read-only) and ``moves``
# (register, promote, rollback: each an audit event). The names below are the registry's API.
from __future__ import annotations

from batchserve.registry.moves import alias_stack, promote, register, rollback
from batchserve.registry.store import (
    ACTIONS,
    EVENTS_DIR,
    MODEL_FILE,
    VERSION_FILE,
    Event,
    ModelRef,
    Resolved,
    VersionInfo,
    alias_target,
    aliases,
    events,
    parse_ref,
    resolve,
    versions,
)

__all__ = ["ModelRef", "Resolved", "VersionInfo", "Event", "ACTIONS", "MODEL_FILE", "VERSION_FILE", "EVENTS_DIR",
           "parse_ref", "resolve", "versions", "events", "aliases", "alias_target", "register", "promote",
           "rollback", "alias_stack"]
