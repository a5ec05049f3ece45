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

# Modules: ``paths`` (URLs, globs, overlap, failures), ``reading`` (listing, footers, batches),
# ``stable`` (checked reads of a local file that may change underneath), ``writing`` (staging, commit,
# atomic text, the lock's exclusive create).
from __future__ import annotations

from batchserve.io.paths import (
    OWNER_KEY,
    RECORD_KEY,
    STAGING_DIR,
    absolute_url,
    is_hidden,
    is_local,
    join_url,
    locations_overlap,
    same_location_or_inside,
    same_version,
    storage_of,
    to_url,
)
from batchserve.io.reading import (
    Footer,
    ParquetInput,
    Partition,
    exists,
    file_checksum,
    file_size,
    input_version,
    isdir,
    list_dir,
    list_partitions,
    read_bytes,
    read_footer,
    read_footers,
    read_text,
    row_group_runs,
    with_retries,
)
from batchserve.io.writing import (
    StagedWriter,
    check_output_root,
    create_exclusive,
    output_entries,
    output_files,
    prepare_output,
    remove,
    remove_staging,
    write_bytes_atomic,
    write_text_atomic,
    writer_options,
)

__all__ = [
    "write_bytes_atomic",
    "isdir",
    "list_dir",
    "Partition",
    "Footer",
    "list_partitions",
    "ParquetInput",
    "input_version",
    "same_version",
    "file_checksum",
    "read_footer",
    "read_footers",
    "row_group_runs",
    "with_retries",
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
    "RECORD_KEY",
]
