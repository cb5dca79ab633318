"""Operator coverage (edge_sdk/targets/coverage.py) on a hand-made graph: a Gather in float32, then a MatMul inside a
QDQ group, then a Relu. Placements, reasons, FLOPs and boundaries are checked exactly; measured against predicted
on the CPU-only profile. Needs onnx (not in the stock device environment)."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edge_sdk.profiles import Profile, load_profile  # noqa: E402
from edge_sdk.targets.coverage import (  # noqa: E402
    compare_coverage,
    format_coverage,
    measure_coverage,
    parse_node_placements,
    predict_coverage,
)

ACCELERATOR = "FancyNpuExecutionProvider"


def qdq_model() -> onnx.ModelProto:
    """ids[1, 4] -> Gather(emb[10, 16]) -> Q/DQ -> MatMul(DQ(w int8 [16, 8])) -> Relu -> out[1, 4, 8]."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Gather", ["emb", "ids"], ["x"], name="embed"),
        helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["x_q"], name="quantize_x"),
        helper.make_node("DequantizeLinear", ["x_q", "scale", "zero"], ["x_dq"], name="dequantize_x"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "zero"], ["w_dq"], name="dequantize_w"),
        helper.make_node("MatMul", ["x_dq", "w_dq"], ["y"], name="project"),
        helper.make_node("Relu", ["y"], ["out"], name="activate"),
    ]
    initializers = [
        numpy_helper.from_array(rng.standard_normal((10, 16)).astype(np.float32), "emb"),
        numpy_helper.from_array(np.array(0.05, np.float32), "scale"),
        numpy_helper.from_array(np.array(0, np.int8), "zero"),
        numpy_helper.from_array(rng.integers(-127, 128, (16, 8)).astype(np.int8), "w_q"),
        numpy_helper.from_array(np.array(0.01, np.float32), "w_scale"),
    ]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 4])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 8])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def npu_profile() -> Profile:
    return Profile.parse({"providers": [ACCELERATOR, "CPUExecutionProvider"], "session": {},
                          "operators": {"int8": ["MatMul", "QuantizeLinear", "DequantizeLinear", "Gather"],
                                        "float32": ["Softmax"]}}, "npu", "test")


def test_prediction_places_the_qdq_group_on_the_accelerator_and_the_float_gather_on_the_cpu() -> None:
    report = predict_coverage(qdq_model(), npu_profile())
    assert report["provenance"] == "predicted" and report["provider_run"] is False
    assert "was not run" in report["note"] and "no offload is measured" in report["note"]
    placements = {node["name"]: (node["placement"], node["precision"], node["reason"])
                  for node in report["node_placements"]}
    assert placements == {
        "embed": ("cpu", "float32", "float32: not quantized (no QDQ around it)"),
        "quantize_x": ("accelerator", "int8", "int8 in the target's table"),
        "dequantize_x": ("accelerator", "int8", "int8 in the target's table"),
        "dequantize_w": ("accelerator", "int8", "int8 in the target's table"),
        "project": ("accelerator", "int8", "int8 in the target's table"),
        "activate": ("cpu", "float32", "not in the target's table"),
    }
    assert report["nodes"] == {"total": 6, "accelerator": 4, "cpu": 2, "share": round(4 / 6, 4)}
    # MatMul 2*4*16*8 = 1024; Q 64, DQ(x) 64, DQ(w) 128 elements; Relu 32; Gather moves data: 0.
    assert report["flops"]["accelerator"] == 1024 + 64 + 64 + 128 and report["flops"]["cpu"] == 32
    assert report["flops"]["unknown_nodes"] == {}
    assert report["partitions"] == 1
    boundaries = report["boundaries"]
    assert boundaries["count"] == 2 and boundaries["bytes"] == 4 * 16 * 4 + 4 * 8 * 4
    crossing = {item["tensor"]: item for item in boundaries["tensors"]}
    assert crossing["x"] == {"tensor": "x", "from": "cpu", "to": "accelerator", "producer": "Gather",
                            "consumers": ["QuantizeLinear"], "dtype": "float", "shape": [1, 4, 16], "bytes": 256}
    assert crossing["y"]["from"] == "accelerator" and crossing["y"]["consumers"] == ["Relu"]
    assert report["op_types"]["DequantizeLinear"]["accelerator"] == 2
    text = format_coverage(report)
    assert text.startswith("PREDICTED") and "4/6" in text and "boundaries: 2" in text


def saved(model, tmp_path) -> str:
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    return str(path)


def test_cpu_profile_measured_agrees_with_predicted(tmp_path) -> None:
    model = qdq_model()
    profile = load_profile("cpu")
    predicted = predict_coverage(model, profile)
    measured = measure_coverage(saved(model, tmp_path), profile)
    assert measured["provenance"] == "measured" and measured["unmatched_nodes"] == []
    assert measured["nodes"]["accelerator"] == 0 and predicted["nodes"]["accelerator"] == 0
    assert "ONNX Runtime" in measured["method"]
    comparison = compare_coverage(predicted, measured)
    assert comparison["agree"] and comparison["op_types"] == [] and comparison["nodes_differing"] == 0


def test_measured_with_a_missing_accelerator_says_so_and_differs_from_the_prediction(tmp_path) -> None:
    model = qdq_model()
    measured = measure_coverage(saved(model, tmp_path), npu_profile())
    assert measured["missing"] == [ACCELERATOR] and measured["provider_run"] is False
    assert ACCELERATOR in measured["note"] and measured["nodes"]["accelerator"] == 0
    comparison = compare_coverage(predict_coverage(model, npu_profile()), measured)
    assert not comparison["agree"]
    assert {item["op_type"] for item in comparison["op_types"]} == {"QuantizeLinear", "DequantizeLinear", "MatMul"}


def test_verbose_log_placements_are_parsed() -> None:
    log = ("2026 [V:onnxruntime:, session_state.cc:1146 VerifyEachNodeIsAssignedToAnEp] Node placements\n"
           "2026 [V:onnxruntime:, session_state.cc:1150 VerifyEachNodeIsAssignedToAnEp]  Node(s) placed on "
           "[OpenVINOExecutionProvider]. Number of nodes: 2\n  MatMul (project)\n  Relu (activate)\n\n"
           "2026 [V:onnxruntime:, session_state.cc:1150 VerifyEachNodeIsAssignedToAnEp]  Node(s) placed on "
           "[CPUExecutionProvider]. Number of nodes: 1\n  Gather (embed)\n")
    assert parse_node_placements(log, ["embed", "project", "activate"]) == {
        "project": "OpenVINOExecutionProvider", "activate": "OpenVINOExecutionProvider",
        "embed": "CPUExecutionProvider"}
    everything = "x [V:onnxruntime:, s.cc:1 V]  All nodes placed on [CPUExecutionProvider]. Number of nodes: 2\n"
    assert parse_node_placements(everything, ["a", "b"]) == {"a": "CPUExecutionProvider", "b": "CPUExecutionProvider"}



def test_cli_coverage_of_a_bundle_predicts_and_measures(tiny_bundle) -> None:
    import json

    from click.testing import CliRunner

    from edge_sdk.cli.main import cli

    result = CliRunner().invoke(cli, ["coverage", str(tiny_bundle), "--measure", "--json"])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    report = json.loads(result.stdout)
    assert report["predicted"]["graph"].endswith("inference.onnx") and report["measured"]["provenance"] == "measured"
    assert report["comparison"]["agree"] and report["predicted"]["flops"]["unknown_nodes"] == {}
    text = CliRunner().invoke(cli, ["coverage", str(tiny_bundle), "--profile", "fpga-vitisai"])
    assert text.exit_code == 0 and text.stdout.startswith("PREDICTED") and "was not run" in text.stdout
    assert "VitisAIExecutionProvider: 0/" in text.stdout  # a float32 graph: nothing is quantized for it
