"""--filter semantics on hive keys: dates, numbers and text compared the way a person means them."""

from __future__ import annotations

import pytest

from batchserve.errors import ConfigError
from batchserve.selection import hive_keys, parse_filter, select

PATHS = [f"date=2026-11-0{d}/region={r}/part-0.parquet" for d in range(1, 6) for r in ("eu", "us", "apac")]


def chosen(*exprs: str) -> list[str]:
    flags = select(PATHS, [parse_filter(e) for e in exprs])
    return [p for p, keep in zip(PATHS, flags, strict=True) if keep]


def test_dates_compare_as_dates_and_lists_as_sets() -> None:
    assert {p.split("/")[0] for p in chosen("date>=2026-11-03")} == {"date=2026-11-03", "date=2026-11-04",
                                                                      "date=2026-11-05"}
    assert chosen("date=2026-11-05", "region in (eu,us)") == [
        "date=2026-11-05/region=eu/part-0.parquet", "date=2026-11-05/region=us/part-0.parquet"]
    assert len(chosen("region not in (apac)")) == 10 and len(chosen("date!=2026-11-01")) == 12
    # a datetime value against a date: still a date comparison, not text
    assert parse_filter("ts<2026-11-05").matches({"ts": "2026-11-04T23:59:59"})


def test_numbers_compare_as_numbers_else_text() -> None:
    assert parse_filter("hour<10").matches({"hour": "9"})  # as text "9" > "10"
    assert not parse_filter("hour>=10").matches({"hour": "9"})
    assert parse_filter("name<b").matches({"name": "a10"})  # text when either side is not a number
    assert parse_filter("v=1.0").matches({"v": "1"})


def test_hive_keys_are_unescaped_and_files_without_the_key_do_not_match() -> None:
    assert hive_keys("city=S%C3%A3o%20Paulo/x=1/f.parquet") == {"city": "São Paulo", "x": "1"}
    assert not parse_filter("date=2026-11-05").matches({})


def test_a_key_no_file_has_is_named_with_the_closest() -> None:
    with pytest.raises(ConfigError, match=r"no input file has a hive folder key 'dat' \(did you mean 'date'\?\)"):
        chosen("dat=2026-11-05")
    with pytest.raises(ConfigError, match="has no key=value folders"):
        select(["a/part.parquet"], [parse_filter("date=1")])
