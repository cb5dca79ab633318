"""The two PEFT axes, every combination: how the adapter is parametrised (lora, dora) x how the frozen base
is stored and computes (float32, int8-storage, int8-compute). Each builds, passes the build's own checks,
and trains on every backend its manifest names; or it is refused before any work with the reason."""

from __future__ import annotations

from itertools import product
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edge_sdk.bundle import open_bundle
from edge_sdk.cli.main import cli
from edge_sdk.device import DeviceBundle, TrainingSettings
from edge_sdk.errors import ConfigError
from edge_sdk.host.build import build_bundle, describe_build
from edge_sdk.host.config import ADAPTERS, BASES, BuildConfig, LoraSettings

LABELS = ("business", "sport", "tech")
SETTINGS = TrainingSettings(epochs=2, learning_rate=2e-2, batch_size=16, seed=1)


@pytest.mark.parametrize(("adapter", "base"), list(product(ADAPTERS, BASES)))
def test_every_combination_builds_validates_and_trains(adapter: str, base: str, fixtures_dir: Path,
                                                       tmp_path: Path) -> None:
    config = BuildConfig(model_dir=fixtures_dir / "tiny-model", task="seq-cls", labels=LABELS, max_length=32,
                         lora=LoraSettings(adapter=adapter), base=base)
    manifest = open_bundle(build_bundle(config, tmp_path / "bundle")).manifest
    assert (manifest.adapter, manifest.base) == (adapter, base)
    assert manifest.compute_precision == ("int8" if base == "int8-compute" else "fp32")
    assert manifest.training_backends == (["portable"] if base == "int8-compute" else ["ort-training", "portable"])
    assert manifest.build["portable_max_relative_loss_difference"] < 1e-4
    assert all(diff < 1e-3 for diff in manifest.build["validation_max_abs_diff"].values())
    if adapter == "dora":
        assert any("lora_magnitude_vector" in spec.name for spec in manifest.trainable)
    if base == "int8-storage":
        assert manifest.build["quantization"]["weights"] > 0
    data = fixtures_dir / "data"
    bundle = DeviceBundle.open(tmp_path / "bundle")
    for backend in manifest.training_backends:
        result = bundle.personalize(data / "train.jsonl", adapter=backend, settings=SETTINGS, backend=backend)
        assert result.backend == backend and np.all(np.isfinite(result.losses))
        assert np.mean(result.losses[-3:]) < result.losses[0]
        assert bundle.evaluate(data / "dev.jsonl", adapter=backend)["examples"] > 0


@pytest.mark.parametrize(("flags", "reason"), [
    ({"method": "qlora", "precision": "int8"}, r"frozen base is named more than once.*method -> int8-storage, "
                                               r"precision -> int8-compute"),
    ({"base": "int8-compute", "precision": "fp32"}, r"base -> int8-compute, precision -> float32"),
    ({"adapter": "dora", "method": "lora"}, r"adapter is named twice"),
])
def test_contradicting_names_are_refused_at_the_start(flags: dict, reason: str, fixtures_dir: Path) -> None:
    config = BuildConfig(model_dir=fixtures_dir / "tiny-model", task="seq-cls", labels=LABELS)
    with pytest.raises(ConfigError, match=reason):
        config.with_overrides(**flags)


@pytest.mark.parametrize(("flags", "expected"), [
    ({"method": "qlora"}, ("lora", "int8-storage")),
    ({"method": "dora", "precision": "int8"}, ("dora", "int8-compute")),
    ({"method": "qlora", "precision": "fp32"}, ("lora", "int8-storage")),  # qlora computes in float32
    ({"adapter": "dora", "base": "int8-storage"}, ("dora", "int8-storage")),
])
def test_legacy_names_are_aliases_of_the_two_axes(flags: dict, expected: tuple, fixtures_dir: Path) -> None:
    config = BuildConfig(model_dir=fixtures_dir / "tiny-model", task="seq-cls", labels=LABELS).with_overrides(**flags)
    assert (config.lora.adapter, config.base) == expected


def test_dry_run_lists_the_stages_and_builds_nothing(fixtures_dir: Path, tmp_path: Path) -> None:
    import json

    result = CliRunner().invoke(cli, ["build", str(fixtures_dir / "tiny-model"), "--task", "seq-cls", "--labels",
                                      ",".join(LABELS), "--method", "qlora", "--out", str(tmp_path / "b"),
                                      "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["config"]["base"] == "int8-storage" and plan["config"]["lora"]["adapter"] == "lora"
    assert [stage["name"] for stage in plan["stages"]] == [
        "load-model", "int8-storage", "export", "check-export", "training-artifacts", "portable-step",
        "inference-graph", "validate", "backend-check", "write"]
    assert not (tmp_path / "b").exists()
    int8 = describe_build(BuildConfig(model_dir=fixtures_dir / "tiny-model", task="causal-lm", labels=(),
                                      base="int8-compute"))
    names = [stage["name"] for stage in int8["stages"]]
    assert names.index("generation-graphs") < names.index("int8-compute") < names.index("write") == len(names) - 1
