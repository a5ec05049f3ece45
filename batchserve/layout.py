"""The names batchserve gives the files it keeps beside the scored data in an output folder, and
what makes a folder "not empty". One leaf module with no third-party import, so the cheap
pre-flight check (:mod:`batchserve.preflight`) refuses a full local output with planning's own
words before pyarrow, onnx or fsspec load, and the two can never disagree on what counts.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from collections.abc import Iterable

from batchserve.errors import OutputError

__all__ = ["MANIFEST_NAME", "SUCCESS_NAME", "LOCK_NAME", "STAGING_DIR", "RUNS_DIR", "record_ids", "staging_name",
           "local_files", "content", "nested_outputs", "not_empty_error"]

MANIFEST_NAME = "_manifest.json"
SUCCESS_NAME = "_SUCCESS"
LOCK_NAME = "_batchserve.lock"
#: Where files are written before their commit (one folder per run id below it).
STAGING_DIR = "_temporary"
#: Every run's manifest, kept for good (``_runs/<run_id>.json``), and its outputs' statistics.
RUNS_DIR = "_runs"


def record_ids(names: Iterable[str]) -> list[str]:
    """The run ids among the names in ``RUNS_DIR``, sorted (oldest first: a run id starts with its UTC
    start time): ``<run_id>.json`` is a run's record, ``<run_id>.stats.json`` its outputs' statistics."""
    return sorted(n[: -len(".json")] for n in names if n.endswith(".json") and not n.endswith(".stats.json"))


def staging_name(relpath: str) -> str:
    """The flat name an output file is staged under, in its run's staging folder.

    Flat, not the output's own folders: a run of 2,000 hourly files made and removed 2,000 staging
    folders (0.19 s of the run's last steps in ``make bench``, small files, and a mkdir per file on the
    workers). ``%`` and ``/`` are escaped, so two paths never share a name; a name too long for a
    file system (255 bytes) becomes a digest of the path, still one per path.
    """
    flat = relpath.replace("%", "%25").replace("/", "%2F")
    if len(flat.encode()) <= 200:  # room for a piece suffix (.piece-00000)
        return flat
    return hashlib.sha256(relpath.encode()).hexdigest() + ".parquet"


def local_files(root: str) -> dict[str, int]:
    """A local folder's files and sizes with ``os.scandir``: fsspec's find built an info dict per entry
    in Python (0.3 s for 2,000 files, and a run lists its output twice). Like fsspec, every entry that
    is not a folder counts (a broken link with size 0), and linked folders are followed, once each."""
    found: dict[str, int] = {}
    if not os.path.isdir(root):
        return found
    seen: set[tuple[int, int]] = set()  # folders by device and inode: realpath costs a stat per component
    stack = [root]
    while stack:
        top = stack.pop()
        st = os.stat(top)
        if (st.st_dev, st.st_ino) in seen:  # a link loop, or two links to one folder
            continue
        seen.add((st.st_dev, st.st_ino))
        with os.scandir(top) as it:
            for entry in it:
                if entry.is_dir():
                    stack.append(entry.path)
                    continue
                try:
                    size = entry.stat().st_size
                except OSError:  # a link to nothing
                    size = 0
                found[posixpath.relpath(entry.path, root)] = size
    return found


def content(relpaths: Iterable[str]) -> list[str]:
    """The files that make an output folder not empty: all but the lock and the staging area (a
    live or killed run's, which the lock and the next run deal with), sorted."""
    return sorted(rel for rel in relpaths if rel != LOCK_NAME and not rel.startswith(STAGING_DIR + "/"))


def nested_outputs(relpaths: Iterable[str]) -> list[str]:
    """The subfolders that are outputs of their own (a manifest, a ``_SUCCESS`` or a lock of a run in them),
    outermost first: what ``score -o X/sub`` leaves inside ``X``. Staging and run records are not outputs.

        >>> nested_outputs(["a.parquet", "sub/_SUCCESS", "sub/p.parquet", "_runs/x.json"])
        ['sub']
    """
    markers = (MANIFEST_NAME, SUCCESS_NAME, LOCK_NAME)
    found = {posixpath.dirname(rel) for rel in relpaths if posixpath.basename(rel) in markers}
    found.discard("")
    found = {f for f in found if f.split("/")[0] not in (STAGING_DIR, RUNS_DIR)}
    return sorted(f for f in found if not any(f.startswith(o + "/") for o in found))


def not_empty_error(files: int, path: str, scope: str = "") -> OutputError:
    """The refusal of an output holding files in the run's scope, without --overwrite or --resume."""
    where = f"holds {files} file(s) in this run's scope ({scope})" if scope else f"is not empty ({files} files)"
    return OutputError(
        f"output folder {where}; pass --resume to finish an earlier run or --overwrite to replace it",
        path=path,
    )
