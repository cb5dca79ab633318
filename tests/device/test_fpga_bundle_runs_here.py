"""An fpga-vitisai bundle on a machine without the Vitis AI provider (every machine with PyPI's onnxruntime): it
runs its static int8 target graph on the CPU with one warning naming the provider, `--strict` refuses in one line,
`--profile cpu` serves the float graph, and the shipped coverage report places every op type of the graph."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_sdk.cli.main import cli
from edge_sdk.device.runtime import DeviceBundle
from edge_sdk.profiles import providers as providers_module

VITIS = "VitisAIExecutionProvider"


@pytest.fixture
def fpga_bundle(fixtures_dir: Path) -> Path:
    bundle = fixtures_dir / "tiny-seq-cls-fpga"
    if not bundle.exists():
        pytest.skip("fixtures predate the fpga bundle; run tests/make_fixtures.py")
    return bundle


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(providers_module, "_warned", set())


def test_it_falls_back_to_the_cpu_with_one_warning_and_strict_fails(fpga_bundle: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        result = CliRunner().invoke(cli, ["infer", str(fpga_bundle), "--text", "shares rose", "--text", "a goal",
                                          "--json"])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert len(json.loads(result.stdout)["predictions"]) == 2
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len([w for w in warnings if VITIS in w]) == 1, warnings
    strict = CliRunner().invoke(cli, ["infer", str(fpga_bundle), "--text", "shares rose", "--strict"])
    assert strict.exit_code == 1 and strict.stdout == ""
    lines = strict.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and VITIS in lines[0] and "strict" in lines[0]


def test_the_initial_adapter_runs_the_target_graph_and_cpu_profile_the_float_graph(fpga_bundle: Path) -> None:
    target = json.loads((fpga_bundle / "manifest.json").read_text())["target"]
    texts = ["shares rose after the results", "the coach praised the late goal"]
    on_target = DeviceBundle.open(fpga_bundle, verify=False)
    assert on_target._target_graph("initial").source == target["model"]
    on_cpu = DeviceBundle.open(fpga_bundle, verify=False, profile="cpu")
    assert on_cpu._target_graph("initial") is None  # a CPU profile has no target graph: the float one serves
    float_scores = [p.probabilities for p in on_cpu.infer(texts, adapter="initial")]
    int8_scores = [p.probabilities for p in on_target.infer(texts, adapter="initial")]
    assert float_scores != int8_scores  # two different graphs answered
    for a, b in zip(float_scores, int8_scores, strict=True):
        assert max(abs(a[label] - b[label]) for label in a) < 0.2  # … and the int8 one approximates the float one


def test_the_shipped_coverage_report_places_every_op_type(fpga_bundle: Path) -> None:
    manifest = json.loads((fpga_bundle / "manifest.json").read_text())
    coverage = json.loads((fpga_bundle / manifest["target"]["coverage"]).read_text())
    assert coverage["provenance"] == "predicted" and coverage["provider_run"] is False
    assert coverage["graph"] == "model.onnx"  # beside the report, not the build's staging path
    placements = coverage["node_placements"]
    assert {entry["placement"] for entry in placements} <= {"accelerator", "cpu"}
    assert all(entry["reason"] for entry in placements)
    op_types = coverage["op_types"]
    assert set(op_types) == {entry["op_type"] for entry in placements}
    assert sum(entry["count"] for entry in op_types.values()) == coverage["nodes"]["total"] == len(placements)
    assert op_types["MatMul"]["accelerator"] == op_types["MatMul"]["count"] > 0  # every product is int8 there
    assert op_types["Gather"]["cpu"] == op_types["Gather"]["count"]  # embeddings stay on the CPU
    assert 0 < coverage["flops"]["share"] < 1 and coverage["boundaries"]["count"] > 0
