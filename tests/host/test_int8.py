"""`--precision int8`: the frozen-MatMul rewrite on hand-made graphs, and what an int8 build holds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from edge_sdk.cli.main import cli
from edge_sdk.errors import AdapterError, ConfigError
from edge_sdk.host.config import BuildConfig, load_recipe
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


def test_frozen_matmuls_become_int8_and_stay_close() -> None:
    model, feeds = _linear_graph(np.random.default_rng(0))
    expected = _run(model, feeds)
    summary = quantize_frozen_matmuls(model, {"w1", "w2"})
    onnx.checker.check_model(model)
    assert summary.matmuls == 3           # the adapter's MatMul (an input) is left alone
    assert summary.weights == 2           # w1^T and w2: read directly and through two Transposes, stored once
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("MatMulInteger") == 3 and ops.count("MatMul") == 1 and summary.gathers == 0
    stored = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    assert all(value.dtype == np.int8 for name, value in stored.items() if name.endswith(".int8mm"))
    actual = _run(model, feeds)
    # Dynamic int8: errors of about 1% of the output's scale; a weight read transposed would be off by ~100%.
    assert np.max(np.abs(actual - expected)) < 0.03 * np.max(np.abs(expected))


def test_only_named_frozen_weights_are_quantized() -> None:
    model, feeds = _linear_graph(np.random.default_rng(1))
    expected = _run(model, feeds)
    summary = quantize_frozen_matmuls(model, {"w2"})
    assert summary.matmuls == 2
    assert np.max(np.abs(_run(model, feeds) - expected)) < 0.03 * np.max(np.abs(expected))


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
    with pytest.raises(AdapterError, match="--precision fp32"):
        export_merged_onnx(bundle, weights, tmp_path / "merged.onnx")
    assert not list(tmp_path.iterdir())


def test_bad_precision_is_a_clear_error(tmp_path: Path, fixtures_dir: Path) -> None:
    with pytest.raises(ConfigError, match="unknown precision 'int4'; choose one of fp32, int8"):
        BuildConfig(model_dir=fixtures_dir / "tiny-model", task="seq-cls", labels=("a", "b"),
                    precision="int4").validate()
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'model = "{(fixtures_dir / "tiny-model").resolve()}"\ntask = "seq-cls"\nlabels = ["a", "b"]\n'
                      'precision = "int8"\n')
    assert load_recipe(recipe).precision == "int8"
    result = CliRunner().invoke(cli, ["build", str(recipe), "--out", str(tmp_path / "b"), "--precision", "bf16"])
    assert result.exit_code == 2 and "'bf16' is not one of 'fp32', 'int8'" in result.output
    assert not (tmp_path / "b").exists()
