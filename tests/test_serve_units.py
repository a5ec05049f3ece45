"""The server's pure parts, without a server: the V2 codec (round trips, binary and JSON), the feature
mapping, and dynamic batching on a real onnxruntime session."""

from __future__ import annotations

import asyncio
import concurrent.futures
import struct
import threading

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from batchserve import model, predictions, registry
from batchserve.errors import RequestError
from batchserve.online import protocol
from batchserve.online.batcher import Batcher, BatchStats
from tests.conftest import SAMPLE_MODEL

_NUMERIC = ["BOOL", "UINT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"]


def _as_request(body: bytes, header: int | None) -> tuple[bytes, int | None]:
    """A response turned into a request: the same tensor encoding, under "inputs"."""
    head = body if header is None else body[:header]
    doc = orjson.loads(head)
    doc["inputs"] = doc.pop("outputs")
    new_head = orjson.dumps(doc)
    return (new_head if header is None else new_head + body[header:]), (None if header is None else len(new_head))


@given(st.sampled_from(_NUMERIC).flatmap(lambda dt: hnp.arrays(
    protocol.DATATYPES[dt], hnp.array_shapes(min_dims=1, max_dims=3, max_side=5),
    elements={"allow_nan": False, "allow_infinity": False} if dt.startswith("FP") else None)), st.booleans())
def test_tensors_round_trip_through_binary_and_json(values: np.ndarray, binary: bool) -> None:
    t = protocol.Tensor("t", protocol.datatype_of(values.dtype), values.shape, values)
    body, header = protocol.encode_infer({"model_name": "m"}, [t], [binary])
    body, header = _as_request(body, header)
    got = protocol.parse_infer(body, header).inputs[0]
    assert got.datatype == t.datatype and got.shape == values.shape
    np.testing.assert_array_equal(got.data, values)


def test_bytes_tensors_use_length_prefixes() -> None:
    t = protocol.Tensor("s", "BYTES", (3,), np.array([b"a", b"", "\u00e9t\u00e9".encode()], dtype=object))
    body, header = protocol.encode_infer({}, [t], [True])
    assert header is not None and body[header:] == struct.pack("<I", 1) + b"a" + struct.pack("<I", 0) + \
        struct.pack("<I", 5) + "\u00e9t\u00e9".encode()
    body, header = _as_request(body, header)
    assert list(protocol.parse_infer(body, header).inputs[0].data) == [b"a", b"", "\u00e9t\u00e9".encode()]


@pytest.mark.parametrize(("spec", "says"), [
    ({"datatype": "INT64", "shape": [2], "data": [1, 1.5]}, "non-integral"),
    ({"datatype": "INT8", "shape": [1], "data": [300]}, "overflow INT8"),
    ({"datatype": "FP32", "shape": [2], "data": [[1], [2, 3]]}, "ragged"),
    ({"datatype": "FP32", "shape": [-1], "data": [1]}, "non-negative integers"),
    ({"datatype": "BOOL", "shape": [1], "data": [2]}, "true/false"),
    ({"datatype": "FP32", "shape": [1]}, "neither data nor"),
])
def test_malformed_tensors_are_one_400_naming_the_input(spec: dict, says: str) -> None:
    with pytest.raises(RequestError) as info:
        protocol.parse_infer(orjson.dumps({"inputs": [{"name": "amount", **spec}]}))
    assert info.value.http_status == 400 and says in str(info.value) and "'amount'" in str(info.value)


def test_json_nulls_are_missing_values_and_stray_binary_bytes_are_refused() -> None:
    req = protocol.parse_infer(b'{"inputs": [{"name": "a", "datatype": "FP32", "shape": [2], "data": [1, null]}]}')
    assert np.isnan(req.inputs[0].data[1])
    head = b'{"inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": 4}}]}'
    with pytest.raises(RequestError, match="no input's binary_data_size claims"):
        protocol.parse_infer(head + b"\x00\x00\x80?" + b"x", len(head))
    assert protocol.parse_infer(head + b"\x00\x00\x80?", len(head)).inputs[0].data.tolist() == [1.0]


class _Counting(BatchStats):
    def __init__(self) -> None:
        self.batches: list[tuple[int, int]] = []

    def observe(self, rows: int, requests: int, seconds: float) -> None:
        self.batches.append((rows, requests))


def test_concurrent_requests_are_merged_and_each_answer_equals_running_alone() -> None:
    resolved = registry.resolve(str(SAMPLE_MODEL), {})
    loaded = model.build_session(resolved.data, device="cpu", intra_op_threads=1, gpu_id=None)

    def run(feeds: dict, n: int) -> dict:
        return predictions.predictions(loaded.run(feeds), n)

    rng = np.random.default_rng(0)
    requests = [{"input": rng.standard_normal((int(rng.integers(1, 30)), 8)).astype(np.float32)} for _ in range(60)]
    alone = [run(r, len(r["input"])) for r in requests]
    stats = _Counting()

    async def main() -> list:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            batcher = Batcher(run, pool, max_batch_rows=200, max_queue_rows=10_000, stats=stats)
            return await asyncio.gather(*(batcher.submit(r, len(r["input"])) for r in requests))

    answers = asyncio.run(main())
    assert max(n for _, n in stats.batches) > 1, stats.batches  # merged
    assert all(rows <= 200 for rows, _ in stats.batches)
    assert sum(n for _, n in stats.batches) == len(requests)
    for got, want in zip(answers, alone, strict=True):
        np.testing.assert_array_equal(got["label"].values, want["label"].values)
        assert got["probabilities"].labels == want["probabilities"].labels == ("0", "1")
        np.testing.assert_allclose(got["probabilities"].values, want["probabilities"].values, rtol=1e-6, atol=1e-7)


def test_a_full_queue_is_a_503_at_once() -> None:
    async def main() -> None:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            gate: concurrent.futures.Future[None] = concurrent.futures.Future()
            entered = threading.Event()

            def slow(feeds: dict, n: int) -> dict:
                entered.set()
                gate.result(30)
                return {}

            batcher = Batcher(slow, pool, max_batch_rows=10, max_queue_rows=15)
            first = asyncio.ensure_future(batcher.submit({"x": np.zeros(10)}, 10))
            # The first batch runs (and waits on the gate): its rows have left the queue.
            await asyncio.get_running_loop().run_in_executor(None, entered.wait, 30)
            second = asyncio.ensure_future(batcher.submit({"x": np.zeros(10)}, 10))
            await asyncio.sleep(0)
            with pytest.raises(RequestError) as info:
                await batcher.submit({"x": np.zeros(6)}, 6)
            assert info.value.http_status == 503
            gate.set_result(None)
            await asyncio.gather(first, second)

    asyncio.run(main())


def _dropped(telemetry) -> float:
    return telemetry.registry.get_sample_value("batchserve_serve_log_dropped_rows_total") or 0.0


def test_the_request_log_keeps_the_newest_rows_within_its_bound(tmp_path) -> None:
    """A store that refuses every write: the buffer holds the newest --log-buffer-rows rows, drops the
    oldest (counted), and close() counts what never reached the store."""
    import pyarrow as pa

    from batchserve.online.capture import RequestLog
    from batchserve.online.telemetry import Telemetry

    blocked = tmp_path / "logs"
    blocked.write_text("a file where the folder should be")
    telemetry = Telemetry()
    rlog = RequestLog(str(blocked), {}, sample=1.0, flush_rows=10, flush_seconds=3600, buffer_rows=20,
                      telemetry=telemetry, model="m")
    rlog.add(pa.table({"received_at": pa.array([0] * 90, pa.timestamp("us", tz="UTC")), "i": list(range(90))}))
    assert _dropped(telemetry) == 70
    with rlog._cond:
        kept = pa.concat_tables(list(rlog._tables)).column("i").to_pylist() if rlog._tables else []
    # The writer may hold a flush's rows while the store refuses them; between them, the newest 20.
    rlog.close(timeout=10)
    assert _dropped(telemetry) == 90
    assert not kept or kept == list(range(90 - len(kept), 90))


@settings(deadline=None, max_examples=200)
@given(share=st.floats(0.001, 1.0), per_row=st.floats(1e-6, 0.05), fixed=st.floats(0.0, 0.02),
       gaps=st.lists(st.floats(0.0, 0.5), min_size=1, max_size=200),
       sizes=st.lists(st.integers(1, 5000), min_size=1, max_size=200))
def test_the_shadow_budget_bounds_the_challengers_share_whatever_it_costs(
        share: float, per_row: float, fixed: float, gaps: list[float], sizes: list[int]) -> None:
    """Issue 26, item 3: over any run the challenger's time is at most ``share`` of the time passed, plus the
    bucket's capacity and one chunk's cost (a chunk is priced after it ran). Chunks arrive after random gaps
    and cost a fixed overhead plus a cost per row, as an ONNX session does."""
    from batchserve.online.shadow import Budget

    now = [0.0]
    budget = Budget(share, clock=lambda: now[0])
    spent, worst, scored = 0.0, 0.0, 0
    for gap, rows in zip(gaps, sizes, strict=False):
        now[0] += gap
        k = budget.rows(rows)
        assert 0 <= k <= rows
        if k:
            cost = fixed + per_row * k
            budget.spend(k, cost)
            now[0] += cost  # the after-answer thread is busy meanwhile
            spent += cost
            worst = max(worst, cost)
            scored += k
        assert spent <= share * now[0] + budget.capacity + worst + 1e-9
    assert scored >= 1  # the first chunk is always scored: the bound above was about something


@settings(deadline=None, max_examples=200)
@given(batches=st.lists(st.tuples(st.sampled_from(["1", "2"]), st.integers(1, 9000)), max_size=60))
def test_after_answer_chunks_keep_every_row_in_order_within_bounds(batches: list[tuple[str, int]]) -> None:
    """The after-answer thread takes the whole queue at once and cuts it outside the lock: every answered
    batch in one chunk, in order; a chunk holds one model version and at most 8,192 rows, or one batch."""
    from batchserve.online.tap import _CHUNK_ROWS, Answered, _chunks

    queued = [Answered(v, ((f"r{i}", 0, n, True),), {}, {}) for i, (v, n) in enumerate(batches)]
    chunks = list(_chunks(queued))
    assert [a for taken, _ in chunks for a in taken] == queued
    for taken, rows in chunks:
        assert rows == sum(a.rows for a in taken)
        assert len({a.version for a in taken}) == 1
        assert rows <= _CHUNK_ROWS or len(taken) == 1


def test_a_live_window_of_rows_holds_at_most_the_rows_asked_for() -> None:
    """Issue 27, item 1: ``--drift-window 20000`` held 40,000 and then 47,500 rows (a chunk of up to 8,192 rows
    went into one bucket whole), so a stream that had shifted entirely still read "ok". Rows are cut at
    bucket boundaries: the window holds between 7/8 of the rows asked for and all of them, never more, and a
    window of shifted rows alone reads drifted."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    from batchserve import drift, manifest, model, predictions, scoring
    from batchserve.config import ServeConfig
    from batchserve.online.live_drift import LiveDrift
    from batchserve.online.slots import load_model
    from tests.conftest import SAMPLE_DATA, SAMPLE_MODEL

    served = load_model(ServeConfig(model=str(SAMPLE_MODEL)), 1)
    text = (SAMPLE_MODEL.parent / "reference.json").read_bytes()
    ref = manifest.load_reference(text.decode(), "reference.json", model.sha256_hex(text))
    live = LiveDrift(served.plan, ref, drift.parse_policy((), ()), window_rows=20_000, window_seconds=None,
                     output_order=[o.name for o in served.info.outputs])
    table = ds.dataset(SAMPLE_DATA, format="parquet", partitioning="hive").to_table().slice(0, 8192 * 6)

    def chunk(i: int, shift: float) -> None:
        batch = table.slice(8192 * i, 8192).combine_chunks().to_batches()[0]
        assert batch.num_rows == 8192
        if shift:
            amount = batch.schema.get_field_index("amount")
            batch = batch.set_column(amount, "amount", pc.multiply(batch.column(amount), shift))
        feeds = scoring.batch_to_feeds(batch, served.plan)
        preds = {k: predictions.prediction_to_arrow(p) for k, p in served.run(feeds, batch.num_rows).items()}
        live.add(feeds, preds, batch.num_rows)

    for i in range(3):
        chunk(i, 0.0)
    rows = live.section()["rows"]
    assert 17_500 <= rows <= 20_000, rows
    for i in range(3, 6):  # 24,576 shifted rows: more than the window
        chunk(i, 20.0)
    section = live.section()
    assert 17_500 <= section["rows"] <= 20_000, section["rows"]
    assert "amount" in section["drift"]["drifted_features"], section["drift"]["drifted_features"]
