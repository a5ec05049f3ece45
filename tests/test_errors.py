"""Errors pickle with their attributes (Dask ships them home) and print as one line."""

from __future__ import annotations

import pickle

import pytest

from batchserve import errors

ALL = [
    cls for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, errors.BatchserveError)
]


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_round_trips_through_pickle_with_attributes(cls: type[errors.BatchserveError]) -> None:
    exc = cls("bad thing\nsecond line", path="s3://b/k.parquet", column="amount", expected="float",
              found="string", hint="fix it")
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is cls
    assert (back.path, back.column, back.expected, back.found, back.hint) == (
        "s3://b/k.parquet", "amount", "float", "string", "fix it")
    assert str(back) == str(exc)
    assert "\n" not in str(back)


def test_message_names_where_to_look() -> None:
    exc = errors.SchemaError("feature column is not numeric", path="in/a.parquet", column="amount",
                             expected="bool, int or float", found="string")
    assert str(exc) == (
        "feature column is not numeric: expected bool, int or float, found string (in/a.parquet, column 'amount')"
    )


def test_transient_flags() -> None:
    assert errors.StorageError("x").transient and errors.ClusterError("x").transient
    assert not errors.DataError("x").transient and not errors.SchemaError("x").transient


def test_each_class_carries_its_exit_code_and_the_cli_table_is_derived_from_them() -> None:
    from batchserve.cli import EXIT_CODES

    assert {cls.__name__: cls("x").exit_code for cls in ALL if cls not in (errors.Interrupted,)} == {
        cls.__name__: {errors.DriftError: 3, errors.UsageError: 2}.get(cls, 1) for cls in ALL
        if cls is not errors.Interrupted
    }
    assert errors.Interrupted("x", signum=2).exit_code == 130 and errors.Interrupted("x", signum=15).exit_code == 143
    assert pickle.loads(pickle.dumps(errors.Interrupted("x", signum=15))).exit_code == 143
    assert EXIT_CODES == {"ok": 0, "failed": 1, "usage": 2, "drift": 3, "interrupted": 130}
    assert errors.exit_code_of(KeyboardInterrupt()) == 130 and errors.exit_code_of(ValueError()) == 1
    assert errors.exit_code_of(errors.DriftError("d")) == 3


def test_located_names_the_path_once_and_leads_with_the_prefix() -> None:
    from batchserve.errors import DataError, located

    with pytest.raises(DataError) as unnamed, located("s3://b/in/p.parquet", "challenger: "):
        raise DataError("column has 3 null(s)", column="x")
    assert unnamed.value.path == "s3://b/in/p.parquet" and unnamed.value.message == "challenger: column has 3 null(s)"
    with pytest.raises(DataError) as named, located("s3://b/in/other.parquet"):
        raise DataError("corrupt", path="s3://b/in/p.parquet")
    assert named.value.path == "s3://b/in/p.parquet" and named.value.message == "corrupt"
    with pytest.raises(ValueError), located("x"):  # not ours: untouched
        raise ValueError("bug")
