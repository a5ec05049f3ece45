"""Where things are: fsspec filesystems from URLs, globs (only for paths that do not exist), the
hidden-name rule, overlap between locations, and the one-line mapping of storage failures."""

from __future__ import annotations

import errno
import functools
import os
import posixpath
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import fsspec
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from batchserve.config import storage_dict as storage_of
from batchserve.errors import BatchserveError, InputError, OutputError, StorageError
from batchserve.layout import STAGING_DIR

__all__ = [
    "storage_of",
    "STAGING_DIR",
    "same_version",
    "OWNER_KEY",
    "RECORD_KEY",
    "to_url",
    "join_url",
    "is_local",
    "absolute_url",
    "is_hidden",
    "same_location_or_inside",
    "locations_overlap",
]


#: Parquet key-value metadata naming the run that wrote a file: how --overwrite and --resume tell
#: a file batchserve wrote (and may replace) from a foreign one (which they never touch).
OWNER_KEY = b"batchserve.run_id"
#: Beside it, what --resume needs to keep a committed file no manifest lists (a run SIGKILLed before
#: its journal caught up): the run's fingerprint and the input's size and version, as JSON.
RECORD_KEY = b"batchserve.record"


#: Object stores whose conditional create (PutObject with If-None-Match: *) makes a lock atomic.
_ATOMIC_CREATE_PROTOCOLS = {"s3", "s3a"}


#: Object stores where creating a "folder" would silently create a bucket.
_BUCKET_PROTOCOLS = {"s3", "s3a", "gs", "gcs", "abfs", "az", "adl"}


T = TypeVar("T")


_GLOB_CHARS = set("*?[")


def _fs(url: str, storage: Mapping[str, Any]) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and path of a URL. Resolved once per (URL, options): fsspec's parse costs ~0.1 ms,
    and a task on a small file resolved its input, staging and output names six times (make bench,
    small files); fsspec caches the filesystem instances themselves, so reusing one changes nothing."""
    if url.startswith("/") and not storage:  # an absolute local path: fsspec would only strip a trailing /
        return _local(), url.rstrip("/") or "/"
    if not (url.startswith("/") or "://" in url):  # relative: it depends on the working directory
        return _resolve(url, storage)
    try:
        key = (url, tuple(sorted(storage.items())))
        hash(key)
    except TypeError:  # unhashable options (a dict of credentials): resolve every time
        return _resolve(url, storage)
    return _resolve_cached(*key)


@functools.cache
def _local() -> LocalFileSystem:
    return LocalFileSystem()


def _resolve(url: str, storage: Mapping[str, Any]) -> tuple[fsspec.AbstractFileSystem, str]:
    try:
        return url_to_fs(url, **storage)
    except (ImportError, ValueError) as exc:
        raise InputError(f"cannot open this location: {exc}", path=url) from None


@functools.lru_cache(maxsize=8192)
def _resolve_cached(url: str, storage: tuple[tuple[str, Any], ...]) -> tuple[fsspec.AbstractFileSystem, str]:
    return _resolve(url, dict(storage))


def to_url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A full URL for ``path`` on ``fs``, so a worker can reopen it."""
    if isinstance(fs, LocalFileSystem):
        return path  # plain paths keep manifests readable and tests simple
    return str(fs.unstrip_protocol(path))


def join_url(root: str, *parts: str) -> str:
    """Join URL parts with '/', whatever the protocol (os.path would break s3://)."""
    return posixpath.join(root.rstrip("/"), *[p.strip("/") for p in parts if p])


def _is_glob(path: str) -> bool:
    return any(c in _GLOB_CHARS for c in path)


def _globbing(fs: fsspec.AbstractFileSystem, path: str) -> bool:
    """A path that exists is a path, brackets and all; only a missing one is read as a glob."""
    return _is_glob(path) and not fs.exists(path)


def is_local(url: str, storage: Mapping[str, Any]) -> bool:
    return isinstance(_fs(url, storage)[0], LocalFileSystem)


def absolute_url(url: str, storage: Mapping[str, Any]) -> str:
    """Local paths made absolute on the client: remote workers must not resolve them in their own cwd."""
    fs, path = _fs(url, storage)
    if not url or not isinstance(fs, LocalFileSystem):
        return url
    return os.path.abspath(path) + ("/" if url.endswith("/") and path != "/" else "")


def _glob_head(path: str) -> str:
    """The literal folders before a glob's first wildcard: where it reads, and what outputs mirror."""
    head = []
    for part in path.split("/"):
        if _is_glob(part):
            break
        head.append(part)
    return "/".join(head)


def is_hidden(relpath: str) -> bool:
    # Spark/pyarrow convention: `_x` and `.x` are metadata or staging, never data.
    return any(part.startswith(("_", ".")) for part in relpath.split("/"))


def same_version(a: str | None, b: str | None) -> bool:
    """Whether two versions (see :func:`_version`) name one state of a file: equal text, or the same time
    written two ways (some stores' listings give an mtime in seconds, their ``info`` a datetime); an etag
    only equals itself."""
    if a == b:
        return True
    seconds = [_as_seconds(v) for v in (a, b)]
    return None not in seconds and abs(seconds[0] - seconds[1]) < 1e-3  # type: ignore[operator]


def _as_seconds(version: str | None) -> float | None:
    if version is None:
        return None
    try:
        return float(version)
    except ValueError:
        pass
    import datetime as dt

    try:
        when = dt.datetime.fromisoformat(version)
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp()


def _version(info: Mapping[str, Any]) -> str | None:
    for key in ("ETag", "etag", "mtime", "LastModified", "last_modified", "created"):
        if info.get(key) is not None:
            return str(info[key]).strip('"')
    return None


def _storage_failure(exc: BaseException, url: str, action: str) -> BatchserveError:
    if isinstance(exc, BatchserveError):
        return exc
    if isinstance(exc, FileNotFoundError):
        return InputError(f"cannot {action}: not found", path=url)
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        return OutputError(f"cannot {action}: {os.strerror(exc.errno)}; free space or choose another output",
                           path=url)
    if isinstance(exc, PermissionError):
        return InputError(
            f"cannot {action}: permission denied; check credentials (--storage-option) or file permissions",
            path=url,
        )
    text = f"{type(exc).__name__}: {exc}"
    if "NoCredentials" in text or "Unable to locate credentials" in text:
        return InputError(
            f"cannot {action}: no credentials for this object store; set them in the environment "
            "(e.g. AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY) or pass --storage-option key=... secret=...",
            path=url,
        )
    if any(code in text for code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden")):
        return InputError(f"cannot {action}: access denied by the object store; check credentials", path=url)
    return StorageError(f"cannot {action}: {type(exc).__name__}: {exc}", path=url)


def _on_fs(url: str, storage: Mapping[str, Any], action: str, fn: Callable[[Any, str], T]) -> T:
    """Run one filesystem call, turning any storage failure into a one-line error naming ``url``."""
    fs, path = _fs(url, storage)
    try:
        return fn(fs, path)
    except BatchserveError:
        raise
    except Exception as exc:  # noqa: BLE001 - every storage failure becomes a one-liner
        raise _storage_failure(exc, url, action) from None


def _comparable(url: str, storage: Mapping[str, Any]) -> tuple[type, str]:
    fs, path = _fs(url, storage)
    if _globbing(fs, path):  # a glob reads below its literal head
        path = _glob_head(path) or "/"
    if isinstance(fs, LocalFileSystem):
        path = os.path.realpath(path)
    return type(fs), path.rstrip("/") or "/"


def _inside(child: str, parent: str) -> bool:
    return child == parent or parent == "/" or child.startswith(parent + "/")


def same_location_or_inside(child: str, parent: str, storage: Mapping[str, Any]) -> bool:
    """Whether ``child`` is ``parent`` or below it (same filesystem; links resolved locally)."""
    kind_c, pc = _comparable(child, storage)
    kind_p, pp = _comparable(parent, storage)
    return kind_c is kind_p and _inside(pc, pp)


def locations_overlap(a: str, b: str, storage: Mapping[str, Any]) -> bool:
    """Whether either location is, or lies inside, the other: files, folders and globs alike."""
    return same_location_or_inside(a, b, storage) or same_location_or_inside(b, a, storage)
