"""Real ONNX models for tests and the benchmark, each paired with its oracle.

Every builder returns the serialized ONNX bytes and something that predicts the
same thing by other means (the scikit-learn / LightGBM estimator, or numpy).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def set_feature_names(data: bytes, names: Sequence[str]) -> bytes:
    proto = onnx.load_model_from_string(data)
    helper.set_model_props(proto, {"feature_names": json.dumps(list(names))})
    return proto.SerializeToString()


def logreg(x: np.ndarray, y: np.ndarray, *, zipmap: bool = True, names: Sequence[str] | None = None):
    """scikit-learn LogisticRegression through skl2onnx (ZipMap on by default)."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=500).fit(x, y)
    options = None if zipmap else {id(clf): {"zipmap": False}}
    onx = to_onnx(clf, x[:1].astype(np.float32), options=options, target_opset={"": 17, "ai.onnx.ml": 3})
    data = onx.SerializeToString()
    return (set_feature_names(data, names) if names else data), clf


def lightgbm(x: np.ndarray, y: np.ndarray, *, n_estimators: int = 40, names: Sequence[str] | None = None):
    """A LightGBM classifier through onnxmltools."""
    import lightgbm as lgb
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    clf = lgb.LGBMClassifier(n_estimators=n_estimators, num_leaves=15, random_state=0, verbose=-1)
    clf.fit(x.astype(np.float32), y)
    onx = convert_lightgbm(clf, initial_types=[("input", FloatTensorType([None, x.shape[1]]))], target_opset=15)
    data = onx.SerializeToString()
    return (set_feature_names(data, names) if names else data), clf


EPS32 = float(np.finfo(np.float32).eps)


def f32_matmul_bound(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Bound on |float32 x @ w - exact| for any summation order: (n + 1) * eps32 * sum_i |x_i w_i|
    (n roundings of partial sums plus the final one). Scaled to the magnitude of what is summed, so
    it holds near zero, where a relative tolerance fails on another CPU or BLAS kernel."""
    return (x.shape[1] + 1) * EPS32 * (np.abs(x.astype(np.float64)) @ np.abs(w.astype(np.float64)))


def assert_within(actual: np.ndarray, want: np.ndarray, bound: np.ndarray | float, what: str = "") -> None:
    actual, want = np.asarray(actual, dtype=np.float64), np.asarray(want, dtype=np.float64)
    err = np.abs(actual - want)
    bad = err > bound
    assert not bad.any(), (f"{what}: {int(bad.sum())} of {bad.size} values off by more than the float32 bound; "
                           f"worst {err.max():.3g}")


def assert_bucket(actual: np.ndarray, want: dict[str, np.ndarray]) -> None:
    """trunc(float32 row sum): equal to trunc of the exact sum, except where the exact sum lies within
    the float32 bound of an integer (there either side of it is right)."""
    near = np.abs(want["rowsum"] - np.round(want["rowsum"])) <= want["bucket_bound"]
    np.testing.assert_array_equal(np.asarray(actual)[~near], want["bucket"][~near])
    assert np.all(np.abs(np.asarray(actual)[near] - want["bucket"][near]) <= 1)


def _model(nodes, inputs, outputs, inits, name: str) -> bytes:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="batchserve-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def multi_output(n_features: int, seed: int = 0) -> tuple[bytes, Callable[[np.ndarray], dict[str, np.ndarray]]]:
    """Outputs: ``score`` [N,1], ``embedding`` [N,3], ``bucket`` [N] int64."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(n_features, 1)).astype(np.float32)
    w3 = rng.normal(size=(n_features, 3)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["X", "W1"], ["score"]),
        helper.make_node("MatMul", ["X", "W3"], ["embedding"]),
        helper.make_node("ReduceSum", ["X", "axes"], ["rowsum"], keepdims=0),
        helper.make_node("Cast", ["rowsum"], ["bucket"], to=TensorProto.INT64),
    ]
    data = _model(
        nodes,
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", n_features])],
        [
            helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1]),
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("bucket", TensorProto.INT64, ["N"]),
        ],
        [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w3, "W3"),
         numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")],
        "multi_output",
    )

    def oracle(x: np.ndarray) -> dict[str, np.ndarray]:
        """float64 results of the float32 inputs, and '<name>_bound': how far any float32 evaluation
        (ORT's MLAS, any BLAS kernel, any summation order) may stray from them."""
        x64 = x.astype(np.float32).astype(np.float64)
        rowsum = x64.sum(axis=1)
        return {
            "score": (x64 @ w1.astype(np.float64))[:, 0],
            "embedding": x64 @ w3.astype(np.float64),
            "bucket": np.trunc(rowsum).astype(np.int64),
            "score_bound": f32_matmul_bound(x64, w1)[:, 0],
            "embedding_bound": f32_matmul_bound(x64, w3),
            "bucket_bound": f32_matmul_bound(x64, np.ones((x64.shape[1], 1)))[:, 0],
            "rowsum": rowsum,
        }

    return data, oracle


def per_column(names: Sequence[str], seed: int = 0) -> tuple[bytes, Callable[[dict[str, np.ndarray]], np.ndarray]]:
    """One ``[N,1]`` float input per column, named like the column; output ``total``."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=len(names)).astype(np.float32)
    nodes = []
    inits = []
    terms = []
    for i, n in enumerate(names):
        inits.append(numpy_helper.from_array(np.array([[weights[i]]], dtype=np.float32), f"w_{i}"))
        nodes.append(helper.make_node("Mul", [n, f"w_{i}"], [f"t_{i}"]))
        terms.append(f"t_{i}")
    nodes.append(helper.make_node("Sum", terms, ["total"]))
    data = _model(
        nodes,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 1]) for n in names],
        [helper.make_tensor_value_info("total", TensorProto.FLOAT, ["N", 1])],
        inits,
        "per_column",
    )

    def oracle(cols: dict[str, np.ndarray]) -> np.ndarray:
        out = np.zeros(len(next(iter(cols.values()))), dtype=np.float32)
        for i, n in enumerate(names):
            out += cols[n].astype(np.float32) * weights[i]
        return out

    return data, oracle


def mlp(
    n_features: int, hidden: Sequence[int] = (512, 512), seed: int = 0
) -> tuple[bytes, Callable[[np.ndarray], np.ndarray]]:
    """A dense ReLU MLP ``n_features -> hidden... -> 1`` with random weights."""
    rng = np.random.default_rng(seed)
    sizes = [n_features, *hidden, 1]
    nodes, inits = [], []
    prev = "X"
    weights = []
    for i in range(len(sizes) - 1):
        w = (rng.normal(size=(sizes[i], sizes[i + 1])) / np.sqrt(sizes[i])).astype(np.float32)
        b = rng.normal(scale=0.1, size=(sizes[i + 1],)).astype(np.float32)
        weights.append((w, b))
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"B{i}")]
        nodes.append(helper.make_node("Gemm", [prev, f"W{i}", f"B{i}"], [f"h{i}"]))
        prev = f"h{i}"
        if i < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [prev], [f"r{i}"]))
            prev = f"r{i}"
    nodes.append(helper.make_node("Identity", [prev], ["score"]))
    data = _model(
        nodes,
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", n_features])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])],
        inits,
        "mlp",
    )

    def oracle(x: np.ndarray) -> np.ndarray:
        h = x.astype(np.float32)
        for i, (w, b) in enumerate(weights):
            h = h @ w + b
            if i < len(weights) - 1:
                h = np.maximum(h, 0)
        return h[:, 0]

    return data, oracle


def int_input(n_features: int) -> bytes:
    """A model whose input is int64 (to exercise checked casts): output = sum as float."""
    nodes = [
        helper.make_node("Cast", ["X"], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["xf", "axes"], ["total"], keepdims=0),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("X", TensorProto.INT64, ["N", n_features])],
        [helper.make_tensor_value_info("total", TensorProto.FLOAT, ["N"])],
        [numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")],
        "int_input",
    )


def string_input() -> bytes:
    """A model taking a string tensor, which batchserve must refuse up front."""
    nodes = [helper.make_node("Identity", ["S"], ["out"])]
    return _model(
        nodes,
        [helper.make_tensor_value_info("S", TensorProto.STRING, ["N", 1])],
        [helper.make_tensor_value_info("out", TensorProto.STRING, ["N", 1])],
        [],
        "string_input",
    )
