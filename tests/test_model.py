"""Model description, version resolution, device policy, and the GPU path (skipped without one)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from batchserve import model, tuning
from batchserve.errors import DeviceError, ModelError
from tests import models

HAS_GPU = model.visible_gpu_count() > 0


def test_describe_reads_signature_and_metadata(model_dir: dict) -> None:
    info = model.describe(Path(model_dir["zipmap"][0]).read_bytes())
    assert info.producer_name == "skl2onnx"
    assert [i.name for i in info.inputs] == ["X"] and info.inputs[0].shape == (None, 6)
    assert info.outputs[1].type == "seq(map(int64,tensor(float)))"
    assert info.feature_names == [f"f{i}" for i in range(6)]
    assert info.opset["ai.onnx.ml"] >= 1 and len(info.sha256) == 64


def test_describe_refuses_non_onnx_and_bad_metadata() -> None:
    with pytest.raises(ModelError, match="not an ONNX model"):
        model.describe(b"\x00\x01garbage")
    data = models.set_feature_names(models.multi_output(2)[0], ["a", "b"])
    import onnx

    proto = onnx.load_model_from_string(data)
    proto.metadata_props[0].value = "not json"
    with pytest.raises(ModelError, match="JSON list of strings"):
        _ = model.describe(proto.SerializeToString()).feature_names


@pytest.mark.parametrize(
    ("device", "index", "env", "want"),
    [
        ("cpu", 3, {"CUDA_VISIBLE_DEVICES": "0,1"}, None),
        ("auto", 3, {"CUDA_VISIBLE_DEVICES": ""}, None),  # GPUs hidden
        ("auto", 1, {"CUDA_VISIBLE_DEVICES": "3,0,1,2"}, 0),  # dask-cuda: own GPU listed first
        ("cuda", 5, {"CUDA_VISIBLE_DEVICES": "2"}, 0),
        ("cuda:1", 0, {"CUDA_VISIBLE_DEVICES": "0,1"}, 1),
    ],
)
def test_pick_gpu(device: str, index: int, env: dict, want: int | None) -> None:
    assert model.pick_gpu(device, index, env) == want


def test_pick_gpu_round_robin_without_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model, "visible_gpu_count", lambda env=None: 4)
    assert [model.pick_gpu("auto", i, {}) for i in range(6)] == [0, 1, 2, 3, 0, 1]


def test_cpu_session_runs_and_auto_records_fallback() -> None:
    data, oracle = models.multi_output(4)
    x = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    m = model.build_session(data, device="cpu", intra_op_threads=1, gpu_id=None)
    assert m.provider == "CPUExecutionProvider" and m.fallback_reason is None
    want = oracle(x)
    models.assert_within(m.run({"X": x})["embedding"], want["embedding"], want["embedding_bound"], "embedding")
    if not HAS_GPU:
        auto = model.build_session(data, device="auto", intra_op_threads=1, gpu_id=model.pick_gpu("auto", 0))
        assert auto.provider == "CPUExecutionProvider" and auto.fallback_reason
        auto.close()  # never run: its profile folder is removed here


@pytest.mark.skipif(HAS_GPU, reason="a GPU is visible")
def test_cuda_without_gpu_is_an_error() -> None:
    data, _ = models.multi_output(4)
    with pytest.raises(DeviceError, match="--device cuda requested"):
        model.build_session(data, device="cuda", intra_op_threads=1, gpu_id=0)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs an NVIDIA GPU")
def test_cuda_session_matches_cpu() -> None:
    data, oracle = models.mlp(32, (256, 256))
    x = np.random.default_rng(1).normal(size=(4096, 32)).astype(np.float32)
    m = model.build_session(data, device="cuda", intra_op_threads=1, gpu_id=0)
    assert m.provider == "CUDAExecutionProvider" and m.device == "cuda:0"
    np.testing.assert_allclose(m.run({"X": x})["score"], oracle(x)[:, None], rtol=1e-3, atol=1e-3)
    assert m.placement is not None and "Gemm" in m.placement.get("CUDAExecutionProvider", {})  # the matmuls ran on it
    assert tuning.placement_warning(m.placement, m.provider) is None


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs an NVIDIA GPU")
def test_cuda_fp16_session_keeps_float32_io_and_matches_within_half_precision() -> None:
    data, oracle = models.mlp(32, (256, 256))
    x = np.random.default_rng(2).normal(size=(4096, 32)).astype(np.float32)
    m = model.build_session(data, device="cuda", intra_op_threads=1, gpu_id=0, precision="fp16")
    got = m.run({"X": x})["score"]
    assert got.dtype == np.float32
    want = oracle(x)[:, None]
    np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-2 * float(np.abs(want).max()))


@pytest.mark.parametrize("string_labels", [False, True])
def test_zipmap_is_stripped_but_values_and_labels_match_ort(string_labels: bool, train_table) -> None:
    import onnxruntime as ort

    from tests.conftest import features_matrix

    x = features_matrix(train_table)
    y = train_table.column("target").to_numpy()
    if string_labels:
        y = np.where(y == 1, "fraud", "ok")
    data, _ = models.logreg(x, y, zipmap=True)
    m = model.build_session(data, device="cpu", intra_op_threads=1, gpu_id=None)
    assert "output_probability" in m.zipmaps
    got = m.run({"X": x[:500]})
    raw = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    want_labels, want = raw.run(None, {"X": x[:500]})
    probs = got["output_probability"]
    assert isinstance(probs, model.LabeledProbabilities)
    assert probs.labels == tuple(want[0].keys())
    np.testing.assert_array_equal(probs.values, np.array([[d[k] for k in probs.labels] for d in want], np.float32))
    np.testing.assert_array_equal(got["output_label"], want_labels)
    assert m.output_names == ["output_label", "output_probability"]


def test_batch_size_auto_picks_the_largest_size_within_ten_percent_of_the_fastest() -> None:
    from batchserve.tuning import choose_batch

    # an MLP's curve on 2 cores (make bench): fastest at 2,048, 8,192 within 10%
    assert choose_batch({1024: 359_276, 2048: 412_117, 4096: 411_226, 8192: 400_714, 16384: 296_904}) == 8192
    # LightGBM is flat: the largest size wins
    assert choose_batch({1024: 312_506, 4096: 305_760, 16384: 283_812}) == 16384
    assert choose_batch({4096: 1.0}) == 4096


def test_batches_run_whole_only_while_the_probe_still_saw_rows_per_second_rising() -> None:
    from batchserve.tuning import infer_rows

    # the MLP on one 1M-row file (probe up to 8,192): past its peak at 8,192, so pieces of the chosen
    # size, even when that is the largest tried (8,192 is within 10% of the peak at 2,048)
    assert infer_rows({1024: 380_089, 2048: 427_144, 4096: 417_843, 8192: 391_194}) == 8192
    assert infer_rows({1024: 363_151, 2048: 394_220, 4096: 397_137, 8192: 351_283}) == 4096
    # still rising at the largest size, or one size alone: larger batches are no slower, run whole
    assert infer_rows({1024: 300_000, 4096: 310_000, 16384: 320_000}) is None
    assert infer_rows({1024: 1.0}) is None


def test_the_probe_stops_past_the_peak_and_leaves_a_session_that_still_scores() -> None:
    """A clock that makes the model run at a given rows/s per size: once a size runs 20% below the
    best so far, larger sizes are not tried; the arena shrink run after it leaves the session whole."""
    data, oracle = models.multi_output(4)
    loaded = model.build_session(data, device="cpu", intra_op_threads=1, gpu_id=None)
    curve = {1024: 1.0e6, 2048: 1.2e6, 4096: 0.9e6, 8192: 1.3e6}
    now, size = [0.0], [0]

    def make_feeds(n: int) -> dict[str, np.ndarray]:
        size[0] = n
        return {"X": np.zeros((n, 4), dtype=np.float32)}

    def clock() -> float:  # each reading: one run of the current size at the curve's rate
        now[0] += size[0] / curve[size[0]]
        return now[0]

    chosen, rates = tuning.probe_batch(loaded, make_feeds, 65_536, clock=clock)
    assert list(rates) == [1024, 2048, 4096]  # 8,192 would have been fastest, but was never tried
    assert rates[2048] == pytest.approx(1.2e6) and chosen == 2048  # past the peak: pieces of the best
    x = np.random.default_rng(5).normal(size=(300, 4)).astype(np.float32)
    want = oracle(x)
    models.assert_within(loaded.run({"X": x})["embedding"], want["embedding"], want["embedding_bound"], "embedding")
    loaded.close()


def test_probe_limit_only_probes_runs_it_can_pay_for() -> None:
    from batchserve.config import resolve_score_config
    from batchserve.pipeline.cluster import probe_limit

    auto = resolve_score_config({"model": "m", "input": "i", "output": "o"}, env={})
    fixed = resolve_score_config({"model": "m", "input": "i", "output": "o", "batch_size": "4096"}, env={})
    assert auto.batch_auto and not fixed.batch_auto and fixed.batch_size == 4096
    assert probe_limit(auto, 100_000) is None  # the sample data: not worth a probe
    assert probe_limit(auto, 2_000_000) == 16_384 and probe_limit(auto, 10**9) == 65_536
    assert probe_limit(fixed, 10**9) is None
    # 2,000 files of 500 rows: no batch can reach the smallest probe size
    assert probe_limit(auto, 1_000_000, largest_file=500) is None
    assert probe_limit(auto, 1_000_000, largest_file=5_000) == 4_096


def test_running_in_probed_pieces_gives_the_same_outputs(model_dir: dict) -> None:
    """A batch run in pieces of infer_rows equals the batch run whole, for tensors and ZipMap outputs."""
    import numpy as np

    from batchserve import model as m
    from tests.conftest import FEATURES, features_matrix, make_table

    x = features_matrix(make_table(1000, seed=3))
    for kind in ("logreg", "lgbm", "zipmap"):
        path, _ = model_dir[kind]
        whole = m.build_session(path.read_bytes(), device="cpu", intra_op_threads=1, gpu_id=None)
        name = whole.session.get_inputs()[0].name
        feeds = {name: x} if len(whole.session.get_inputs()) == 1 else {n: x[:, [FEATURES.index(n)]] for n in FEATURES}
        a = whole.run(feeds)
        whole.infer_rows = 96  # 1,000 rows in 11 pieces, the last one short
        b = whole.run(feeds)
        for k in a:
            np.testing.assert_array_equal(np.asarray(getattr(a[k], "values", a[k])), np.asarray(getattr(b[k], "values", b[k])))


def test_node_placement_is_read_from_the_profile_of_the_first_run(model_dir: dict) -> None:
    """Which provider ran which operator, from ORT's own profile: a tree ensemble on the CPU here.
    The profile ends after the first run (later runs are not profiled) and its file is removed."""
    import glob
    import tempfile

    import numpy as np

    from batchserve import model as m

    path, _ = model_dir["lgbm"]
    loaded = m.build_session(path.read_bytes(), device="cpu", intra_op_threads=1, gpu_id=None)
    name = loaded.session.get_inputs()[0].name
    before = set(glob.glob(f"{tempfile.gettempdir()}/batchserve-ort-*"))
    loaded.run({name: np.zeros((3, 6), np.float32)})
    assert loaded.placement is not None
    assert loaded.placement["CPUExecutionProvider"]["TreeEnsembleClassifier"] == 1
    assert set(glob.glob(f"{tempfile.gettempdir()}/batchserve-ort-*")) <= before  # no profile left behind
    loaded.run({name: np.zeros((3, 6), np.float32)})  # not profiled: nothing new appears
    assert set(glob.glob(f"{tempfile.gettempdir()}/batchserve-ort-*")) <= before


def test_a_gpu_run_mostly_on_the_cpu_is_warned_about() -> None:
    from batchserve.tuning import placement_warning

    trees = {"CUDAExecutionProvider": {"Cast": 1}, "CPUExecutionProvider": {"TreeEnsembleClassifier": 1, "ZipMap": 1}}
    text = placement_warning(trees, "CUDAExecutionProvider")
    assert text is not None and "runs only 1 of 3 graph nodes" in text and "TreeEnsembleClassifier x1" in text
    mlp = {"CUDAExecutionProvider": {"Gemm": 3, "Relu": 2}, "CPUExecutionProvider": {"Shape": 1}}
    assert placement_warning(mlp, "CUDAExecutionProvider") is None  # mostly on the GPU
    assert placement_warning(trees, "CPUExecutionProvider") is None  # a CPU run has nothing to warn about


def test_gpu_provider_options_are_decided_without_a_gpu() -> None:
    from batchserve.errors import DeviceError
    from batchserve.tuning import gpu_providers

    assert gpu_providers(1) == [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
    trt = gpu_providers(0, precision="fp16", trt_cache="/var/cache/trt",
                        available=["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    assert [p[0] if isinstance(p, tuple) else p for p in trt] == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    opts = trt[0][1]
    assert opts["trt_engine_cache_enable"] is True and opts["trt_engine_cache_path"] == "/var/cache/trt"
    assert opts["trt_fp16_enable"] is True and opts["device_id"] == 0
    with pytest.raises(DeviceError, match="TensorrtExecutionProvider"):
        gpu_providers(0, trt_cache="/c", available=["CUDAExecutionProvider", "CPUExecutionProvider"])


def test_fp16_keeps_input_and_output_types_and_halves_the_weights() -> None:
    import onnx

    from batchserve.tuning import to_fp16

    data, _ = models.mlp(32, (64, 64))
    half = onnx.load_model_from_string(to_fp16(data))
    full = onnx.load_model_from_string(data)
    io = lambda m: [(v.name, v.type.tensor_type.elem_type) for v in [*m.graph.input, *m.graph.output]]  # noqa: E731
    assert io(half) == io(full)  # float32 in, float32 out: the casts sit inside the graph
    assert {t.data_type for t in half.graph.initializer} == {onnx.TensorProto.FLOAT16}
    assert sum(len(t.raw_data) for t in half.graph.initializer) * 2 == pytest.approx(
        sum(len(t.raw_data) or 4 * len(t.float_data) for t in full.graph.initializer), rel=0.01)


def test_fp16_and_trt_cache_are_refused_on_cpu() -> None:
    from batchserve.config import resolve_score_config
    from batchserve.errors import ConfigError

    base = {"model": "m", "input": "i", "output": "o", "device": "cpu"}
    with pytest.raises(ConfigError, match="for GPU sessions"):
        resolve_score_config({**base, "precision": "fp16"}, env={})
    with pytest.raises(ConfigError, match="for GPU sessions"):
        resolve_score_config({**base, "trt_cache": "/c"}, env={})
    with pytest.raises(ConfigError, match="fp32 or fp16"):
        resolve_score_config({**base, "device": "auto", "precision": "int8"}, env={})


def test_a_session_leaves_no_profile_folder_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each session profiles its first run (node placement) in a folder of its own under the temp
    directory: reading the profile removes it, and so does closing a session that never ran."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    data, _ = models.multi_output(4)
    ran = model.build_session(data, device="cpu", intra_op_threads=1, gpu_id=None)
    idle = model.build_session(data, device="cpu", intra_op_threads=1, gpu_id=None)
    assert len(list(tmp_path.glob("batchserve-ort-*"))) == 2
    ran.run({"X": np.zeros((3, 4), np.float32)})
    idle.close()
    assert not list(tmp_path.glob("batchserve-ort-*"))
