"""Moves in the repository, each an audit event created exclusively at the trail's next sequence number:
register a version, promote an alias to one, roll an alias back through its promotions."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from batchserve import io, model
from batchserve.config import utc_now
from batchserve.errors import ModelError
from batchserve.registry.store import (
    EVENTS_DIR,
    MODEL_FILE,
    VERSION_FILE,
    Event,
    event_numbers,
    events,
    is_alias_name,
    last_move,
    verified,
    versions,
)

__all__ = ["register", "promote", "rollback", "alias_stack"]

_APPEND_TRIES = 50


def _append(root: str, storage: Mapping[str, Any], make: Any, alias: str | None = None) -> Event:
    """Append one event, created exclusively at the next sequence number; on a race, re-read and retry.

    ``make(last)`` builds the event from ``alias``'s last move as it is now (so a promote that lost the
    race records where the alias really was, and still may refuse)."""
    for _ in range(_APPEND_TRIES):
        numbers = event_numbers(root, storage)
        event: Event = make(last_move(root, alias, numbers, storage) if alias is not None else None)
        event = dataclasses.replace(event, seq=(numbers[-1] + 1) if numbers else 1)
        url = io.join_url(root, EVENTS_DIR, f"{event.seq:08d}.json")
        try:
            io.create_exclusive(url, json.dumps(event.as_dict(), indent=1), storage)
            return event
        except FileExistsError:
            continue
    raise ModelError(f"could not append to the audit trail after {_APPEND_TRIES} tries (too many concurrent "
                     "changes)", path=root)


def register(root: str, data: bytes, storage: Mapping[str, Any], *, actor: str, message: str | None) -> Event:
    """Check the file is ONNX and loads, copy it into the next version folder through a staging name,
    write its record beside it (the version is visible from then on), and append the event."""
    info = model.describe(data)
    model.check_runnable(info, data)
    for _ in range(_APPEND_TRIES):
        existing = [int(e) for e in io.list_dir(root, storage) if e.isdigit()]
        v = max(existing, default=0) + 1
        try:  # reserve the number: two registers at once must not share a folder
            io.create_exclusive(io.join_url(root, str(v), "_reserved"), actor, storage)
            break
        except FileExistsError:
            continue
    else:
        raise ModelError("could not reserve a version number (too many concurrent registers)", path=root)
    folder = io.join_url(root, str(v))
    io.write_bytes_atomic(io.join_url(folder, MODEL_FILE), data, storage)
    try:
        names = info.feature_names
    except ModelError:
        names = None
    record = {
        "version": v, "sha256": info.sha256, "bytes": info.bytes, "created_at": utc_now(), "actor": actor,
        "message": message, "producer": f"{info.producer_name} {info.producer_version}".strip(),
        "opset": info.opset, "feature_names": names,
    }
    io.write_text_atomic(io.join_url(folder, VERSION_FILE), json.dumps(record, indent=1), storage)
    return _append(root, storage, lambda _last: Event(0, utc_now(), actor, "register", None, None, v, info.sha256,
                                                      message))


def promote(root: str, version: int, alias: str, storage: Mapping[str, Any], *, actor: str,
            message: str | None) -> Event:
    """Point ``alias`` at a complete ``version``; the event records where it pointed before."""
    _check_alias(alias, root)
    target = {v.version: v for v in versions(root, storage)}.get(version)
    if target is not None:
        target = verified(root, target, storage)
    if target is None or not target.complete:
        why = "does not exist" if target is None else f"is incomplete: {target.problem}"
        raise ModelError(f"cannot promote version {version} to {alias!r}: it {why}", path=root)

    def make(current: Event | None) -> Event:
        return Event(0, utc_now(), actor, "promote", alias, current.to_version if current else None, version,
                     target.record.get("sha256"), message)

    return _append(root, storage, make, alias)


def alias_stack(trail: list[Event], alias: str) -> list[int]:
    """The versions ``alias`` was promoted through, oldest first, as its moves leave them: a promote
    pushes its version, a rollback pops down to its target. The top is where the alias points; what
    lies below is where a rollback may go. A version rolled back from is popped, so a second rollback
    steps further back instead of re-applying it (a rollback of a rollback used to be a redo)."""
    stack: list[int] = []
    for e in trail:
        if e.alias != alias or e.action not in ("promote", "rollback") or e.to_version is None:
            continue
        if e.action == "promote":
            if not stack or stack[-1] != e.to_version:
                stack.append(e.to_version)
            continue
        while stack and stack[-1] != e.to_version:
            stack.pop()
        if not stack:
            stack.append(e.to_version)
    return stack


def rollback(root: str, alias: str, storage: Mapping[str, Any], *, actor: str, message: str | None,
             to: int | None = None, dry_run: bool = False, expect: Event | None = None) -> Event:
    """Move ``alias`` back one step through its promotions (or to ``to``, an earlier one of them).

    Compare-and-set: the move is from the alias's state as the caller saw it, ``expect`` (the event that
    last moved it, from :func:`alias_target`), or else as this call reads it first, before anything
    slower. The event is created exclusively at the trail's next sequence number, right after the alias's
    last move is read again: if anything moved it since (another rollback or promote at the same
    moment), that read sees the move, or the create loses to the mover and the retry sees it; either
    way this one fails with one line instead of stepping back from a state its user never saw. With
    ``dry_run`` the event is returned unwritten.
    """
    _check_alias(alias, root)
    seen = expect if expect is not None else last_move(root, alias, event_numbers(root, storage), storage)
    complete = {v.version: v for v in versions(root, storage) if v.complete}

    def make(current: Event | None) -> Event:
        if current is None:
            raise ModelError(f"cannot roll back {alias!r}: it was never promoted", path=root)
        if seen is None or current.seq != seen.seq:
            raise ModelError(
                f"cannot roll back {alias!r}: it moved meanwhile ({current.action} {current.from_version} -> "
                f"{current.to_version} by {current.actor}, event {current.seq}); check `batchserve models history` "
                "and run the rollback again if it is still wanted", path=root)
        stack = alias_stack(events(root, storage), alias)
        below = stack[:-1]
        if to is not None:
            if to not in below:
                raise ModelError(
                    f"cannot roll back {alias!r} to version {to}: it is not an earlier promotion of this alias "
                    f"(earlier: {', '.join(map(str, reversed(below))) or 'none'}); use `models promote` to move it "
                    "anywhere else", path=root)
            back = to
        elif not below:
            raise ModelError(
                f"cannot roll back {alias!r}: version {current.to_version} is its earliest promotion still standing, "
                "so a rollback would re-apply a version it was rolled back from; use --to N or `models promote`",
                path=root)
        else:
            back = below[-1]
        target = verified(root, complete[back], storage) if back in complete else None
        if target is None or not target.complete:
            why = f": {target.problem}" if target is not None else ""
            raise ModelError(f"cannot roll back {alias!r} to version {back}: it is no longer complete{why}", path=root)
        return Event(0, utc_now(), actor, "rollback", alias, current.to_version, back,
                     complete[back].record.get("sha256"), message)

    if dry_run:
        return make(seen)
    return _append(root, storage, make, alias)


def _check_alias(alias: str, root: str) -> None:
    if not is_alias_name(alias):
        raise ModelError(f"alias {alias!r} must be a name (letters, digits, _ . -), not a number", path=root)
