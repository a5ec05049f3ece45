"""One suite for every storage backend: local files, memory://, and S3 via moto's server."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchserve import io
from batchserve.errors import DataError, InputError
from tests.conftest import make_table


@pytest.fixture(params=["file", "memory", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, dict]]:
    """(root URL, storage options) of an empty location on each backend."""
    if request.param == "file":
        yield str(tmp_path / "store"), {}
    elif request.param == "memory":
        root = f"memory://t-{uuid.uuid4().hex[:8]}"
        yield root, {}
    else:
        s3 = request.getfixturevalue("s3")
        yield f"s3://lake/t-{uuid.uuid4().hex[:8]}", dict(s3)


def put(url: str, storage: dict, table: pa.Table, row_group_size: int = 100) -> None:
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(url, **storage)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "wb") as fh:
        pq.write_table(table, fh, row_group_size=row_group_size)


def test_lists_recursively_sorted_skipping_hidden(store: tuple[str, dict]) -> None:
    root, opts = store
    for rel in ["b=2/x.parquet", "a=1/y.parquet", "a=1/z.parquet", "_temporary/r/a.parquet", ".hidden/q.parquet"]:
        put(io.join_url(root, rel), opts, make_table(5))
    io.write_text_atomic(io.join_url(root, "notes.txt"), "not parquet", opts)
    _, parts = io.list_partitions(root, opts)
    assert [p.relpath for p in parts] == ["a=1/y.parquet", "a=1/z.parquet", "b=2/x.parquet"]
    assert all(p.size > 0 for p in parts)
    # A glob's outputs are relative to its literal head (here root/a=1).
    _, globbed = io.list_partitions(io.join_url(root, "a=1/*.parquet"), opts)
    assert [p.relpath for p in globbed] == ["y.parquet", "z.parquet"]
    _, deep = io.list_partitions(io.join_url(root, "*/*.parquet"), opts)
    assert [p.relpath for p in deep] == ["a=1/y.parquet", "a=1/z.parquet", "b=2/x.parquet"]
    _, single = io.list_partitions(io.join_url(root, "b=2/x.parquet"), opts)
    assert [p.relpath for p in single] == ["x.parquet"]


def test_no_parquet_and_missing_input_are_input_errors(store: tuple[str, dict]) -> None:
    root, opts = store
    with pytest.raises(InputError, match="input not found"):
        io.list_partitions(io.join_url(root, "missing"), opts)
    io.write_text_atomic(io.join_url(root, "only.txt"), "x", opts)
    with pytest.raises(InputError, match="no Parquet files found"):
        io.list_partitions(root, opts)


def test_footer_and_streamed_batches(store: tuple[str, dict]) -> None:
    root, opts = store
    table = make_table(1050)
    url = io.join_url(root, "t.parquet")
    put(url, opts, table, row_group_size=200)
    footer = io.read_footer(url, opts)
    assert footer.num_rows == 1050 and footer.row_group_rows == (200,) * 5 + (50,)
    batches = list(io.ParquetInput(url, opts).batches(columns=["id", "f1"], batch_size=128))
    assert max(b.num_rows for b in batches) <= 128
    got = pa.Table.from_batches(batches)
    assert got.column_names == ["id", "f1"] and got.column("id").equals(table.column("id"))
    some = pa.Table.from_batches(list(io.ParquetInput(url, opts).batches(columns=["id"], batch_size=999,
                                                                         row_groups=[1, 2])))
    assert some.column("id").to_pylist() == table.column("id").to_pylist()[200:600]
    # a batch spans row groups within a run of about a batch: full batches from small row groups
    spanning = list(io.ParquetInput(url, opts).batches(columns=["id"], batch_size=500))
    assert [b.num_rows for b in spanning] == [500, 100, 450]
    assert pa.Table.from_batches(spanning).column("id").equals(table.column("id"))


def test_row_groups_are_read_in_runs_of_about_a_batch() -> None:
    """pyarrow pre-buffers every row group one read asks for: asked for a whole file, it held the
    whole file (1.6 GB). Runs of at least a batch each, in order, bound that to about a batch."""
    rows = (200, 200, 200, 200, 200, 50)
    assert io.row_group_runs(rows, range(6), 500) == [[0, 1, 2], [3, 4, 5]]
    assert io.row_group_runs(rows, range(6), 128) == [[0], [1], [2], [3], [4], [5]]
    assert io.row_group_runs(rows, [1, 2, 5], 10_000) == [[1, 2, 5]]
    assert io.row_group_runs((65_536,) * 3, range(3), 65_536) == [[0], [1], [2]]
    assert io.row_group_runs((), [], 100) == []


def test_corrupt_file_is_a_data_error(store: tuple[str, dict]) -> None:
    root, opts = store
    url = io.join_url(root, "bad.parquet")
    io.write_text_atomic(url, "PAR1garbage", opts)
    with pytest.raises(DataError, match="not a readable Parquet file"):
        io.read_footer(url, opts)


def test_staged_writer_commits_atomically_or_leaves_nothing(store: tuple[str, dict]) -> None:
    root, opts = store
    table = make_table(300)
    final = io.join_url(root, "k=1/out.parquet")
    staging = io.join_url(root, io.STAGING_DIR, "run1", "k=1/out.parquet")
    with io.StagedWriter(final, staging, table.schema, opts) as w:
        for b in table.to_batches(max_chunksize=100):
            w.write(b)
        assert not io.exists(final, opts), "nothing under the final name before commit"
        size, checksum = w.commit()
    assert size == io.file_size(final, opts) and not io.exists(staging, opts)
    import hashlib

    assert checksum == "sha256:" + hashlib.sha256(io.read_bytes(final, opts)).hexdigest()
    from fsspec.core import url_to_fs

    fs, p = url_to_fs(final, **opts)
    with fs.open(p, "rb") as fh:
        assert pq.read_table(fh).equals(table)
    failed_final = io.join_url(root, "k=2/out.parquet")
    failed_staging = io.join_url(root, io.STAGING_DIR, "run1", "k=2/out.parquet")
    with pytest.raises(RuntimeError), io.StagedWriter(failed_final, failed_staging, table.schema, opts) as w:
        w.write(table.to_batches()[0])
        raise RuntimeError("worker died mid-file")
    assert not io.exists(failed_final, opts) and not io.exists(failed_staging, opts)


def test_text_files_and_output_listing(store: tuple[str, dict]) -> None:
    root, opts = store
    assert io.output_entries(root, opts) == []
    io.write_text_atomic(io.join_url(root, "_manifest.json"), "{}", opts)
    io.write_text_atomic(io.join_url(root, "_manifest.json"), '{"v": 2}', opts)
    assert io.read_text(io.join_url(root, "_manifest.json"), opts) == '{"v": 2}'
    io.prepare_output(root, opts)
    entries = [e for e in io.output_entries(root, opts) if not e.startswith(io.STAGING_DIR)]
    assert entries == ["_manifest.json"]
    io.remove_staging(root, opts)
    assert not io.exists(io.join_url(root, io.STAGING_DIR, ".write-probe"), opts)


def test_output_inside_input_detection(tmp_path: Path) -> None:
    assert io.same_location_or_inside(str(tmp_path / "in" / "out"), str(tmp_path / "in"), {})
    assert io.same_location_or_inside(str(tmp_path / "in"), str(tmp_path / "in/"), {})
    assert not io.same_location_or_inside(str(tmp_path / "input2"), str(tmp_path / "in"), {})
    assert io.same_location_or_inside(str(tmp_path / "in" / "o"), str(tmp_path / "in" / "*.parquet"), {})


def test_writer_dictionary_encodes_only_where_it_pays() -> None:
    schema = pa.schema([("id", pa.string()), ("n", pa.int32()), ("x", pa.float64()), ("p", pa.float32()),
                        ("flag", pa.bool_()), ("probs", pa.struct([("0", pa.float32())]))])
    assert io.writer_options(schema)["use_dictionary"] == ["id", "n", "flag"]


def test_a_glob_matching_folders_reads_the_parquet_files_below_them(tmp_path: Path) -> None:
    from tests.conftest import write_dataset

    write_dataset(tmp_path, {f"date=2026-11-0{d}/part-{k}.parquet": make_table(3, seed=d) for d in (1, 2, 3)
                             for k in (0, 1)})
    root, parts = io.list_partitions(str(tmp_path / "date=2026-11-0[12]"), {})
    assert root == str(tmp_path)
    assert [p.relpath for p in parts] == [f"date=2026-11-0{d}/part-{k}.parquet" for d in (1, 2) for k in (0, 1)]


def test_resolved_locations_follow_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """URLs are resolved once and reused, except relative ones: they mean another file after a chdir."""
    from batchserve.io.paths import _fs

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    first = _fs("x.parquet", {})[1]
    monkeypatch.chdir(tmp_path / "b")
    assert _fs("x.parquet", {})[1] == str(tmp_path / "b" / "x.parquet") != first
    assert _fs(str(tmp_path / "y"), {}) == _fs(str(tmp_path / "y"), {})
    from fsspec.core import url_to_fs

    for url in [f"{tmp_path}/x/", f"{tmp_path}//a/b", "/", f"{tmp_path}/a b/c.parquet", f"{tmp_path}/./a"]:
        assert _fs(url, {}) == url_to_fs(url), url  # the fast path for absolute local paths says what fsspec says


def test_a_local_output_listing_agrees_with_fsspec(tmp_path: Path) -> None:
    """The scandir listing of a local output says what fsspec's find says: nested folders, hidden
    and staging files, a link to a file, a link to nothing (size 0); and a link loop ends."""
    import os
    import posixpath

    from fsspec.implementations.local import LocalFileSystem

    from batchserve.layout import local_files as _local_files

    root = tmp_path / "out"
    for rel, data in {"a.parquet": b"x" * 5, "d=1/b.parquet": b"yy", "d=1/e/f/c.parquet": b"",
                      "_temporary/r1/d=1/b.parquet": b"zzz", ".hidden": b"h", "_manifest.json": b"{}"}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    os.symlink(root / "a.parquet", root / "d=1" / "link.parquet")
    os.symlink(root / "gone.parquet", root / "broken.parquet")
    fs = LocalFileSystem()
    want = {posixpath.relpath(p, str(root)): int(i.get("size") or 0)
            for p, i in fs.find(str(root), detail=True).items() if i.get("type", "file") != "directory"}
    assert _local_files(str(root)) == want
    assert want["d=1/link.parquet"] == 5 and want["broken.parquet"] == 0
    os.symlink(root, root / "d=1" / "loop")  # a folder link back to the root: listed once, and it ends
    assert set(_local_files(str(root))) >= set(want)
    assert _local_files(str(tmp_path / "missing")) == {}


def test_listing_a_local_input_follows_links_once_and_names_a_broken_one(tmp_path: Path) -> None:
    """The input walk follows folder and file links, reads a folder reached twice (or through a loop)
    once, keeps each file's own size, and refuses a .parquet link that points nowhere."""
    from batchserve.errors import InputError

    root = tmp_path / "in"
    (root / "d=1").mkdir(parents=True)
    (root / "d=1" / "a.parquet").write_bytes(b"x" * 7)
    (root / "other").mkdir()
    (root / "other" / "b.parquet").write_bytes(b"y" * 3)
    os.symlink(root / "other", root / "d=2")  # the same folder twice: d=2 and other
    os.symlink(root, root / "d=1" / "loop")  # back to the root: it must end
    os.symlink(root / "other" / "b.parquet", root / "d=1" / "c.parquet")  # a file link: its target's size
    (root / "d=1" / "notes.txt").write_text("not parquet")
    _, parts = io.list_partitions(str(root), {})
    sizes = {p.relpath: p.size for p in parts}
    assert sizes.keys() == {"d=1/a.parquet", "d=1/c.parquet", "d=2/b.parquet"} or \
        sizes.keys() == {"d=1/a.parquet", "d=1/c.parquet", "other/b.parquet"}
    assert sizes["d=1/a.parquet"] == 7 and sizes["d=1/c.parquet"] == 3
    os.symlink(root / "gone.parquet", root / "d=1" / "broken.parquet")
    with pytest.raises(InputError, match="broken symbolic link") as err:
        io.list_partitions(str(root), {})
    assert err.value.path == str(root / "d=1" / "broken.parquet")


def test_equal_footer_schemas_are_one_object(tmp_path: Path) -> None:
    """Planning groups files by schema identity; read_footers hands out equal schemas (metadata
    included) as one object, and any difference as another."""
    a = pa.table({"x": [1.0], "y": [1]})
    for i in range(3):
        pq.write_table(a, tmp_path / f"a{i}.parquet")
    pq.write_table(a.replace_schema_metadata({"k": "v"}), tmp_path / "meta.parquet")
    pq.write_table(a.cast(pa.schema([("x", pa.float32()), ("y", pa.int64())])), tmp_path / "f32.parquet")
    pq.write_table(a, tmp_path / "a3.parquet")  # after two other schemas: still the first object
    names = ["a0", "a1", "a2", "meta", "f32", "a3"]
    got = io.read_footers([str(tmp_path / f"{n}.parquet") for n in names], {})
    same = [g.schema for g in got]
    assert same[0] is same[1] is same[2] is same[5]
    assert same[3] is not same[0] and same[4] is not same[0] and same[3] is not same[4]
    assert same[3].metadata == {b"k": b"v"} and same[4].field("x").type == pa.float32()


@pytest.mark.parametrize("shape", ["same", "shorter"])
def test_an_input_rewritten_in_place_while_read_is_one_data_error_never_torn_rows(tmp_path: Path, shape: str) -> None:
    """Issue 26, item 6: a file rewritten in place (same inode, truncated then written) while pyarrow decoded
    it was read torn: its new rows returned as if they were the file planned, or torn pages decoded until
    the process died (SIGABRT, SIGSEGV). Every read is checked against the file as opened: the rewrite is
    one DataError naming the file, before a byte of the new content is decoded."""
    path = tmp_path / "in.parquet"
    pq.write_table(make_table(3000, seed=1), path, row_group_size=500)
    source = io.ParquetInput(str(path), {})
    first = pq.read_table(path)
    replacement = make_table(3000 if shape == "same" else 700, seed=2)
    pq.write_table(replacement, path, row_group_size=500)  # O_TRUNC: the same inode, new bytes
    with pytest.raises(DataError, match="input file changed while the run was reading it") as info:
        got = pa.Table.from_batches(list(source.batches(columns=None, batch_size=500)))
        assert got.equals(first), "new rows were returned as the planned file's"
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    # replaced by a rename: the opened inode's bytes are intact, but the file planned is gone (its link
    # count, so its ctime, changed): the same one line, not a read of a file nobody can see any more
    path2 = tmp_path / "in2.parquet"
    pq.write_table(make_table(3000, seed=1), path2, row_group_size=500)
    source = io.ParquetInput(str(path2), {})
    pq.write_table(replacement, tmp_path / "new.parquet")
    os.replace(tmp_path / "new.parquet", path2)
    with pytest.raises(DataError, match="input file changed while the run was reading it"):
        list(source.batches(columns=None, batch_size=500))
    # untouched, it reads whole through the same checked reads
    pq.write_table(make_table(3000, seed=1), path, row_group_size=500)
    assert pa.Table.from_batches(list(io.ParquetInput(str(path), {}).batches(columns=None, batch_size=500))).equals(first)
