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
import hashlib
import os
import posixpath
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

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
    "STAGING_DIR",
]

STAGING_DIR = "_temporary"
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


def _glob_head(path: str) -> str:
    """The literal folders before a glob's first wildcard: where it reads, and what outputs mirror."""
    head = []
    for part in path.split("/"):
        if _is_glob(part):
            break
        head.append(part)
    return "/".join(head)


def _hidden(relpath: str) -> bool:
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


def list_partitions(url: str, storage: Mapping[str, Any]) -> tuple[str, list[Partition]]:
    """Every ``*.parquet`` at ``url`` (file, folder/prefix, or glob), sorted by path.

    Returns the root that relative output paths are computed from.
    """
    fs, path = _fs(url, storage)
    try:
        if _is_glob(path):
            root = _glob_head(path) or "/"
            found = {p: fs.info(p) for p in fs.glob(path) if p.endswith(".parquet")}
            found = {p: i for p, i in found.items() if i.get("type") == "file"}
        elif fs.isfile(path):
            root = posixpath.dirname(path)
            found = {path: fs.info(path)}
        elif fs.isdir(path):
            root = path.rstrip("/")
            found = {
                p: i
                for p, i in fs.find(path, detail=True).items()
                if p.endswith(".parquet") and i.get("type", "file") == "file"
            }
        else:
            raise InputError("input not found: no such file, folder or prefix", path=url)
    except Exception as exc:  # noqa: BLE001 - every storage failure becomes a one-liner
        raise _storage_failure(exc, url, "list the input") from None
    parts = []
    for p in sorted(found):
        rel = posixpath.relpath(p, root) if root != "/" else p.lstrip("/")
        if _hidden(rel):
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
        self, final_url: str, staging_url: str, schema: pa.Schema, storage: Mapping[str, Any]
    ) -> None:
        self.final_url = final_url
        self.staging_url = staging_url
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
                self._writer = pq.ParquetWriter(self._staging, schema, **options)
            else:
                self._sink = self._fs.open(self._staging, "wb")
                self._writer = pq.ParquetWriter(self._sink, schema, **options)
        except Exception as exc:  # noqa: BLE001
            raise OutputError(f"cannot write the output: {type(exc).__name__}: {exc}", path=final_url) from None

    def write(self, batch: pa.RecordBatch) -> None:
        self._writer.write_batch(batch)
        self.rows += batch.num_rows

    def _finish(self) -> None:
        self._writer.close()
        if self._sink is not None:
            self._sink.close()

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

    def commit(self) -> tuple[int, str]:
        """Finish the file and move it to its final name; returns (bytes, checksum)."""
        self._finish()
        try:
            size, checksum = self._digest()
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
    return read_bytes(url, storage).decode("utf-8")


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


def prepare_output(url: str, storage: Mapping[str, Any]) -> None:
    """Create the output root and prove we can write there, before any scoring."""
    fs, path = _fs(url, storage)
    probe = join_url(path, STAGING_DIR, ".write-probe")
    try:
        fs.makedirs(path, exist_ok=True)
        fs.makedirs(posixpath.dirname(probe), exist_ok=True)
        with fs.open(probe, "wb") as fh:
            fh.write(b"ok")
        fs.rm(probe)
    except Exception as exc:  # noqa: BLE001
        raise OutputError(
            f"output is not writable: {type(exc).__name__}: {exc}; check the path and credentials",
            path=url,
        ) from None


def write_text_atomic(url: str, text: str, storage: Mapping[str, Any]) -> None:
    """Write a small text file so that readers see the old or the new content, never half."""
    fs, path = _fs(url, storage)
    tmp = join_url(posixpath.dirname(path), STAGING_DIR, "." + posixpath.basename(path) + ".tmp")
    try:
        fs.makedirs(posixpath.dirname(tmp), exist_ok=True)
        with fs.open(tmp, "wb") as fh:
            fh.write(text.encode("utf-8"))
        _move(fs, tmp, path)
        if isinstance(fs, LocalFileSystem):
            try:  # leave no empty staging folder beside a lone file (e.g. a profile)
                os.rmdir(posixpath.dirname(tmp))
            except OSError:
                pass
    except Exception as exc:  # noqa: BLE001
        raise _storage_failure(exc, url, "write") from None


def create_exclusive(url: str, text: str, storage: Mapping[str, Any]) -> None:
    """Create a small file only if absent (O_EXCL locally; best effort on object stores)."""
    fs, path = _fs(url, storage)
    try:
        fs.makedirs(posixpath.dirname(path) or ".", exist_ok=True)
    except Exception as exc:  # noqa: BLE001 - e.g. a regular file where a folder must go
        raise OutputError(f"output is not writable: {type(exc).__name__}: {exc}", path=url) from None
    try:
        if isinstance(fs, LocalFileSystem):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
            return
        if fs.exists(path):
            raise FileExistsError(path)
        with fs.open(path, "wb") as fh:
            fh.write(text.encode("utf-8"))
    except FileExistsError:
        raise OutputError("lock file appeared while taking it: another run started at the same moment",
                          path=url) from None
    except Exception as exc:  # noqa: BLE001
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


def same_location_or_inside(child: str, parent: str, storage: Mapping[str, Any]) -> bool:
    """Whether ``child`` is ``parent`` or below it (same filesystem)."""
    fs_c, pc = _fs(child, storage)
    fs_p, pp = _fs(parent, storage)
    if type(fs_c) is not type(fs_p):
        return False
    if isinstance(fs_c, LocalFileSystem):
        pc, pp = os.path.realpath(pc), os.path.realpath(pp)
    if _is_glob(pp):  # a glob: its literal head is the folder read
        pp = _glob_head(pp)
    pc, pp = pc.rstrip("/"), pp.rstrip("/")
    return pc == pp or pc.startswith(pp + "/")
