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

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Mapping
from typing import Any

from batchserve import io, model
from batchserve.config import utc_now
from batchserve.errors import ModelError

__all__ = ["ModelRef", "Resolved", "VersionInfo", "Event", "parse_ref", "resolve", "versions", "events", "aliases",
           "register", "promote", "rollback", "alias_target"]

log = logging.getLogger("batchserve")
MODEL_FILE = "model.onnx"
VERSION_FILE = "version.json"
EVENTS_DIR = "_events"
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_APPEND_TRIES = 50


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """``<uri>``, ``<uri>@<version>`` or ``<uri>@<alias>``, as a user wrote it."""

    uri: str
    tag: str | None = None

    @property
    def version(self) -> int | None:
        return int(self.tag) if self.tag is not None and self.tag.isdigit() else None

    @property
    def alias(self) -> str | None:
        return self.tag if self.tag is not None and not self.tag.isdigit() else None

    def __str__(self) -> str:
        return self.uri if self.tag is None else f"{self.uri}@{self.tag}"


def parse_ref(text: str) -> ModelRef:
    """Split ``models/fraud@production``; an ``@`` inside a path (``s3://a@b/...``) is not a tag."""
    uri, sep, tag = text.rpartition("@")
    if sep and uri and _TAG.match(tag):
        return ModelRef(uri, tag)
    return ModelRef(text)


@dataclasses.dataclass(frozen=True)
class VersionInfo:
    version: int
    complete: bool
    #: Why an incomplete version is incomplete.
    problem: str | None = None
    record: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Event:
    """One line of the audit trail; never rewritten."""

    seq: int
    time: str
    actor: str
    action: str
    alias: str | None
    from_version: int | None
    to_version: int | None
    sha256: str | None
    message: str | None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Resolved:
    """What a model reference resolved to, and the audit event that last moved its alias."""

    ref: str
    url: str
    version: str | None
    data: bytes
    alias_event: Event | None = None


# --- reading the repository ------------------------------------------------------------------------


def _version_record(root: str, v: int, storage: Mapping[str, Any]) -> dict[str, Any] | None:
    url = io.join_url(root, str(v), VERSION_FILE)
    if not io.exists(url, storage):
        return None
    try:
        record = json.loads(io.read_text(url, storage))
    except (ValueError, RecursionError):
        return {}
    return record if isinstance(record, dict) else {}


def _numbers(root: str, storage: Mapping[str, Any]) -> list[int]:
    return sorted(int(e) for e in io.list_dir(root, storage) if e.isdigit())


def _info(root: str, v: int, record: dict[str, Any] | None, registered: bool,
          storage: Mapping[str, Any]) -> VersionInfo:
    """One version, complete or not (and why not), given its record and whether the repository registers."""
    model_url = io.join_url(root, str(v), MODEL_FILE)
    if not io.exists(model_url, storage):
        return VersionInfo(v, False, "no model.onnx")
    if registered and record is None:
        return VersionInfo(v, False, "not registered (no version.json): an upload in progress or cut off")
    if record is not None and record.get("bytes") != io.file_size(model_url, storage):
        return VersionInfo(v, False, "model.onnx does not match its version.json (truncated?)", record)
    return VersionInfo(v, True, None, record or {})


def _verified(root: str, info: VersionInfo, storage: Mapping[str, Any]) -> VersionInfo:
    """``info``, incomplete when its ``model.onnx`` no longer has the sha256 it was registered with (changed in
    place after registering, same size or not): what ``resolve`` would refuse, said before an alias points at it."""
    sha = info.record.get("sha256")
    if not info.complete or not sha:
        return info
    data = io.read_bytes(io.join_url(root, str(info.version), MODEL_FILE), storage)
    if model.sha256_hex(data) == sha:
        return info
    return dataclasses.replace(info, complete=False, problem=(
        f"model.onnx does not match the sha256 in its version.json ({str(sha)[:12]}; the file has "
        f"{model.sha256_hex(data)[:12]}): changed after registering"))


def versions(root: str, storage: Mapping[str, Any], *, verify: bool = False) -> list[VersionInfo]:
    """Every integer version folder, oldest first, each complete or not (and why not): for
    ``models show``; resolving a model reads only the versions it needs. ``verify`` reads every model
    file and checks its recorded sha256 (a file changed in place keeps its size)."""
    numbers = _numbers(root, storage)
    records = {v: _version_record(root, v, storage) for v in numbers}
    registered = any(r is not None for r in records.values())
    found = [_info(root, v, records[v], registered, storage) for v in numbers]
    return [_verified(root, i, storage) for i in found] if verify else found


def _event_numbers(root: str, storage: Mapping[str, Any]) -> list[int]:
    names = io.list_dir(io.join_url(root, EVENTS_DIR), storage)
    return sorted(int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit())


#: What an audit event can say. Anything else (a hand-edited "delete") is an event nobody can interpret:
#: resolving an alias past it would silently pick another version, so it stops resolution instead.
ACTIONS = ("register", "promote", "rollback")


def _event(root: str, seq: int, storage: Mapping[str, Any]) -> Event:
    url = io.join_url(root, EVENTS_DIR, f"{seq:08d}.json")
    try:
        event = Event(**json.loads(io.read_text(url, storage)))
    except (TypeError, ValueError) as exc:
        raise ModelError(f"unreadable audit event: {exc}", path=url) from None
    except RecursionError:
        raise ModelError("unreadable audit event: JSON nested too deeply", path=url) from None
    if event.action not in ACTIONS:
        raise ModelError(f"audit event has an action batchserve cannot interpret ({event.action!r}; it writes "
                         f"{', '.join(ACTIONS)}): the trail was edited by hand; restore the event from a backup "
                         "before aliases can be resolved", path=url)
    return event


def events(root: str, storage: Mapping[str, Any]) -> list[Event]:
    """The whole audit trail, oldest first."""
    return [_event(root, seq, storage) for seq in _event_numbers(root, storage)]


def aliases(trail: list[Event]) -> dict[str, Event]:
    """Each alias and the event that last moved it (an alias points where its last event says)."""
    out: dict[str, Event] = {}
    for e in trail:
        if e.alias is not None and e.action in ("promote", "rollback"):
            out[e.alias] = e
    return out


def _last_move(root: str, alias: str, numbers: list[int], storage: Mapping[str, Any]) -> Event | None:
    """The event that last moved ``alias``, read newest first: a year of nightly events costs one
    listing and a few reads, not one read per event."""
    for seq in reversed(numbers):
        e = _event(root, seq, storage)
        if e.alias == alias and e.action in ("promote", "rollback"):
            return e
    return None


def alias_target(text: str, storage: Mapping[str, Any]) -> Event | None:
    """The event that last moved the alias ``text`` names (``root@alias``), without reading any model:
    what a server following the alias checks every few seconds. None for a reference with no alias."""
    ref = parse_ref(text)
    if ref.alias is None:
        return None
    return _last_move(ref.uri, ref.alias, _event_numbers(ref.uri, storage), storage)


# --- resolving a reference --------------------------------------------------------------------------


def resolve(text: str, storage: Mapping[str, Any], *, version: int | None = None) -> Resolved:
    """A model file, or a version of a repository: plain (highest complete), ``@N`` or ``@alias``."""
    ref = parse_ref(text)
    if ref.tag is not None and io.exists(text, storage):
        ref = ModelRef(text)  # a path that exists is a path, even with an @ in its name
    if not io.isdir(ref.uri, storage):
        if ref.tag is not None or version is not None:
            raise ModelError("@version, @alias and --model-version need a model repository folder, not a file",
                             path=ref.uri)
        if not io.exists(ref.uri, storage):
            raise ModelError("model not found", path=ref.uri)
        return Resolved(str(ref), ref.uri, None, io.read_bytes(ref.uri, storage))
    if ref.tag is not None and version is not None:
        raise ModelError(f"pass either {ref} or --model-version, not both", path=ref.uri)
    numbers = _numbers(ref.uri, storage)
    if not numbers:
        raise ModelError("model folder has no integer version folders; expected <root>/<version>/model.onnx",
                         path=ref.uri)
    event = None
    wanted = version if version is not None else ref.version
    if ref.alias is not None:
        event = _last_move(ref.uri, ref.alias, _event_numbers(ref.uri, storage), storage)
        if event is None:
            known = ", ".join(sorted(aliases(events(ref.uri, storage)))) or "none yet (batchserve models promote)"
            raise ModelError(f"unknown alias {ref.alias!r}; aliases: {known}", path=ref.uri)
        wanted = event.to_version
    if wanted is None:  # plain: the highest complete version that also parses (an unregistered
        return _highest_readable(ref, numbers, storage)  # repository may hold a truncated upload)
    chosen = _pick(ref, numbers, wanted, event, storage)
    url = io.join_url(ref.uri, str(chosen.version), MODEL_FILE)
    data = io.read_bytes(url, storage)
    sha = chosen.record.get("sha256")
    if sha and model.sha256_hex(data) != sha:
        raise ModelError(f"model version {chosen.version} does not match the sha256 it was registered with",
                         path=url, expected=str(sha)[:12], found=model.sha256_hex(data)[:12])
    return Resolved(str(ref), url, str(chosen.version), data, event)


def _registered(root: str, numbers: list[int], storage: Mapping[str, Any], known: dict[int, Any]) -> bool:
    """Whether any version has a record (read lazily; ``known`` caches what was read)."""
    for v in reversed(numbers):
        if v not in known:
            known[v] = _version_record(root, v, storage)
        if known[v] is not None:
            return True
    return False


def _highest_readable(ref: ModelRef, numbers: list[int], storage: Mapping[str, Any]) -> Resolved:
    """From the top down, the first complete version (reading only as far as that)."""
    known: dict[int, Any] = {}
    for v in reversed(numbers):
        known[v] = _version_record(ref.uri, v, storage)
        registered = known[v] is not None or _registered(ref.uri, numbers, storage, known)
        info = _info(ref.uri, v, known[v], registered, storage)
        if not info.complete:
            log.warning("skipping model version %d of %s: %s", v, ref.uri, info.problem)
            continue
        url = io.join_url(ref.uri, str(v), MODEL_FILE)
        data = io.read_bytes(url, storage)
        sha = info.record.get("sha256")
        if sha and model.sha256_hex(data) != sha:
            log.warning("skipping model version %d of %s: it does not match its registered sha256", v, ref.uri)
            continue
        if not sha:  # unregistered: only parsing tells a truncated upload from a model
            try:
                model.describe(data)
            except ModelError:
                log.warning("skipping model version %d of %s: model.onnx does not parse (truncated?)", v, ref.uri)
                continue
        return Resolved(str(ref), url, str(v), data, None)
    raise ModelError("model repository has no complete version", path=ref.uri)


def _pick(ref: ModelRef, numbers: list[int], wanted: int, event: Event | None,
          storage: Mapping[str, Any]) -> VersionInfo:
    where = f"alias {ref.alias!r} points to version {wanted}" if event else f"model version {wanted}"
    if wanted not in numbers:
        complete = [str(v.version) for v in versions(ref.uri, storage) if v.complete]  # only on the error path
        raise ModelError(f"{where}, which does not exist; complete versions: {', '.join(complete) or 'none'}",
                         path=ref.uri)
    known: dict[int, Any] = {wanted: _version_record(ref.uri, wanted, storage)}
    registered = known[wanted] is not None or _registered(ref.uri, numbers, storage, known)
    target = _info(ref.uri, wanted, known[wanted], registered, storage)
    if not target.complete:
        raise ModelError(f"{where}, which is incomplete: {target.problem}", path=ref.uri)
    return target


# --- changing the repository: register, promote, rollback -----------------------------------------


def _append(root: str, storage: Mapping[str, Any], make: Any, alias: str | None = None) -> Event:
    """Append one event, created exclusively at the next sequence number; on a race, re-read and retry.

    ``make(last)`` builds the event from ``alias``'s last move as it is now (so a promote that lost the
    race records where the alias really was, and still may refuse)."""
    for _ in range(_APPEND_TRIES):
        numbers = _event_numbers(root, storage)
        event: Event = make(_last_move(root, alias, numbers, storage) if alias is not None else None)
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
        target = _verified(root, target, storage)
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
    seen = expect if expect is not None else _last_move(root, alias, _event_numbers(root, storage), storage)
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
        target = _verified(root, complete[back], storage) if back in complete else None
        if target is None or not target.complete:
            why = f": {target.problem}" if target is not None else ""
            raise ModelError(f"cannot roll back {alias!r} to version {back}: it is no longer complete{why}", path=root)
        return Event(0, utc_now(), actor, "rollback", alias, current.to_version, back,
                     complete[back].record.get("sha256"), message)

    if dry_run:
        return make(seen)
    return _append(root, storage, make, alias)


def _check_alias(alias: str, root: str) -> None:
    if not _TAG.match(alias) or alias.isdigit():
        raise ModelError(f"alias {alias!r} must be a name (letters, digits, _ . -), not a number", path=root)
