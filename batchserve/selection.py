"""``--filter`` on hive partition keys: which input files a run selects, decided from their paths alone.

An analyst rescoring a month writes ``--filter 'date>=2026-11-01' --filter 'date<2026-12-01'``; a
nightly job ``--filter date=${ds}``. Filters are checked when settings are resolved (a typo is one
line before anything is listed) and applied to the listing before any footer is read, so a filter
that selects one day of a year costs one day of footer reads.

Values compare as dates when both sides parse as ISO dates (``2026-11-05``, with or without a
time), else as numbers when both parse as numbers (so ``hour>=9`` is not a string comparison that
puts ``10`` before ``9``), else as text. Hive folders escape special characters as ``%XX``; values
are unescaped before comparing.

    >>> f = parse_filter("date>=2026-11-03")
    >>> f.matches({"date": "2026-11-05"}), f.matches({"date": "2026-11-02"})
    (True, False)
    >>> parse_filter("region in (eu, us)").matches({"region": "us"})
    True
    >>> parse_filter("hour<10").matches({"hour": "9"})
    True
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence

from batchserve.errors import ConfigError, closest

__all__ = ["Filter", "Scope", "parse_filter", "parse_filters", "hive_keys", "path_keys", "select", "without_fixed_keys"]

_OPS = ("<=", ">=", "!=", "==", "=", "<", ">")
_EXPR_RE = re.compile(r"^\s*([A-Za-z_][\w.\-]*)\s*(<=|>=|!=|==|=|<|>)\s*(.*?)\s*$")
_IN_RE = re.compile(r"^\s*([A-Za-z_][\w.\-]*)\s+(not\s+in|in)\s*\((.*)\)\s*$", re.IGNORECASE)
_SYNTAX = "KEY=VALUE, KEY!=VALUE, KEY<VALUE (<, <=, >, >=) or KEY in (A,B)"


@dataclasses.dataclass(frozen=True)
class Filter:
    """One condition on one hive key; a file is selected when every filter matches it."""

    key: str
    op: str
    values: tuple[str, ...]
    text: str

    def matches(self, keys: Mapping[str, str]) -> bool:
        """Whether a file with these hive keys passes; a file without the key does not."""
        have = keys.get(self.key)
        if have is None:
            return False
        if self.op in ("in", "not in"):
            hit = any(_compare(have, v) == 0 for v in self.values)
            return hit if self.op == "in" else not hit
        c = _compare(have, self.values[0])
        return {"=": c == 0, "!=": c != 0, "<": c < 0, "<=": c <= 0, ">": c > 0, ">=": c >= 0}[self.op]


def parse_filter(text: str) -> Filter:
    """One expression, or a :class:`ConfigError` that names it and shows the syntax."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"--filter needs an expression such as date>=2026-11-03 ({_SYNTAX}), got {text!r}")
    m = _IN_RE.match(text)
    if m:
        values = tuple(v.strip().strip("'\"") for v in m.group(3).split(","))
        if not all(values):
            raise ConfigError(f"--filter {text!r}: a value in the list is empty; write KEY in (A,B)")
        op = "not in" if m.group(2).lower().startswith("not") else "in"
        return Filter(m.group(1), op, values, text.strip())
    m = _EXPR_RE.match(text)
    if not m:
        raise ConfigError(f"--filter {text!r} is not an expression batchserve reads; write {_SYNTAX}")
    key, op, value = m.group(1), m.group(2), m.group(3).strip().strip("'\"")
    if not value:
        raise ConfigError(f"--filter {text!r} has no value after {op}")
    if any(o in value for o in _OPS):
        raise ConfigError(f"--filter {text!r} has two operators; give one condition per --filter")
    return Filter(key, "=" if op == "==" else op, (value,), text.strip())


def parse_filters(texts: Iterable[str]) -> tuple[Filter, ...]:
    return tuple(parse_filter(t) for t in texts)


def hive_keys(relpath: str) -> dict[str, str]:
    """The ``key=value`` folders on a file's path below the input root (the innermost wins)."""
    keys: dict[str, str] = {}
    for segment in relpath.split("/")[:-1]:
        key, sep, value = segment.partition("=")
        if sep and key:
            keys[urllib.parse.unquote(key)] = urllib.parse.unquote(value)
    return keys


def path_keys(url: str) -> dict[str, str]:
    """The hive keys an output's own path fixes: its trailing ``key=value`` folders
    (``s3://b/scored/date=2026-11-02/`` fixes ``date``). Folders above a plain name are not keys a reader
    of the output sees, so only the trailing run counts."""
    keys: dict[str, str] = {}
    for segment in reversed(url.rstrip("/").split("/")):
        key, sep, value = segment.partition("=")
        if not (sep and key) or "://" in segment or ":" in key:
            break
        keys.setdefault(urllib.parse.unquote(key), urllib.parse.unquote(value))
    return keys


def without_fixed_keys(relpath: str, fixed: Mapping[str, str]) -> str:
    """An input's path below the output once the keys the output's own path fixes are dropped:
    ``--filter date=X -o scored/date=X`` writes ``scored/date=X/part-0.parquet``, never
    ``scored/date=X/date=X/part-0.parquet`` (which polars and pyarrow refuse to read as one dataset).
    An input whose folder gives a fixed key another value cannot go there: a :class:`ConfigError`."""
    if not fixed:
        return relpath
    *folders, name = relpath.split("/")
    kept = []
    for segment in folders:
        key, sep, value = segment.partition("=")
        key, value = urllib.parse.unquote(key), urllib.parse.unquote(value)
        if sep and key in fixed:
            if value != fixed[key]:
                raise ConfigError(
                    f"input file {relpath} has {key}={value}, but the output's path fixes {key}={fixed[key]}; "
                    f"select it with --filter {key}={fixed[key]}, or write to the output's parent folder"
                )
            continue
        kept.append(segment)
    return "/".join([*kept, name])


@dataclasses.dataclass(frozen=True)
class Scope:
    """The output files a run owns (Spark's dynamic partition overwrite): those whose hive keys pass
    the run's ``--filter``s, the keys fixed by the output's own path counted in. A run never removes,
    replaces, counts or re-lists a file outside its scope, with ``--resume``, ``--overwrite`` or neither;
    without filters it owns the whole output.

        >>> s = Scope(parse_filters(["date=2026-11-02"]))
        >>> s.owns("date=2026-11-02/part-0.parquet"), s.owns("date=2026-11-01/part-0.parquet")
        (True, False)
        >>> Scope(parse_filters(["date=2026-11-02"]), {"date": "2026-11-02"}).owns("part-0.parquet")
        True
    """

    filters: tuple[Filter, ...] = ()
    fixed: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def whole(self) -> bool:
        return not self.filters

    def owns(self, relpath: str) -> bool:
        if not self.filters:
            return True
        keys = {**self.fixed, **hive_keys(relpath)}
        return all(f.matches(keys) for f in self.filters)

    def as_dict(self) -> dict[str, object]:
        """How the manifest records it: the filters' texts (empty: the whole output)."""
        return {"filters": [f.text for f in self.filters], "fixed_keys": dict(self.fixed)}

    @classmethod
    def of(cls, filters: Sequence[str], output: str) -> Scope:
        return cls(parse_filters(filters), path_keys(output) if filters else {})


def select(relpaths: Sequence[str], filters: Sequence[Filter]) -> list[bool]:
    """Which files pass every filter. A key that no file has is a typo, named with the keys there are."""
    keyed = [hive_keys(r) for r in relpaths]
    present = sorted({k for keys in keyed for k in keys})
    for f in filters:
        if f.key not in present:
            raise ConfigError(
                f"--filter {f.text!r}: no input file has a hive folder key {f.key!r}"
                + closest(f.key, present, quote=True)
                + (f" (keys: {', '.join(present)})" if present else " (the input has no key=value folders)")
            )
    return [all(f.matches(keys) for f in filters) for keys in keyed]


def _compare(a: str, b: str) -> int:
    """-1, 0 or 1: as dates when both parse so, else numbers, else text."""
    for parse in (_as_date, _as_number):
        x, y = parse(a), parse(b)
        if x is not None and y is not None:
            return (x > y) - (x < y)  # type: ignore[operator]
    return (a > b) - (a < b)


def _as_date(text: str) -> dt.datetime | None:
    if not re.match(r"^\d{4}-\d{2}-\d{2}", text):
        return None
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return value.replace(tzinfo=None) if value.tzinfo is None else value.astimezone(dt.UTC).replace(tzinfo=None)


def _as_number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None
