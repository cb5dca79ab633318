"""A profile's providers at run time (edge_sdk/profiles/providers.py): option placeholders, the fallback to the
CPU with one warning per provider, strict mode, a user's profile file given with --profile, and the OpenVINO
profile where its provider is installed (skipped elsewhere)."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
from click.testing import CliRunner

from edge_sdk.cli.main import cli
from edge_sdk.device.runtime import DeviceBundle
from edge_sdk.errors import ConfigError, DependencyError
from edge_sdk.profiles import Profile, ProviderSpec, load_profile
from edge_sdk.profiles import providers as providers_module
from edge_sdk.profiles.providers import DISABLE_CPU_FALLBACK, provider_available, session_providers

MISSING = "NoSuchExecutionProvider"
USER_PROFILE = f"""
description = "a target this machine lacks"
[[providers]]
name = "{MISSING}"
options = {{ cache = "{{bundle}}/.cache/{{bundle_hash}}" }}
[[providers]]
name = "CPUExecutionProvider"
[session]
graph_optimization_level = "basic"
"""


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(providers_module, "_warned", set())


def missing_profile() -> Profile:
    return Profile.parse({"providers": [{"name": MISSING, "options": {
        "cache": "{bundle}/.cache/{bundle_hash}", "config": "{target_dir}/config.json", "plain": 3}},
        "CPUExecutionProvider"], "session": {}}, "missing", "test")


def test_placeholders_are_filled(tiny_bundle: Path) -> None:
    profile = Profile.parse({"providers": [{"name": "CPUExecutionProvider", "options": {
        "cache": "{bundle}/.cache/{bundle_hash}", "config": "{target_dir}/config.json"}}], "session": {}},
        "cpu-options", "test")
    graph = tiny_bundle / "portable" / "inference.onnx"
    resolved = session_providers(profile, tiny_bundle, graph)
    digest = hashlib.sha256((tiny_bundle / "manifest.json").read_bytes()).hexdigest()[:16]
    assert resolved.names == ["CPUExecutionProvider"] and resolved.missing == [] and resolved.config == {}
    assert resolved.options == [{"cache": f"{tiny_bundle}/.cache/{digest}", "config": f"{graph.parent}/config.json"}]


def test_a_missing_provider_falls_back_with_one_warning_naming_it(tiny_bundle: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        first = session_providers(missing_profile(), tiny_bundle, tiny_bundle / "model.onnx")
        session_providers(missing_profile(), tiny_bundle, tiny_bundle / "model.onnx")
    assert first.names == ["CPUExecutionProvider"] and first.missing == [MISSING] and first.config == {}
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and MISSING in warnings[0] and "--strict" in warnings[0]


def test_strict_refuses_a_missing_provider_and_disables_ort_fallback(tiny_bundle: Path) -> None:
    with pytest.raises(DependencyError, match=f"{MISSING}.*strict"):
        session_providers(missing_profile(), tiny_bundle, tiny_bundle / "model.onnx", strict=True)
    # The CPU provider listed by the profile is its design: ONNX Runtime refuses disabling its fallback then.
    listed = session_providers(load_profile("cpu"), tiny_bundle, None, strict=True)
    assert listed.config == {} and listed.names == ["CPUExecutionProvider"]
    # Not listed: strict mode keeps ONNX Runtime from adding it on its own.
    alone = Profile(name="accelerator-only", providers=(ProviderSpec("AzureExecutionProvider"),))
    if "AzureExecutionProvider" in onnxruntime.get_available_providers():
        resolved = session_providers(alone, tiny_bundle, None, strict=True)
        assert resolved.config == {DISABLE_CPU_FALLBACK: "1"} and resolved.names == ["AzureExecutionProvider"]
    relaxed = session_providers(alone, tiny_bundle, None)
    assert relaxed.config == {} and relaxed.names[-1] == "CPUExecutionProvider"


def test_a_user_profile_file_at_run_time_falls_back_with_a_warning_and_strict_exits_1(tiny_bundle: Path,
                                                                                      tmp_path: Path, caplog) -> None:
    profile = tmp_path / "my-target.toml"
    profile.write_text(USER_PROFILE)
    with caplog.at_level(logging.WARNING):  # the CLI's logging prints it on stderr; under pytest caplog holds it
        result = CliRunner().invoke(cli, ["infer", str(tiny_bundle), "--text", "a short text", "--text", "another",
                                          "--profile", str(profile)])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert len(result.stdout.strip().splitlines()) == 2
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and MISSING in warnings[0] and "'my-target'" in warnings[0]
    strict = CliRunner().invoke(cli, ["infer", str(tiny_bundle), "--text", "a short text", "--profile", str(profile),
                                      "--strict"])
    assert strict.exit_code == 1 and strict.stdout == ""
    lines = strict.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and MISSING in lines[0], strict.stderr


def test_strict_with_the_bundles_own_cpu_profile_runs(tiny_bundle: Path, tiny_data: Path) -> None:
    result = CliRunner().invoke(cli, ["evaluate", str(tiny_bundle), "--data", str(tiny_data / "train.jsonl"),
                                      "--strict", "--json"])
    assert result.exit_code == 0, (result.stdout, result.stderr)


def test_profile_override_replaces_the_manifests_for_sessions(tiny_bundle: Path) -> None:
    device_bundle = DeviceBundle.open(tiny_bundle, profile="cpu-int8")
    assert device_bundle.profile.name == "cpu-int8"
    assert DeviceBundle.open(tiny_bundle).profile.name == "cpu"


openvino = pytest.mark.skipif(not provider_available(load_profile("cpu-openvino")),
                              reason="no OpenVINO execution provider here (onnxruntime-openvino, or the "
                                     "onnxruntime-ep-openvino plugin on an Intel CPU)")


@openvino
def test_openvino_profile_runs_on_openvino_and_matches_the_cpu(tiny_bundle: Path) -> None:
    on_cpu = DeviceBundle.open(tiny_bundle)
    on_openvino = DeviceBundle.open(tiny_bundle, profile="cpu-openvino", strict=True)
    data = on_cpu.task.from_texts(["a short text", "another one"], None)
    weights = on_cpu.adapters.load("initial")
    session = on_openvino._inference_session()
    assert session.get_providers()[0] == "OpenVINOExecutionProvider"
    expected = on_cpu.outputs(data, weights)
    got = on_openvino.outputs(data, weights)
    for left, right in zip(expected, got, strict=True):
        np.testing.assert_allclose(np.asarray(right), np.asarray(left), atol=1e-3)


def test_a_plugin_whose_package_is_absent_falls_back_saying_so(tiny_bundle: Path, caplog) -> None:
    profile = Profile.parse({"providers": [{"name": "PluginOnlyExecutionProvider", "library": "no_such_ep_package",
                                            "options": {"cache": "{bundle}/x"}}, "CPUExecutionProvider"],
                             "session": {}}, "plugin", "test")
    with caplog.at_level(logging.WARNING):
        resolved = session_providers(profile, None, None)
    assert resolved.names == ["CPUExecutionProvider"] and resolved.missing == ["PluginOnlyExecutionProvider"]
    message = caplog.records[-1].getMessage()
    # onnxruntime 1.23+ looks for the package; older ones cannot load plugins at all, and say so.
    assert ("no_such_ep_package is not installed" in message or "cannot load plugin" in message), message
    assert "pip install no-such-ep-package" in message


def test_placeholders_unknown_outside_a_bundle_are_refused() -> None:
    profile = Profile.parse({"providers": [{"name": "CPUExecutionProvider", "options": {"cache": "{bundle}/x"}}],
                             "session": {}}, "cpu-options", "test")
    with pytest.raises(ConfigError, match=r"\{bundle\}"):
        session_providers(profile, None, None)


@pytest.mark.skipif(importlib.util.find_spec("onnx") is not None, reason="onnx is installed here")
def test_coverage_without_onnx_says_what_to_install(tiny_bundle: Path) -> None:
    result = CliRunner().invoke(cli, ["coverage", str(tiny_bundle)])
    assert result.exit_code == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install onnx" in lines[0]
