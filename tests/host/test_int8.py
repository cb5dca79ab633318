"""`--base int8-compute`: the frozen-MatMul rewrite on hand-made graphs, and what an int8 build holds."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from click.testing import CliRunner
from int8_checks import assert_integer_products_exact, real_feeds
from onnx import TensorProto, helper, numpy_helper

from edge_sdk.bundle.int8_arithmetic import (
    INT16_MAX,
    WEIGHT_MAX,
    exact_matmul_integer,
    pair_sum_bound,
    saturating_matmul_integer,
)
from edge_sdk.cli.main import cli
from edge_sdk.errors import AdapterError, ConfigError
from edge_sdk.host.config import BuildConfig, load_recipe
from edge_sdk.host.int8_diagnosis import CapturedProduct, capture_products, diagnose, explain, integer_products
from edge_sdk.host.int8_matmul import quantize_frozen_matmuls


def _linear_graph(rng: np.random.Generator) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """y = relu(x W1^T) W2 + x A^T (A an input, as adapters are): W1 is read through a Transpose (as exported
    nn.Linear is), W2 directly and through Transpose(Transpose()) (as gradient graphs read it), A never."""
    w1 = rng.normal(0, 0.2, (6, 5)).astype(np.float32)   # [out, in]: not square, so a wrong axis cannot pass
    w2 = rng.normal(0, 0.2, (6, 6)).astype(np.float32)   # square and not symmetric: a missed transpose shows
    nodes = [
        helper.make_node("Transpose", ["w1"], ["w1_t"], perm=[1, 0]),
        helper.make_node("MatMul", ["x", "w1_t"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["y1"]),
        helper.make_node("Transpose", ["w2"], ["w2_t"]),
        helper.make_node("Identity", ["w2_t"], ["w2_t_copy"]),
        helper.make_node("Transpose", ["w2_t_copy"], ["w2_tt"], perm=[1, 0]),
        helper.make_node("MatMul", ["r", "w2_tt"], ["y2"]),
        helper.make_node("Transpose", ["a"], ["a_t"], perm=[1, 0]),
        helper.make_node("MatMul", ["x", "a_t"], ["lora"]),
        helper.make_node("Add", ["y1", "y2"], ["y12"]),
        helper.make_node("Add", ["y12", "lora"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 5]),
         helper.make_tensor_value_info("a", TensorProto.FLOAT, [6, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3, 6])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    feeds = {"x": rng.normal(0, 1, (4, 3, 5)).astype(np.float32), "a": rng.normal(0, 0.2, (6, 5)).astype(np.float32)}
    return model, feeds


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["y"], feeds)[0]


def _spec_int8(b: np.ndarray) -> np.ndarray:
    """The int8 matrix the scheme promises for a float B [K, N] as the MatMul reads it: symmetric, one scale
    per output column, values in [-64, 64] (written out here, independently of the implementation)."""
    scale = np.abs(b).max(axis=0) / WEIGHT_MAX
    return np.clip(np.rint(b / scale), -WEIGHT_MAX, WEIGHT_MAX).astype(np.int8)


def _int8_error_bound(x: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The largest |x̂·B̂ - x·B| dynamic int8 allows, per output element, for exact integer arithmetic.

    x̂ - x is at most one activation step s_a (half a step from rounding, and up to a whole one at the ends
    of the range, where the rounded zero point can push a value into the clip); B̂ - B at most half a weight
    step s_w per column. So |x̂B̂ - xB| <= |x̂ - x|·|B̂| + |x|·|B̂ - B| <= s_a·Σ(|B| + s_w/2) + s_w/2·Σ|x|."""
    x, b = x.astype(np.float64), b.astype(np.float64)
    step_a = (max(x.max(), 0.0) - min(x.min(), 0.0)) / 255
    step_w = np.abs(b).max(axis=0) / WEIGHT_MAX
    return step_a * (np.abs(b) + step_w / 2).sum(axis=0) + (step_w / 2) * np.abs(x).sum(axis=-1, keepdims=True)


def test_frozen_matmuls_become_int8_products_of_the_right_matrices() -> None:
    model, feeds = _linear_graph(np.random.default_rng(0))
    w1, w2 = (numpy_helper.to_array(init) for init in model.graph.initializer)
    summary = quantize_frozen_matmuls(model, {"w1", "w2"})
    onnx.checker.check_model(model)
    assert summary.matmuls == 3           # the adapter's MatMul (an input) is left alone
    assert summary.weights == 2           # w1^T and w2: read directly and through two Transposes, stored once
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("MatMulInteger") == 3 and ops.count("MatMul") == 1 and summary.gathers == 0
    assert summary.max_pair_sum <= INT16_MAX
    # Each product reads the matrix the float graph multiplied by (a weight read transposed, or a scale on
    # the wrong axis, would store another), and ONNX Runtime's kernel computes its exact integer product.
    products = list(capture_products(model, feeds))
    for product, expected in zip(products, (w1.T, w2, w2), strict=True):
        np.testing.assert_array_equal(product.weights, _spec_int8(expected))
        np.testing.assert_array_equal(product.result, product.exact())


def test_only_named_frozen_weights_are_quantized() -> None:
    model, feeds = _linear_graph(np.random.default_rng(1))
    expected = _run(model, feeds)
    w1, w2 = (numpy_helper.to_array(init) for init in model.graph.initializer)
    summary = quantize_frozen_matmuls(model, {"w2"})
    assert summary.matmuls == 2
    # w1's product stays float, so both int8 products read r = relu(x W1^T) exactly and y moves by at most
    # the sum of their two error bounds (plus float32 rounding).
    r = np.maximum(feeds["x"] @ w1.T, 0)
    bound = 2 * _int8_error_bound(r, w2) + 1e-5 * np.max(np.abs(expected))
    assert np.all(np.abs(_run(model, feeds) - expected) <= bound)


def test_full_range_weights_would_saturate_where_7_bit_weights_cannot() -> None:
    """What ONNX Runtime computes for the same activations with full-range and with 7-bit weights: on a CPU
    with VNNI (or ARM) the exact product for both; on AVX2 / AVX-512 without VNNI the 16-bit-saturated one
    for full-range weights, which the numpy emulation reproduces. 7-bit weights give the exact product on
    every CPU, because no pair of products can overflow."""
    rng = np.random.default_rng(4)
    x = rng.normal(0, 1, (16, 64)).astype(np.float32)
    w = rng.normal(0, 0.05, (64, 48)).astype(np.float32)
    for level in (127, WEIGHT_MAX):
        b = np.clip(np.rint(w / (np.abs(w).max(axis=0) / level)), -level, level).astype(np.int8)
        graph = helper.make_graph(
            [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"]),
             helper.make_node("MatMulInteger", ["q", "b", "z"], ["y"])], "product",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [16, 64])],
            [helper.make_tensor_value_info("y", TensorProto.INT32, [16, 48])], [numpy_helper.from_array(b, "b")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
        model.ir_version = 8
        product, = capture_products(model, {"x": x})
        exact = product.exact()
        saturated = saturating_matmul_integer(product.quantized, product.zero_point, product.weights)
        if level == 127:
            assert pair_sum_bound(b) > INT16_MAX and not np.array_equal(saturated, exact)
            assert np.array_equal(product.result, exact) or np.array_equal(product.result, saturated)
        else:
            assert pair_sum_bound(b) <= INT16_MAX
            np.testing.assert_array_equal(saturated, exact)
            np.testing.assert_array_equal(product.result, exact)


def test_a_graph_without_frozen_matmuls_is_unchanged() -> None:
    model, _ = _linear_graph(np.random.default_rng(2))
    before = model.SerializeToString()
    assert quantize_frozen_matmuls(model, set()).matmuls == 0
    assert model.SerializeToString() == before


def test_embedding_lookups_read_int8_rows() -> None:
    rng = np.random.default_rng(3)
    table = rng.normal(0, 1, (20, 6)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["y"]), helper.make_node("Gather", ["bias", "ids"], ["b"])],
        "lookup", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", 6]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", "sequence"])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(table[:, 0].copy(), "bias")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    ids = {"ids": rng.integers(0, 20, (3, 7))}
    expected = _run(model, ids)
    summary = quantize_frozen_matmuls(model, {"table", "bias"})
    assert (summary.gathers, summary.matmuls) == (1, 0)  # a 1-D table is not an embedding matrix
    int8 = next(init for init in model.graph.initializer if init.name == "table.int8rows")
    assert int8.data_type == TensorProto.INT8
    actual = _run(model, ids)
    # per-row symmetric int8: each value within half a step (row max / 254) of the float one
    assert np.all(np.abs(actual - expected) <= np.max(np.abs(table), axis=1)[ids["ids"]][..., None] / 254 + 1e-6)


def test_int8_bundle_layout(fixtures_dir: Path) -> None:
    manifest = json.loads((fixtures_dir / "tiny-seq-cls-int8" / "manifest.json").read_text())
    assert manifest["inference"]["precision"] == "int8"
    assert manifest["training"]["backends"] == ["portable"] and "ort-training" not in manifest["training"]
    assert not (fixtures_dir / "tiny-seq-cls-int8" / "training").exists()
    record = manifest["build"]["precision"]
    assert record["graphs"]["inference.onnx"]["matmuls"] > 0 and record["graphs"]["inference.onnx"]["gathers"] > 0
    assert record["graphs"]["train_step.onnx"]["matmuls"] > record["graphs"]["inference.onnx"]["matmuls"]
    assert 0 < record["max_abs_output_change_vs_fp32"]["logits"] < 0.25
    float_bundle = sum(entry["size"] for entry in json.loads(
        (fixtures_dir / "tiny-seq-cls" / "manifest.json").read_text())["files"])
    assert sum(entry["size"] for entry in manifest["files"]) < float_bundle
    step = onnx.load(str(fixtures_dir / "tiny-seq-cls-int8" / "portable" / "train_step.onnx"), load_external_data=False)
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= {node.op_type for node in step.graph.node}
    assert all(entry.domain in ("", "ai.onnx") for entry in step.opset_import)  # still standard ONNX


def test_generation_graphs_are_int8_too(fixtures_dir: Path) -> None:
    for bundle, graphs in (("tiny-causal-lm-int8", {"decoder.onnx"}), ("tiny-seq2seq-int8",
                                                                         {"encoder.onnx", "decoder.onnx"})):
        record = json.loads((fixtures_dir / bundle / "manifest.json").read_text())["build"]["precision"]
        assert all(record["graphs"][name]["matmuls"] > 0 for name in graphs)


def test_merged_export_of_an_int8_bundle_is_refused(fixtures_dir: Path, tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    from edge_sdk.bundle import open_bundle
    from edge_sdk.host.merge import export_merged_onnx

    bundle = open_bundle(fixtures_dir / "tiny-seq-cls-int8")
    weights = load_file(str(bundle.path(bundle.manifest.inference["initial_adapter"])))
    with pytest.raises(AdapterError, match="--base float32 or int8-storage"):
        export_merged_onnx(bundle, weights, tmp_path / "merged.onnx")
    assert not list(tmp_path.iterdir())


def test_bad_precision_is_a_clear_error(tmp_path: Path, fixtures_dir: Path) -> None:
    config = BuildConfig(model_dir=fixtures_dir / "tiny-model", task="seq-cls", labels=("a", "b"))
    with pytest.raises(ConfigError, match="unknown precision 'int4'; choose one of fp32, int8"):
        config.with_overrides(precision="int4")
    with pytest.raises(ConfigError, match="unknown base 'int4'"):
        BuildConfig(model_dir=fixtures_dir / "tiny-model", task="seq-cls", labels=("a", "b"), base="int4").validate()
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'model = "{(fixtures_dir / "tiny-model").resolve()}"\ntask = "seq-cls"\nlabels = ["a", "b"]\n'
                      'precision = "int8"\n')
    assert load_recipe(recipe).base == "int8-compute"  # the legacy key still reads
    result = CliRunner().invoke(cli, ["build", str(recipe), "--out", str(tmp_path / "b"), "--precision", "bf16"])
    assert result.exit_code == 2 and "'bf16' is not one of 'fp32', 'int8'" in result.output
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("name", ["tiny-seq-cls-int8", "tiny-causal-lm-int8", "tiny-seq2seq-int8"])
def test_no_stored_int8_matrix_lets_a_pair_of_products_leave_16_bits(fixtures_dir: Path, name: str) -> None:
    """The arithmetic bound, from the weights every graph of the bundle stores: whatever activations come
    (uint8, 0..255), no pair of products can saturate a 16-bit lane, so every CPU computes the same integers."""
    root = fixtures_dir / name
    manifest = json.loads((root / "manifest.json").read_text())
    largest, counted = 0, {}
    for graph in sorted(root.rglob("*.onnx")):
        products = integer_products(model := onnx.load(str(graph)))
        stored = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
        for product in products:
            weights = stored[product.weights]
            assert weights.min() >= -WEIGHT_MAX and weights.max() <= WEIGHT_MAX, (graph.name, product.node)
            largest = max(largest, pair_sum_bound(weights))
        counted[graph.name] = len(products)
    records = manifest["build"]["precision"]["graphs"]
    assert all(counted[graph] == record["matmuls"] for graph, record in records.items())
    assert 0 < largest <= INT16_MAX
    assert manifest["inference"]["int8_max_pair_sum"] == largest


def test_the_int8_classifier_computes_exact_integer_products_in_both_directions(fixtures_dir: Path) -> None:
    """The emulation, on the activations the tiny classifier's graphs really see: the inference graph and the
    portable step (forward products and the backward products by the transposed weights)."""
    root = fixtures_dir / "tiny-seq-cls-int8"
    manifest = json.loads((root / "manifest.json").read_text())
    graphs = manifest["build"]["precision"]["graphs"]
    inference, step = real_feeds(root, fixtures_dir / "data" / "train.jsonl", rows=8)
    checked = assert_integer_products_exact(root / manifest["inference"]["model"], inference)
    assert checked["products"] == graphs["inference.onnx"]["matmuls"] and checked["rows"] > 0
    checked = assert_integer_products_exact(root / manifest["training"]["portable"]["model"], step)
    assert checked["products"] == graphs["train_step.onnx"]["matmuls"]


def test_a_saturating_kernel_is_named_as_the_cause() -> None:
    weights = np.full((4, 3), 127, np.int8)
    quantized = np.full((2, 4), 255, np.uint8)
    saturated = CapturedProduct(node="layer.0.query", activations=np.ones((2, 4), np.float32), quantized=quantized,
                                scale=0.01, zero_point=0, weights=weights, weight_scale=np.ones(3, np.float32),
                                result=saturating_matmul_integer(quantized, 0, weights).astype(np.int32))
    message = explain([saturated])
    assert "did not compute exact products at 'layer.0.query'" in message
    assert "equals 16-bit saturating arithmetic" in message and "beyond a 16-bit lane" in message
    safe = np.full((4, 3), 64, np.int8)
    faulty = replace(saturated, weights=safe,
                     result=(exact_matmul_integer(quantized, 0, safe) + 1).astype(np.int32))
    assert "kernel fault or an edge-sdk bug" in explain([faulty])


def test_activation_outliers_are_named_as_the_cause(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(0, 1, (8, 32)).astype(np.float32)
    x[3, 7] = 400.0  # one outlier stretches the per-tensor scale of the second product's input
    weights = [rng.normal(0, 0.2, (32, 32)).astype(np.float32) for _ in range(2)]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w0"], ["h"], name="smooth"),
         helper.make_node("Add", ["h", "x"], ["h_x"]),
         helper.make_node("MatMul", ["h_x", "w1"], ["y"], name="stretched")], "two",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 32])],
        [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(weights)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    quantize_frozen_matmuls(model, {"w0", "w1"})
    onnx.save(model, str(tmp_path / "int8.onnx"))
    message = diagnose(tmp_path / "int8.onnx", {"x": x})
    assert "integer kernel computed exact products" in message and "'stretched" in message
    assert "activation outliers" in message and "peak/RMS" in message


def test_the_int8_gate_names_the_likely_cause_and_leaves_nothing(fixtures_dir: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_sdk.errors import ExportError
    from edge_sdk.host.build import build_bundle
    from edge_sdk.host.stages import int8_compute

    monkeypatch.setattr(int8_compute, "MAX_OUTPUT_CHANGE", 0.0)  # any int8 change trips the gate
    config = BuildConfig(model_dir=fixtures_dir / "tiny-model", task="seq-cls", labels=("a", "b"), max_length=32,
                         base="int8-compute")
    with pytest.raises(ExportError, match=r"int8 moved the inference graph's 'logits' .*; likely cause: the integer "
                                          r"kernel computed exact products, and the largest int8 error enters at .*"
                                          r"rounding of every layer adds up .*build it with --base float32"):
        build_bundle(config, tmp_path / "out")
    assert not (tmp_path / "out").exists()
