"""The pure core: feature planning, checked conversion, and output columns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from batchserve import model, scoring
from batchserve.errors import DataError, ModelError, SchemaError
from tests import models


def info_of(data: bytes) -> model.ModelInfo:
    return model.describe(data)


def test_plan_from_metadata_flag_and_input_names(model_dir: dict) -> None:
    info = info_of(Path(model_dir["logreg"][0]).read_bytes())
    plan = scoring.plan_features(info, None, [])
    assert plan.source == "metadata" and plan.features == tuple(f"f{i}" for i in range(6))
    same = scoring.plan_features(info, [f"f{i}" for i in range(6)], [])
    assert same.source == "flag" and same.features == plan.features
    with pytest.raises(ModelError, match="the same columns in another order"):  # swapped columns score wrong
        scoring.plan_features(info, ["f5", "f4", "f3", "f2", "f1", "f0"], [])
    flagged = scoring.plan_features(info, ["f5", "f4", "f3", "f2", "f1", "f0"], [], override=True)
    assert flagged.source == "flag (overrides metadata)" and flagged.bindings[0].columns[0] == "f5"
    per_col = scoring.plan_features(info_of(Path(model_dir["percol"][0]).read_bytes()), None,
                                    ["id", *[f"f{i}" for i in range(6)]])
    assert per_col.source == "input-names" and len(per_col.bindings) == 6


def test_plan_errors_name_the_fix(model_dir: dict) -> None:
    multi = info_of(Path(model_dir["multi"][0]).read_bytes())
    with pytest.raises(ModelError, match=r"pass --features \(model inputs: X\[N, 6\] tensor\(float\)\)"):
        scoring.plan_features(multi, None, ["a"])
    with pytest.raises(ModelError, match="takes 6 features but 3 were given"):
        scoring.plan_features(multi, ["a", "b", "c"], [])
    with pytest.raises(ModelError, match=r"tensor\(string\)"):
        scoring.plan_features(info_of(models.string_input()), ["a"], [])


def test_check_schema_missing_and_non_numeric() -> None:
    plan = scoring.FeaturePlan(("a", "b"), (scoring.InputBinding("x", "float32", ("a", "b"), 2),))
    scoring.check_schema(plan, pa.schema([("a", pa.int8()), ("b", pa.bool_())]), "p")
    with pytest.raises(SchemaError, match="missing") as e:
        scoring.check_schema(plan, pa.schema([("a", pa.float64())]), "p.parquet")
    assert e.value.column == "b" and e.value.path == "p.parquet"
    with pytest.raises(SchemaError, match=r"not numeric.*found list<item: double>"):
        scoring.check_schema(plan, pa.schema([("a", pa.float64()), ("b", pa.list_(pa.float64()))]), "p")


def test_feeds_are_c_contiguous_with_nan_for_nulls() -> None:
    plan = scoring.FeaturePlan(("a", "b", "c"), (scoring.InputBinding("x", "float32", ("a", "b", "c"), 2),))
    batch = pa.record_batch({"a": pa.array([1.5, None, 3.0]), "b": pa.array([1, None, 3], pa.int32()),
                             "c": pa.array([True, False, None])})
    x = scoring.batch_to_feeds(batch, plan)["x"]
    assert x.flags.c_contiguous and x.dtype == np.float32 and x.shape == (3, 3)
    np.testing.assert_array_equal(x, np.array([[1.5, 1, 1], [np.nan, np.nan, 0], [3, 3, np.nan]], np.float32))


@given(
    data=hnp.arrays(np.float64, st.tuples(st.integers(1, 40), st.integers(1, 5)),
                    elements=st.floats(allow_nan=True, allow_infinity=True, width=64)),
    wide=st.lists(st.booleans(), min_size=5, max_size=5), nulls=st.integers(0, 2**40),
    offset=st.integers(0, 3), dtype=st.sampled_from(["float32", "float64"]),
)
def test_float_features_in_one_call_equal_the_column_loop(data: np.ndarray, wide: list[bool], nulls: int,
                                                          offset: int, dtype: str) -> None:
    """The one-call path for all-float features (RecordBatch.to_tensor) gives bit for bit what the
    column-by-column conversion gives: mixed float32/float64 columns, nulls, NaN, inf, a sliced batch."""
    rows, cols = data.shape
    names = [f"c{j}" for j in range(cols)]
    arrays = [pa.array(data[:, j], mask=np.array([(nulls >> ((i * 7 + j) % 40)) & 1 == 1 for i in range(rows)]),
                       type=pa.float64() if wide[j] else pa.float32())
              for j in range(cols)]
    batch = pa.RecordBatch.from_arrays(arrays, names=names).slice(min(offset, rows - 1))
    binding = scoring.InputBinding("x", dtype, tuple(names), 2)
    fast = scoring.batch_to_feeds(batch, scoring.FeaturePlan(tuple(names), (binding,)))["x"]
    loop = np.empty((batch.num_rows, cols), dtype=dtype)
    with np.errstate(over="ignore"):  # beyond float32's range: inf, in both
        for j, c in enumerate(names):
            loop[:, j] = scoring._column_values(batch.column(c), np.dtype(dtype), c)
    assert fast.dtype == np.dtype(dtype) and fast.flags.c_contiguous
    np.testing.assert_array_equal(fast, loop)  # NaN in the same places, every other value identical


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (pa.array([1, None], pa.int64()), "null"),
        (pa.array([1.0, 2.5]), "non-integral"),
        (pa.array([1.0, float("inf")]), "non-integral"),
        (pa.array([2**40, 1], pa.int64()), "overflow"),
    ],
)
def test_integer_inputs_refuse_lossy_casts(values: pa.Array, message: str) -> None:
    plan = scoring.FeaturePlan(("a",), (scoring.InputBinding("x", "int32", ("a",), 2),))
    with pytest.raises(DataError, match=message) as e:
        scoring.batch_to_feeds(pa.record_batch({"a": values}), plan)
    assert e.value.column == "a"


def test_integral_floats_feed_int_inputs() -> None:
    plan = scoring.FeaturePlan(("a",), (scoring.InputBinding("x", "int64", ("a",), 2),))
    x = scoring.batch_to_feeds(pa.record_batch({"a": pa.array([1.0, -2.0])}), plan)["x"]
    assert x.dtype == np.int64 and x[:, 0].tolist() == [1, -2]


def test_outputs_to_columns_shapes() -> None:
    cols = scoring.outputs_to_columns(
        {
            "a": np.arange(3, dtype=np.float32),
            "b": np.arange(3, dtype=np.int64).reshape(3, 1),
            "c": np.arange(6, dtype=np.float32).reshape(3, 2),
            "d": np.arange(12, dtype=np.float64).reshape(3, 2, 2),
            "e": np.array(["x", "y", "z"], dtype=object),
            "f": [{0: 0.25, 1: 0.75}, {0: 1.0, 1: 0.0}, {0: 0.5, 1: 0.5}],
        },
        3,
        prefix="p_",
    )
    assert cols["p_a"].type == pa.float32() and cols["p_b"].type == pa.int64()
    assert cols["p_c"].type == pa.list_(pa.float32(), 2) and cols["p_c"].to_pylist()[2] == [4, 5]
    assert cols["p_d"].type == pa.list_(pa.list_(pa.float64(), 2), 2)
    assert cols["p_d"].to_pylist()[1] == [[4, 5], [6, 7]]
    assert cols["p_e"].to_pylist() == ["x", "y", "z"]
    assert cols["p_f"].type == pa.struct([("0", pa.float32()), ("1", pa.float32())])
    assert cols["p_f"].to_pylist()[0] == {"0": 0.25, "1": 0.75}
    with pytest.raises(ModelError, match="batch on the first axis"):
        scoring.outputs_to_columns({"a": np.zeros(4)}, 3)


@given(
    x=hnp.arrays(np.float64, st.tuples(st.integers(0, 50), st.just(4)),
                 elements=st.floats(-1e6, 1e6, allow_nan=False)),
)
def test_score_batch_keeps_rows_and_order(x: np.ndarray) -> None:
    if len(x) == 0:
        return  # empty batches are skipped before the model (covered end to end)
    data, oracle = models.multi_output(4)
    m = model.build_session(data, device="cpu", intra_op_threads=1, gpu_id=None)
    names = ["a", "b", "c", "d"]
    plan = scoring.plan_features(model.describe(data), names, names)
    batch = pa.record_batch({**{n: x[:, i] for i, n in enumerate(names)}, "id": np.arange(len(x))})
    _, preds = scoring.predict(batch, plan, m)
    out = scoring.assemble(batch, ["id"], preds)  # the worker's steps, on one thread
    assert out.num_rows == len(x) and out.column("id").to_pylist() == list(range(len(x)))
    np.testing.assert_allclose(out.column("score").to_numpy(), oracle(x)["score"], rtol=1e-4, atol=1e-2)
