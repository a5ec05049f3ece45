"""The repository as it stands: versions (complete or not, and why), the audit trail, aliases, and
resolving a reference (``root``, ``root@N``, ``root@alias``) to a model's bytes. Read-only: the moves
are :mod:`batchserve.registry.moves`."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Mapping
from typing import Any

from batchserve import io, model
from batchserve.errors import ModelError

__all__ = ["ModelRef", "Resolved", "VersionInfo", "Event", "ACTIONS", "MODEL_FILE", "VERSION_FILE", "EVENTS_DIR",
           "parse_ref", "resolve", "versions", "verified", "events", "aliases", "alias_target", "last_move",
           "event_numbers", "is_alias_name"]

log = logging.getLogger("batchserve")
MODEL_FILE = "model.onnx"
VERSION_FILE = "version.json"
EVENTS_DIR = "_events"
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


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


def verified(root: str, info: VersionInfo, storage: Mapping[str, Any]) -> VersionInfo:
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
    return [verified(root, i, storage) for i in found] if verify else found


def event_numbers(root: str, storage: Mapping[str, Any]) -> list[int]:
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
    return [_event(root, seq, storage) for seq in event_numbers(root, storage)]


def aliases(trail: list[Event]) -> dict[str, Event]:
    """Each alias and the event that last moved it (an alias points where its last event says)."""
    out: dict[str, Event] = {}
    for e in trail:
        if e.alias is not None and e.action in ("promote", "rollback"):
            out[e.alias] = e
    return out


def last_move(root: str, alias: str, numbers: list[int], storage: Mapping[str, Any]) -> Event | None:
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
    return last_move(ref.uri, ref.alias, event_numbers(ref.uri, storage), storage)


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
        event = last_move(ref.uri, ref.alias, event_numbers(ref.uri, storage), storage)
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


def is_alias_name(alias: str) -> bool:
    """An alias is a name (letters, digits, ``_ . -``), never a number (``@3`` is a version)."""
    return bool(_TAG.match(alias)) and not alias.isdigit()
