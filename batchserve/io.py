"""Storage at the edge: list Parquet partitions, stream row groups, stage and commit.

The only module that talks to fsspec and ``pyarrow.parquet``. Everything is
addressed by URL plus storage options so that a task can be shipped to any
worker and reopen the same data there (fsspec's pickled-recipe idea).

Commit protocol: a file is written under ``OUTPUT/_temporary/<run id>/<rel>``
and moved to ``OUTPUT/<rel>`` only once it is complete (an atomic rename on
local disks, a copy to the final key on object stores, which is atomic per
object). Readers never see a truncated file under a final name, and the
``_``-prefixed staging folder is ignored by Spark, pyarrow and by our own
listing.

Example::

    >>> root, parts = list_partitions("sample_data/transactions", {})  # doctest: +SKIP
    >>> parts[0].relpath  # doctest: +SKIP
    'date=2026-11-01/part-0.parquet'
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import posixpath
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from typing import Any, TypeVar

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from batchserve.config import storage_dict as storage_of
from batchserve.errors import BatchserveError, DataError, InputError, OutputError, StorageError

__all__ = [
    "Partition",
    "Footer",
    "list_partitions",
    "ParquetInput",
    "read_footer",
    "read_footers",
    "with_retries",
    "iter_batches",
    "StagedWriter",
    "writer_options",
    "read_bytes",
    "file_size",
    "exists",
    "output_entries",
    "prepare_output",
    "write_text_atomic",
    "read_text",
    "remove",
    "create_exclusive",
    "remove_staging",
    "join_url",
    "to_url",
    "same_location_or_inside",
    "locations_overlap",
    "absolute_url",
    "output_files",
    "is_local",
    "is_hidden",
    "storage_of",
    "check_output_root",
    "STAGING_DIR",
    "OWNER_KEY",
]

STAGING_DIR = "_temporary"
#: Parquet key-value metadata naming the run that wrote a file: how --overwrite and --resume tell
#: a file batchserve wrote (and may replace) from a foreign one (which they never touch).
OWNER_KEY = b"batchserve.run_id"
#: Object stores whose conditional create (PutObject with If-None-Match: *) makes a lock atomic.
_ATOMIC_CREATE_PROTOCOLS = {"s3", "s3a"}
#: Object stores where creating a "folder" would silently create a bucket.
_BUCKET_PROTOCOLS = {"s3", "s3a", "gs", "gcs", "abfs", "az", "adl"}
T = TypeVar("T")
_GLOB_CHARS = set("*?[")


@dataclasses.dataclass(frozen=True)
class Partition:
    """One input Parquet file: where it is, where its output goes, and its version."""

    url: str
    relpath: str
    size: int
    #: mtime or etag: lets a later run tell whether the input changed.
    version: str | None = None


@dataclasses.dataclass(frozen=True)
class Footer:
    """What a Parquet footer says, read without touching any data page."""

    schema: pa.Schema
    num_rows: int
    row_group_rows: tuple[int, ...]


def _fs(url: str, storage: Mapping[str, Any]) -> tuple[fsspec.AbstractFileSystem, str]:
    try:
        return url_to_fs(url, **storage)
    except (ImportError, ValueError) as exc:
        raise InputError(f"cannot open this location: {exc}", path=url) from None


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


def _walk_local(root: str) -> list[str]:
    """Every ``*.parquet`` below a local folder, following symbolic links (fsspec lists them as
    type ``other`` and a plain find would skip them), each folder visited once so a link loop ends.

    A link that points nowhere is an error naming it: a silently missing file is lost rows.
    """
    found: list[str] = []
    seen: set[str] = set()
    for top, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:  # a loop, or two links to one folder: read it once
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if os.path.realpath(os.path.join(top, d)) not in seen)
        for name in files:
            if not name.endswith(".parquet"):
                continue
            full = os.path.join(top, name)
            if not os.path.exists(full):
                raise InputError("broken symbolic link: it points to a file that does not exist", path=full)
            if os.path.isfile(full):
                found.append(full)
    return found


def _listed_files(fs: fsspec.AbstractFileSystem, path: str, url: str) -> tuple[str, dict[str, Any], bool]:
    """(root, {path: info}, explicit) for a file, folder/prefix or glob."""
    local = isinstance(fs, LocalFileSystem)
    if _globbing(fs, path):
        root = _glob_head(path) or "/"
        found: dict[str, Any] = {}
        for match in fs.glob(path):  # a matched folder (date=2026-11-0*) stands for the Parquet files below it
            if local and os.path.isdir(match):
                found.update({p: _local_info(p) for p in _walk_local(match)})
            elif not local and fs.isdir(match):
                found.update(_only_files(
                    {p: i for p, i in fs.find(match, detail=True).items() if p.endswith(".parquet")}, url))
            elif match.endswith(".parquet"):
                if local:
                    if os.path.isfile(match):
                        found[match] = _local_info(match)
                else:
                    found.update(_only_files({match: fs.info(match)}, url))
        return root, found, False
    if fs.isfile(path) or (local and os.path.isfile(path)):
        return posixpath.dirname(path), {path: fs.info(path) if not local else _local_info(path)}, True
    if fs.isdir(path) or (local and os.path.isdir(path)):
        root = path.rstrip("/") or "/"
        if local:
            return root, {p: _local_info(p) for p in _walk_local(root)}, False
        return root, _only_files(
            {p: i for p, i in fs.find(path, detail=True).items() if p.endswith(".parquet")}, url
        ), False
    if local and os.path.islink(path):
        raise InputError("broken symbolic link: it points to a file that does not exist", path=url)
    raise InputError("input not found: no such file, folder or prefix", path=url)


def _local_info(path: str) -> dict[str, Any]:
    st = os.stat(path)  # follows links: the size and mtime of the data itself
    return {"size": st.st_size, "mtime": st.st_mtime}


def _only_files(found: dict[str, Any], url: str) -> dict[str, Any]:
    """Entries a store lists as neither file nor folder (links, specials) fail loudly, never vanish."""
    odd = sorted(p for p, i in found.items() if i.get("type", "file") not in ("file", "directory"))
    if odd:
        raise InputError(
            f"{len(odd)} input entr{'y is' if len(odd) == 1 else 'ies are'} neither a file nor a folder "
            f"(e.g. {odd[0]}); batchserve will not skip them silently",
            path=url,
        )
    return {p: i for p, i in found.items() if i.get("type", "file") == "file"}


def list_partitions(url: str, storage: Mapping[str, Any]) -> tuple[str, list[Partition]]:
    """Every ``*.parquet`` at ``url`` (file, folder/prefix, or glob), sorted by path.

    Returns the root that relative output paths are computed from. A path that exists is
    taken literally even when it contains glob characters; a file named explicitly is read
    even when its name starts with ``_`` or ``.`` (only listings skip those).
    """
    fs, path = _fs(url, storage)
    try:
        root, found, explicit = _listed_files(fs, path, url)
    except Exception as exc:  # noqa: BLE001 - every storage failure becomes a one-liner
        raise _storage_failure(exc, url, "list the input") from None
    parts = []
    for p in sorted(found):
        rel = posixpath.relpath(p, root) if root != "/" else p.lstrip("/")
        if is_hidden(rel) and not explicit:
            continue
        info = found[p]
        parts.append(Partition(to_url(fs, p), rel, int(info.get("size") or 0), _version(info)))
    if not parts:
        raise InputError(
            "no Parquet files found (looked for *.parquet recursively, skipping _ and . names)",
            path=url,
        )
    return to_url(fs, root), parts


def _open_parquet(url: str, storage: Mapping[str, Any]) -> pq.ParquetFile:
    fs, path = _fs(url, storage)
    try:
        if isinstance(fs, LocalFileSystem):
            return pq.ParquetFile(path, memory_map=True)
        # pre_buffer coalesces column-chunk reads into few large range requests,
        # which is what object stores want.
        return pq.ParquetFile(fs.open(path, "rb"), pre_buffer=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError, EOFError) as exc:
        if isinstance(exc, (FileNotFoundError, PermissionError)):
            raise _storage_failure(exc, url, "open the input file") from None
        if isinstance(exc, (pa.ArrowInvalid, pa.ArrowNotImplementedError)) or "Parquet" in str(exc):
            raise DataError(
                f"not a readable Parquet file (corrupt or truncated?): {exc}", path=url
            ) from None
        raise _storage_failure(exc, url, "open the input file") from None


class ParquetInput:
    """One opened Parquet file: its footer and its batches from a single open.

    Tasks need both; opening twice meant a second size probe and footer read
    per file (two extra requests on an object store).
    """

    def __init__(self, url: str, storage: Mapping[str, Any]) -> None:
        self.url = url
        self._pf = _open_parquet(url, storage)
        md = self._pf.metadata
        self.footer = Footer(
            schema=self._pf.schema_arrow,
            num_rows=md.num_rows,
            row_group_rows=tuple(md.row_group(i).num_rows for i in range(md.num_row_groups)),
        )

    def batches(
        self, *, columns: Sequence[str] | None, batch_size: int, row_groups: Sequence[int] | None = None
    ) -> Iterator[pa.RecordBatch]:
        """Stream record batches of at most ``batch_size`` rows, one row group at a time; closes the file."""
        groups = list(range(len(self.footer.row_group_rows))) if row_groups is None else list(row_groups)
        try:
            yield from self._pf.iter_batches(
                batch_size=batch_size, row_groups=groups, columns=list(columns) if columns is not None else None,
                use_threads=True,
            )
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, EOFError) as exc:
            raise DataError(f"cannot decode Parquet data (corrupt or truncated?): {exc}", path=self.url) from None
        except OSError as exc:
            raise _storage_failure(exc, self.url, "read the input file") from None
        finally:
            self.close()

    def close(self) -> None:
        self._pf.close()


def read_footer(url: str, storage: Mapping[str, Any]) -> Footer:
    """Schema and row counts from the footer only: cheap enough to check every file up front."""
    src = ParquetInput(url, storage)
    src.close()
    return src.footer


def with_retries(fn: Callable[[], T], retries: int = 3, base_delay: float = 0.5) -> T:
    """Call ``fn``, retrying transient storage errors with exponential backoff and jitter."""
    attempt = 0
    while True:
        try:
            return fn()
        except BatchserveError as exc:
            if not exc.transient or attempt >= retries:
                raise
            time.sleep(min(10.0, base_delay * 2**attempt) * (0.5 + random.random()))
            attempt += 1


def read_footers(
    urls: Sequence[str], storage: Mapping[str, Any], threads: int = 16, retries: int = 3,
    keep_errors: bool = False,
) -> list[Any]:
    """Footers of many files in parallel: listing 10k objects must not take 10k round trips in a row.

    With ``keep_errors``, a file's non-transient error (corrupt, unreadable) is returned in
    its place instead of raised, so a caller can skip bad files and keep the rest.
    """
    def one(u: str) -> Footer | BatchserveError:
        try:
            return with_retries(lambda: read_footer(u, storage), retries)
        except BatchserveError as exc:
            if not keep_errors or exc.transient:
                raise
            return exc

    if len(urls) <= 1:
        return [one(u) for u in urls]
    with ThreadPoolExecutor(max_workers=min(threads, len(urls))) as pool:
        return list(pool.map(one, urls))


def iter_batches(
    url: str,
    storage: Mapping[str, Any],
    *,
    columns: Sequence[str] | None,
    batch_size: int,
    row_groups: Sequence[int] | None = None,
) -> Iterator[pa.RecordBatch]:
    """Stream record batches of at most ``batch_size`` rows, one row group at a time."""
    yield from ParquetInput(url, storage).batches(columns=columns, batch_size=batch_size, row_groups=row_groups)


def writer_options(schema: pa.Schema) -> dict[str, Any]:
    """Parquet writer settings for scored files.

    Dictionary encoding only where it pays (strings, ints, bools): on
    continuous floats pyarrow builds a dictionary, overflows it and falls back
    to plain, which made writing 7x slower and files 1.5x larger in
    ``make bench`` profiling.
    """
    def wants_dictionary(t: pa.DataType) -> bool:
        return bool(
            pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
            or pa.types.is_integer(t) or pa.types.is_boolean(t) or pa.types.is_dictionary(t)
        )

    return {
        "use_dictionary": [f.name for f in schema if wants_dictionary(f.type)],
        "compression": "snappy",
    }


def _move(fs: Any, src: str, dst: str) -> None:
    """Put a finished file under its final name: an atomic rename locally, a copy+delete on object stores."""
    if isinstance(fs, LocalFileSystem):
        os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
        os.replace(src, dst)  # atomic on POSIX
    else:
        fs.mv(src, dst)


class StagedWriter:
    """Write one Parquet file under a staging name; :meth:`commit` moves it into place.

    Used as a context manager: leaving the block with an exception removes the
    staging file, so nothing half-written ever sits under a final name.
    """

    def __init__(
        self, final_url: str, staging_url: str, schema: pa.Schema, storage: Mapping[str, Any],
        owner: str | None = None,
    ) -> None:
        self.final_url = final_url
        self.staging_url = staging_url
        if owner is not None:  # stamped in the footer: a later --overwrite knows the file is ours
            schema = schema.with_metadata({**(schema.metadata or {}), OWNER_KEY: owner.encode()})
        self.schema = schema
        self._storage = storage
        self._fs, self._staging = _fs(staging_url, storage)
        self._final = _fs(final_url, storage)[1]
        self._sink: Any = None
        self.rows = 0
        try:
            self._fs.makedirs(posixpath.dirname(self._staging), exist_ok=True)
            options = writer_options(schema)
            if isinstance(self._fs, LocalFileSystem):
                self._writer = pq.ParquetWriter(self._staging, self.schema, **options)
            else:
                self._sink = self._fs.open(self._staging, "wb")
                self._writer = pq.ParquetWriter(self._sink, self.schema, **options)
        except Exception as exc:  # noqa: BLE001
            failure = _storage_failure(exc, final_url, "write the output")
            if not isinstance(failure, OutputError):
                failure = OutputError(f"cannot write the output: {type(exc).__name__}: {exc}", path=final_url)
            raise failure from None

    def write(self, batch: pa.RecordBatch) -> None:
        try:
            self._writer.write_batch(batch)
        except OSError as exc:  # a full disk or a dropped connection, named once, not a traceback
            raise _storage_failure(exc, self.final_url, "write the output") from None
        self.rows += batch.num_rows

    def _finish(self) -> None:
        try:
            self._writer.close()
            if self._sink is not None:
                self._sink.close()
        except OSError as exc:
            raise _storage_failure(exc, self.final_url, "write the output") from None

    def close_staged(self) -> int:
        """Finish the file but leave it staged (a piece awaiting its merge); returns bytes."""
        self._finish()
        return int(self._fs.size(self._staging))

    def _digest(self) -> tuple[int, str]:
        """(bytes, ``sha256:<hex>``) of the finished staged file, read back once (it is in the page cache)."""
        digest = hashlib.sha256()
        size = 0
        with self._fs.open(self._staging, "rb") as fh:
            while chunk := fh.read(1 << 22):
                digest.update(chunk)
                size += len(chunk)
        return size, "sha256:" + digest.hexdigest()

    def commit(self, fence: AbstractContextManager[Any] | None = None) -> tuple[int, str]:
        """Finish the file and move it to its final name; returns (bytes, checksum).

        ``fence`` wraps the move alone: the worker passes one that holds the run's commit lock and
        raises if the client has stopped the run, so no file lands after the manifest was written.
        """
        self._finish()
        try:
            size, checksum = self._digest()
        except Exception as exc:  # noqa: BLE001
            raise _storage_failure(exc, self.final_url, "commit the output file") from None
        with fence if fence is not None else nullcontext():
            try:
                _move(self._fs, self._staging, self._final)
            except Exception as exc:  # noqa: BLE001
                raise _storage_failure(exc, self.final_url, "commit the output file") from None
        return size, checksum

    def abort(self) -> None:
        try:
            self._finish()
        except Exception:  # noqa: BLE001,S110 - we are already failing; keep the first error
            pass
        try:
            self._fs.rm(self._staging)
        except Exception:  # noqa: BLE001,S110
            pass

    def __enter__(self) -> StagedWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.abort()


def _on_fs(url: str, storage: Mapping[str, Any], action: str, fn: Callable[[Any, str], T]) -> T:
    """Run one filesystem call, turning any storage failure into a one-line error naming ``url``."""
    fs, path = _fs(url, storage)
    try:
        return fn(fs, path)
    except BatchserveError:
        raise
    except Exception as exc:  # noqa: BLE001 - every storage failure becomes a one-liner
        raise _storage_failure(exc, url, action) from None


def _read_all(fs: Any, path: str) -> bytes:
    with fs.open(path, "rb") as fh:
        return bytes(fh.read())


def read_bytes(url: str, storage: Mapping[str, Any]) -> bytes:
    return _on_fs(url, storage, "read", _read_all)


def read_text(url: str, storage: Mapping[str, Any]) -> str:
    """A small text artifact (manifest, profile); anything not UTF-8 is the wrong file, said in one line."""
    data = read_bytes(url, storage)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        kind = "a Parquet file" if data[:4] == b"PAR1" else "binary data"
        raise InputError(f"expected a UTF-8 JSON file, found {kind}", path=url) from None


def file_size(url: str, storage: Mapping[str, Any]) -> int:
    return _on_fs(url, storage, "stat", lambda fs, p: int(fs.size(p)))


def exists(url: str, storage: Mapping[str, Any]) -> bool:
    return _on_fs(url, storage, "check", lambda fs, p: bool(fs.exists(p)))


def isdir(url: str, storage: Mapping[str, Any]) -> bool:
    return _on_fs(url, storage, "check", lambda fs, p: bool(fs.isdir(p)))


def list_dir(url: str, storage: Mapping[str, Any]) -> list[str]:
    """Names directly under a folder/prefix (empty when it does not exist)."""

    def names(fs: Any, path: str) -> list[str]:
        if not fs.isdir(path):
            return []
        return sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False))

    return _on_fs(url, storage, "list", names)


def output_entries(url: str, storage: Mapping[str, Any]) -> list[str]:
    """Every file below the output root, relative to it (staging included)."""

    def entries(fs: Any, path: str) -> list[str]:
        if not fs.isdir(path):
            if fs.isfile(path):
                raise OutputError("output must be a folder or prefix, but a file is there", path=url)
            return []
        root = path.rstrip("/")
        return sorted(posixpath.relpath(p, root) for p in fs.find(root))

    return _on_fs(url, storage, "list the output", entries)


def output_files(url: str, storage: Mapping[str, Any]) -> dict[str, int]:
    """Every file below the output root with its size, in one listing (staging included)."""

    def entries(fs: Any, path: str) -> dict[str, int]:
        fs.invalidate_cache(path)  # workers wrote here from other processes: no stale listing
        if not fs.isdir(path):
            return {}
        root = path.rstrip("/")
        return {posixpath.relpath(p, root): int(i.get("size") or 0)
                for p, i in fs.find(root, detail=True).items() if i.get("type", "file") != "directory"}

    return _on_fs(url, storage, "list the output", entries)


def check_output_root(url: str, storage: Mapping[str, Any]) -> None:
    """Before anything is created there (the lock comes first): the output's bucket must exist."""
    fs, path = _fs(url, storage)
    try:
        _check_bucket(fs, path, url)
    except BatchserveError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise _storage_failure(exc, url, "check the output") from None


def _check_bucket(fs: Any, path: str, url: str) -> None:
    """On object stores, refuse an output whose bucket is missing rather than create one silently."""
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    if not _BUCKET_PROTOCOLS.intersection(protocols):
        return
    bucket = path.split("/", 1)[0]
    if bucket and not fs.exists(bucket):
        raise OutputError(
            f"output bucket {bucket!r} does not exist; create it first (batchserve never creates buckets)",
            path=url,
        )


def prepare_output(url: str, storage: Mapping[str, Any]) -> None:
    """Create the output root and prove we can write there, before any scoring."""
    fs, path = _fs(url, storage)
    probe = join_url(path, STAGING_DIR, ".write-probe")
    try:
        _check_bucket(fs, path, url)
        fs.makedirs(path, exist_ok=True)
        fs.makedirs(posixpath.dirname(probe), exist_ok=True)
        with fs.open(probe, "wb") as fh:
            fh.write(b"ok")
    except BatchserveError:
        raise
    except Exception as exc:  # noqa: BLE001
        failure = _storage_failure(exc, url, "write the output")
        if not isinstance(failure, OutputError):
            failure = OutputError(
                f"output is not writable: {type(exc).__name__}: {exc}; check the path and credentials", path=url
            )
        raise failure from None
    finally:
        try:  # a probe half-written on a full disk must not stay behind
            if fs.exists(probe):
                fs.rm(probe)
        except Exception:  # noqa: BLE001, S110 - best effort; staging is hidden and cleaned next run
            pass


def write_text_atomic(url: str, text: str, storage: Mapping[str, Any]) -> None:
    """Write a small text file so that readers see the old or the new content, never half."""
    fs, path = _fs(url, storage)
    tmp = join_url(posixpath.dirname(path), STAGING_DIR, "." + posixpath.basename(path) + ".tmp")
    try:
        fs.makedirs(posixpath.dirname(tmp), exist_ok=True)
        with fs.open(tmp, "wb") as fh:
            fh.write(text.encode("utf-8"))
        _move(fs, tmp, path)
    except Exception as exc:  # noqa: BLE001
        try:  # no temporary file left behind by a failed write
            if fs.exists(tmp):
                fs.rm(tmp)
        except Exception:  # noqa: BLE001, S110
            pass
        raise _storage_failure(exc, url, "write") from None
    finally:
        if isinstance(fs, LocalFileSystem):
            try:  # leave no empty staging folder beside a lone file (e.g. a profile)
                os.rmdir(posixpath.dirname(tmp))
            except OSError:
                pass


def create_exclusive(url: str, text: str, storage: Mapping[str, Any]) -> bool:
    """Create a small file only if absent; exactly one of many concurrent callers succeeds.

    Locally ``O_EXCL``; on S3 ``PutObject`` with ``If-None-Match: *`` (s3fs's ``mode="create"``).
    Returns whether the store made that guarantee: elsewhere it is check-then-write, best effort.
    Raises :class:`FileExistsError` when the file is already there.
    """
    fs, path = _fs(url, storage)
    try:
        fs.makedirs(posixpath.dirname(path) or ".", exist_ok=True)
    except Exception as exc:  # noqa: BLE001 - e.g. a regular file where a folder must go
        raise OutputError(f"output is not writable: {type(exc).__name__}: {exc}", path=url) from None
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    try:
        if isinstance(fs, LocalFileSystem):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
            return True
        if _ATOMIC_CREATE_PROTOCOLS.intersection(protocols):
            fs.pipe_file(path, text.encode("utf-8"), mode="create")
            return True
        if fs.exists(path):
            raise FileExistsError(path)
        with fs.open(path, "wb") as fh:
            fh.write(text.encode("utf-8"))
        return False
    except FileExistsError:
        raise
    except Exception as exc:  # noqa: BLE001
        if "PreconditionFailed" in f"{type(exc).__name__}: {exc}" or "412" in str(exc):
            raise FileExistsError(path) from None
        raise _storage_failure(exc, url, "create") from None


def remove(url: str, storage: Mapping[str, Any], *, recursive: bool = False) -> None:
    def rm(fs: Any, path: str) -> None:
        if fs.exists(path):
            fs.rm(path, recursive=recursive)

    _on_fs(url, storage, "remove", rm)


def remove_staging(output_url: str, storage: Mapping[str, Any], run_id: str | None = None) -> None:
    """Drop staging files of one run (or all runs), e.g. after a success or a SIGKILL."""
    target = join_url(output_url, STAGING_DIR, run_id or "")
    try:
        remove(target, storage, recursive=True)
    except BatchserveError:
        pass  # leftover staging is harmless: it is hidden and cleaned by the next run


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
