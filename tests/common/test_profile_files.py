"""Profiles as data: every built-in one loads and survives the manifest round trip, a user's file is read by
path, and every invalid value is refused naming the key, the value and what is allowed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_sdk.cli.main import cli
from edge_sdk.errors import ConfigError
from edge_sdk.profiles import available_profiles, load_profile, profile_from_dict

USER_PROFILE = Path(__file__).resolve().parents[1] / "profiles" / "edge-gateway.toml"


@pytest.mark.parametrize("name", available_profiles())
def test_every_built_in_profile_loads_and_round_trips_through_the_manifest(name: str) -> None:
    profile = load_profile(name)
    assert profile.name == name and profile.source == "built-in"
    assert profile.provider_names[-1] == "CPUExecutionProvider"  # every target can fall back to the CPU
    again = profile_from_dict(json.loads(json.dumps(profile.to_dict())))
    assert again == profile


def test_the_three_targets_the_sdk_promises_are_built_in() -> None:
    assert {"cpu", "cpu-int8", "fpga-vitisai"} <= set(available_profiles())
    assert load_profile("cpu").precision == "float32"
    assert load_profile("cpu-int8").precision == "int8-dynamic"
    fpga = load_profile("fpga-vitisai")
    assert fpga.precision == "int8-qdq" and fpga.has_target_graph and fpga.opset == 17
    assert fpga.provider_names == ["VitisAIExecutionProvider", "CPUExecutionProvider"]
    assert fpga.static_shapes is not None and fpga.static_shapes.batch == 1
    assert {"config_file", "target", "cache_dir", "cache_key"} <= set(fpga.providers[0].options)
    assert {"MatMul", "Gemm"} <= set(fpga.quantization.op_types)
    assert "Gather" not in fpga.operators["int8"]  # embeddings stay on the CPU
    assert fpga.accelerator == "VitisAIExecutionProvider"


def test_a_user_file_is_read_by_path() -> None:
    profile = load_profile(USER_PROFILE)
    assert (profile.name, profile.source) == ("edge-gateway", str(USER_PROFILE))
    assert profile.session.intra_op_threads == 2 and profile.session.graph_optimization_level == "basic"
    assert (profile.max_sequence_length, profile.memory_budget) == (64, "1GiB")
    assert load_profile(str(USER_PROFILE)) == profile
    assert profile.session_options().intra_op_num_threads == 2


def test_manifests_written_before_profile_sections_still_read() -> None:
    old = {"name": "cpu", "description": "", "providers": ["CPUExecutionProvider"],
           "graph_optimization_level": "all", "intra_op_threads": 3, "memory_budget": "2GiB"}
    profile = profile_from_dict(old)
    assert (profile.graph_optimization_level, profile.intra_op_threads, profile.memory_budget) == ("all", 3, "2GiB")


@pytest.mark.parametrize(("text", "message"), [
    ('precision = "int4"', "precision = 'int4' is not allowed; choose one of float32, int8-dynamic, int8-qdq"),
    ('providers = []', r"providers = \[\] is not allowed; expected a non-empty list"),
    ('providers = ["Npu"]', r"providers\[0\].name = 'Npu' is not allowed; expected an ONNX Runtime provider name"),
    ('providers = ["CPUExecutionProvider", "CPUExecutionProvider"]', "name each provider once"),
    ('[session]\ngraph_optimization_level = "max"',
     "session.graph_optimization_level = 'max' is not allowed; choose one of disabled, basic, extended, all"),
    ('[session]\nintra_op_threads = -1', r"session.intra_op_threads = -1 is not allowed; expected an integer >= 0"),
    ('[session]\nthreads = 2', "unknown key.*session.threads; allowed: session.graph_optimization_level"),
    ('precision = "int8-qdq"\n[quantization]\nscheme = "int4"',
     "quantization.scheme = 'int4' is not allowed; choose one of int8, xint8"),
    ('precision = "int8-qdq"\n[quantization]\nop_types = ["Add"]',
     "quantization.op_types = \\['Add'\\] is not allowed; static int8 wraps every MatMul and Gemm"),
    ('[quantization]\nscheme = "xint8"', "only precision = \"int8-qdq\" is quantized statically"),
    ('[static_shapes]\nbatch = 0', r"static_shapes.batch = 0 is not allowed; expected an integer in 1..1"),
    ('[static_shapes]\nbatch = 4', r"static_shapes.batch = 4 is not allowed; expected an integer in 1..1"),
    ('opset = 9', r"opset = 9 is not allowed; expected an integer in 14..21"),
    ('[operators]\nint4 = ["MatMul"]', "unknown key.*operators.int4; allowed: operators.int8, operators.float32"),
    ('[operators]\nint8 = ["MatMul"]', "an operator table describes an accelerator"),
    ('[limits]\nmemory_budget = true', "limits.memory_budget = True is not allowed; expected a size"),
    ('colour = "red"', "unknown key.*colour; allowed: name, description, providers"),
    ('precision = ', "is not valid TOML"),
])
def test_an_invalid_profile_names_the_key_the_value_and_the_allowed_values(tmp_path: Path, text: str,
                                                                            message: str) -> None:
    path = tmp_path / "board.toml"
    path.write_text(text + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=message) as caught:
        load_profile(path)
    assert str(path) in str(caught.value)


def test_unknown_names_and_missing_files_say_what_exists(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown profile 'npu'; available profiles: cpu, cpu-int8"):
        load_profile("npu")
    with pytest.raises(ConfigError, match="profile file .*nowhere.toml' does not exist"):
        load_profile(tmp_path / "nowhere.toml")


def test_cli_lists_and_shows_profiles(tmp_path: Path) -> None:
    runner = CliRunner()
    listed = runner.invoke(cli, ["profiles", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    rows = {row["name"]: row for row in json.loads(listed.stdout)["profiles"]}
    assert rows["fpga-vitisai"]["providers"][0] == "VitisAIExecutionProvider"
    assert set(available_profiles()) == set(rows)
    shown = runner.invoke(cli, ["profiles", "show", str(USER_PROFILE), "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout) == load_profile(USER_PROFILE).to_dict()
    human = runner.invoke(cli, ["profiles", "show", "fpga-vitisai"])
    assert human.exit_code == 0 and "static shapes batch 1" in human.stdout and "opset         17" in human.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('precision = "fp16"\n', encoding="utf-8")
    refused = runner.invoke(cli, ["profiles", "show", str(bad)])
    assert refused.exit_code == 1 and refused.exception is None or isinstance(refused.exception, SystemExit)
    assert refused.stderr.strip().splitlines() == [
        f"Error: profile file {str(bad)!r}: precision = 'fp16' is not allowed; choose one of float32, int8-dynamic, "
        "int8-qdq"]
