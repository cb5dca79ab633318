"""The build's target graph for an int8-qdq profile (fpga-vitisai): static shapes and opset 17, every MatMul/Gemm
between Q/DQ pairs, the XINT8 variant's power-of-two scales, the manifest's target section, and the settings
refused before any work."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edge_sdk.bundle import open_bundle
from edge_sdk.bundle.manifest import Manifest
from edge_sdk.errors import BundleError, ConfigError
from edge_sdk.host.build import build_bundle
from edge_sdk.host.config import BuildConfig, load_recipe
from edge_sdk.host.pipeline import plan
from edge_sdk.targets.quantize import is_power_of_two, qdq_report

LABELS = ("business", "sport", "tech")
FPGA_PROFILE = Path(__file__).resolve().parents[2] / "edge_sdk" / "profiles" / "fpga-vitisai.toml"


def _fpga_config(fixtures_dir: Path, **changes) -> BuildConfig:
    settings = {"profile": "fpga-vitisai", "calibration_data": fixtures_dir / "data" / "train.jsonl"} | changes
    return BuildConfig(model_dir=fixtures_dir / "tiny-model", task="seq-cls", labels=LABELS, max_length=32, **settings)


def _fpga_fixture(fixtures_dir: Path) -> Path:
    root = fixtures_dir / "tiny-seq-cls-fpga"
    if not root.is_dir():
        pytest.skip(f"{fixtures_dir} predates the fpga fixture: rebuild it with tests/make_fixtures.py")
    return root


def _check_target_graph(path: Path, sequence: int) -> onnx.ModelProto:
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    assert next(e.version for e in model.opset_import if e.domain in ("", "ai.onnx")) == 17
    assert model.ir_version <= 10  # what ONNX Runtime's training build 1.19 reads
    for value in model.graph.input:
        assert [d.dim_value for d in value.type.tensor_type.shape.dim] == [1, sequence]
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    for value in [*inferred.graph.value_info, *inferred.graph.output]:
        assert all(d.HasField("dim_value") for d in value.type.tensor_type.shape.dim), value.name
    report = qdq_report(model)
    assert report["matmul_gemm"] >= 10 and report["qdq_wrapped"] == report["matmul_gemm"], report
    # Symmetric int8 weights: every constant int8 tensor a DequantizeLinear reads has zero point 0.
    initializers = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if (node.op_type == "DequantizeLinear" and node.input[0] in initializers and len(node.input) > 2
                and node.input[2] in initializers):
            assert not np.any(numpy_helper.to_array(initializers[node.input[2]])), node.name
    return model


def test_fpga_build_ships_a_static_qdq_target_graph(fixtures_dir: Path) -> None:
    bundle = open_bundle(_fpga_fixture(fixtures_dir))
    target = bundle.manifest.target_spec
    assert target is not None and target.profile == "fpga-vitisai" and target.precision == "int8-qdq"
    assert target.static_shapes == [1, 32] and target.opset == 17
    assert target.quantization["scheme"] == "int8" and target.quantization["calibration_examples"] == 64
    # A tiny random model: close logits that rounding flips; the gate against broken graphs is in validate().
    assert target.validation["prediction_agreement"] >= 0.5 and "metric" in target.validation
    for path in (target.model, target.coverage, target.calibration, target.provider_config):
        bundle.path(path)  # listed in the manifest, hashed, inside the bundle
    _check_target_graph(bundle.path(target.model), 32)
    config = json.loads(bundle.path(target.provider_config).read_text())
    assert [p["name"] for p in config["passes"]] == ["init", "vaiml_partition"]
    # Training stays on the CPU: the float graphs and the training step are the same as a cpu build's.
    assert bundle.manifest.inference_spec.model == "portable/inference.onnx" and bundle.manifest.portable_step


def test_xint8_profile_file_gives_power_of_two_scales(fixtures_dir: Path, tmp_path: Path) -> None:
    profile = tmp_path / "fpga-xint8.toml"
    profile.write_text(FPGA_PROFILE.read_text().replace('scheme = "int8"', 'scheme = "xint8"'))
    out = build_bundle(_fpga_config(fixtures_dir, profile=str(profile)), tmp_path / "bundle")
    bundle = open_bundle(out)
    target = bundle.manifest.target_spec
    assert target.profile == "fpga-xint8" and target.quantization["scheme"] == "xint8"
    model = _check_target_graph(bundle.path(target.model), 32)
    initializers = {init.name: init for init in model.graph.initializer}
    scales = [float(s) for node in model.graph.node if node.op_type in ("QuantizeLinear", "DequantizeLinear")
              for s in np.ravel(numpy_helper.to_array(initializers[node.input[1]]))]
    assert scales and all(is_power_of_two(s) for s in scales)
    assert target.quantization["power_of_two_scales"] is True


def test_int8_qdq_build_without_calibration_data_fails_before_any_work(fixtures_dir: Path, tmp_path: Path) -> None:
    config = replace(_fpga_config(fixtures_dir), calibration_data=None)
    with pytest.raises(ConfigError, match="--calibration-data FILE .*calibration_data"):
        build_bundle(config, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="does not exist"):
        replace(config, calibration_data=tmp_path / "missing.jsonl").validate()
    with pytest.raises(ConfigError, match="int8-compute"):
        replace(_fpga_config(fixtures_dir), base="int8-compute").validate()
    with pytest.raises(ConfigError, match="static shapes"):
        replace(_fpga_config(fixtures_dir), task="causal-lm", labels=()).validate()
    assert [stage.name for stage in plan(_fpga_config(fixtures_dir))][-2:] == ["write", "target-graph"]
    assert "target-graph" not in [stage.name for stage in plan(replace(_fpga_config(fixtures_dir), profile="cpu"))]


def test_recipe_calibration_data_is_relative_to_the_recipe(fixtures_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(fixtures_dir / "tiny-model", tmp_path / "model")
    (tmp_path / "data").mkdir()
    shutil.copyfile(fixtures_dir / "data" / "train.jsonl", tmp_path / "data" / "calibration.jsonl")
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('model = "model"\ntask = "seq-cls"\nlabels = ["business", "sport", "tech"]\n'
                      'profile = "fpga-vitisai"\ncalibration_data = "data/calibration.jsonl"\n')
    config = load_recipe(recipe)
    assert config.calibration_data == tmp_path / "data" / "calibration.jsonl"
    config.validate()


def test_manifest_target_section_is_optional_and_read_strictly(fixtures_dir: Path) -> None:
    plain = (fixtures_dir / "tiny-seq-cls" / "manifest.json").read_text()
    manifest = Manifest.from_json(plain)
    assert manifest.target is None and manifest.target_spec is None and '"target"' not in manifest.to_json()
    data = json.loads((_fpga_fixture(fixtures_dir) / "manifest.json").read_text())
    assert Manifest.from_json(json.dumps(data)).target_spec.static_shapes == [1, 32]
    for key, value in (("static_shapes", [1]), ("opset", "17"), ("model", None), ("quantization", [])):
        broken = json.loads(json.dumps(data))
        broken["target"][key] = value
        with pytest.raises(BundleError, match=f"target.{key}"):
            Manifest.from_json(json.dumps(broken))
    broken = json.loads(json.dumps(data))
    broken["target"] = "targets/fpga-vitisai"
    with pytest.raises(BundleError, match="field target must be a JSON object"):
        Manifest.from_json(json.dumps(broken))
