"""`adapters deploy` on the tiny fpga-vitisai bundle (tests/make_fixtures.py): a personalized adapter merged into
the float weights and quantized to the profile's static int8 graph agrees with the float adapter, bad requests are
refused, a failure leaves nothing half-written, and the runtime serves the deployed graph. Runs in both device
environments (it needs onnx and onnxruntime's quantization tools, no torch)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime.quantization")

from click.testing import CliRunner  # noqa: E402

from edge_sdk.bundle import verify_bundle  # noqa: E402
from edge_sdk.cli.main import cli  # noqa: E402
from edge_sdk.device import DeviceBundle, TrainingSettings  # noqa: E402
from edge_sdk.errors import AdapterError, ConfigError, ExportError  # noqa: E402
from edge_sdk.profiles import load_profile  # noqa: E402
from edge_sdk.targets.deploy import deploy  # noqa: E402

FAST = TrainingSettings(epochs=2, learning_rate=1e-2, batch_size=16, seed=3)


@pytest.fixture
def fpga_bundle(fixtures_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    source = fixtures_dir / "tiny-seq-cls-fpga"
    if not source.is_dir():
        pytest.skip(f"{fixtures_dir} predates the fpga fixture: rebuild it with tests/make_fixtures.py")
    # No Vitis AI here: run every session on the CPU provider (what a device without the accelerator does).
    from edge_sdk.profiles import Profile

    monkeypatch.setattr(Profile, "provider_names", property(lambda _self: ["CPUExecutionProvider"]))
    return Path(shutil.copytree(source, tmp_path / "fpga-bundle"))


def _personalized(bundle_path: Path, data: Path) -> DeviceBundle:
    bundle = DeviceBundle.open(bundle_path)
    bundle.personalize(data / "train.jsonl", adapter="alice", settings=FAST)
    return bundle


def test_deployed_adapter_agrees_with_the_float_adapter(fpga_bundle: Path, tiny_data: Path) -> None:
    bundle = _personalized(fpga_bundle, tiny_data)
    result = deploy(bundle.bundle, "alice", "fpga-vitisai")  # calibration inputs stored by the build
    folder = fpga_bundle / "adapters" / "alice.fpga-vitisai"
    assert result.folder == folder
    assert {"model.onnx", "deploy.json", "coverage.json", "vaip_config.json"} <= {p.name for p in folder.iterdir()}
    record = json.loads((folder / "deploy.json").read_text())
    assert record["adapter_sha256"] == result.adapter_sha256 and record["static_shapes"] == [1, 32]
    assert record["quantization"]["qdq_wrapped"] == "18/18"
    # The float adapter on the float graph against the deployed int8 graph, on held-out data.
    data = bundle.task.load(tiny_data / "dev.jsonl")
    weights = bundle.adapters.load("alice")
    float_logits = np.stack(bundle.outputs(data, weights))
    static = bundle._target_graph("alice")
    assert static is not None and static.source == "adapters/alice.fpga-vitisai/model.onnx"
    int8_logits = np.stack(bundle.outputs(data, weights, adapter="alice"))
    agreement = float(np.mean(float_logits.argmax(-1) == int8_logits.argmax(-1)))
    assert agreement >= 0.85, agreement
    assert np.max(np.abs(float_logits - int8_logits)) < 0.5
    verify_bundle(fpga_bundle)  # nothing the manifest covers changed


def test_deploy_with_calibration_data_and_the_cli(fpga_bundle: Path, tiny_data: Path) -> None:
    _personalized(fpga_bundle, tiny_data)
    result = CliRunner().invoke(cli, ["adapters", "deploy", str(fpga_bundle), "alice", "--calibration-data",
                                      str(tiny_data / "dev.jsonl"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["profile"] == "fpga-vitisai" and report["quantization"]["calibration_source"] == "dev.jsonl"
    # A tiny random model's logits are close together, so rounding flips some; MiniLM keeps 98% (see the report).
    assert report["validation"]["prediction_agreement"] >= 0.6 and "metric" in report["validation"]
    text = CliRunner().invoke(cli, ["adapters", "deploy", str(fpga_bundle), "alice"])
    assert text.exit_code == 0 and "deployed 'alice' for fpga-vitisai" in text.output and "coverage" in text.output


def test_deploy_refuses_what_it_cannot_deploy(fpga_bundle: Path, fixtures_dir: Path, tiny_data: Path,
                                              tiny_bundle: Path) -> None:
    bundle = _personalized(fpga_bundle, tiny_data).bundle
    with pytest.raises(AdapterError, match="no adapter named 'bob'"):
        deploy(bundle, "bob", "fpga-vitisai")
    with pytest.raises(AdapterError, match="deployed by the build"):
        deploy(bundle, "initial", "fpga-vitisai")
    with pytest.raises(ConfigError, match="has no target graph"):
        deploy(bundle, "alice", "cpu")
    int8 = DeviceBundle.open(fixtures_dir / "tiny-seq-cls-int8").bundle
    with pytest.raises(AdapterError, match="int8-compute"):
        deploy(int8, "alice", "fpga-vitisai")
    causal = DeviceBundle.open(fixtures_dir / "tiny-causal-lm").bundle
    with pytest.raises(ConfigError, match="static shapes"):
        deploy(causal, "alice", load_profile("fpga-vitisai"))
    plain = DeviceBundle.open(tiny_bundle)  # built for cpu: no calibration inputs stored
    plain.adapters.save("alice", plain.adapters.load("initial"), {"source": "import"})
    with pytest.raises(ConfigError, match="--calibration-data"):
        deploy(plain.bundle, "alice", "fpga-vitisai")
    result = CliRunner().invoke(cli, ["adapters", "deploy", str(fpga_bundle), "bob"])
    assert result.exit_code == 1 and result.output.count("\n") == 1 and "no adapter named 'bob'" in result.output


def test_a_failed_deploy_leaves_the_previous_one_whole(fpga_bundle: Path, tiny_data: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = _personalized(fpga_bundle, tiny_data).bundle
    deploy(bundle, "alice", "fpga-vitisai")
    adapters = fpga_bundle / "adapters"
    before = {p.name: p.read_bytes() for p in (adapters / "alice.fpga-vitisai").iterdir()}

    def broken(*_args, **_kwargs):
        raise ExportError("the quantized target graph agrees with the float32 graph on only 3.1%")

    import edge_sdk.targets.graph as graph

    monkeypatch.setattr(graph, "validate", broken)
    with pytest.raises(ExportError, match="3.1%"):
        deploy(bundle, "alice", "fpga-vitisai")
    after = {p.name: p.read_bytes() for p in (adapters / "alice.fpga-vitisai").iterdir()}
    assert after == before
    assert [p.name for p in adapters.iterdir() if p.name.startswith(".") and "fpga" in p.name] == []


def test_runtime_serves_the_deployed_graph_until_the_adapter_changes(fpga_bundle: Path, tiny_data: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    bundle = _personalized(fpga_bundle, tiny_data)
    assert bundle._target_graph("initial").source == "targets/fpga-vitisai/model.onnx"
    with caplog.at_level(logging.WARNING):
        bundle.infer(["market shares fell"], adapter="alice")
        bundle.infer(["goal in the cup"], adapter="alice")
    warnings = [r.message for r in caplog.records if "adapters deploy" in r.getMessage()]
    assert len(warnings) == 1 and "'alice'" in caplog.records[0].getMessage()
    deploy(bundle.bundle, "alice", "fpga-vitisai")
    assert bundle._target_graph("alice") is not None
    scores = bundle.evaluate(tiny_data / "dev.jsonl", adapter="alice")
    assert scores["examples"] == 48
    # Retrained: the deployed graph was made from the earlier version, so the float graph serves again.
    bundle.personalize(tiny_data / "dev.jsonl", adapter="alice", settings=FAST)
    assert bundle._target_graph("alice") is None


def test_a_broken_quantization_fails_loudly(fpga_bundle: Path, tiny_data: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = _personalized(fpga_bundle, tiny_data).bundle
    from onnx import numpy_helper

    import edge_sdk.targets.quantize as quantize

    real = quantize.quantize_qdq

    def wrong_scales(model, feeds, spec):  # a scale bug: every weight read back 50 times too large
        quantized = real(model, feeds, spec)
        initializers = {init.name: init for init in quantized.graph.initializer}
        for node in quantized.graph.node:
            if node.op_type == "DequantizeLinear" and node.input[0] in initializers:
                scale = initializers[node.input[1]]
                scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * 50, scale.name))
        return quantized

    monkeypatch.setattr(quantize, "quantize_qdq", wrong_scales)
    with pytest.raises(ExportError, match="quantization is broken|same output for every example"):
        deploy(bundle, "alice", "fpga-vitisai")
    assert not (fpga_bundle / "adapters" / "alice.fpga-vitisai").exists()
