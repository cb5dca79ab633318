"""The memory budget of personalization: size parsing, the estimate's shape, the batch fit, the refusal, and the
API, CLI flag, JSON field and profile key on the tiny fixture bundles (runs in every environment)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_sdk.bundle.manifest import Manifest
from edge_sdk.cli.main import cli
from edge_sdk.device import DeviceBundle, TrainingSettings
from edge_sdk.device.memory_budget import BACKENDS as CONSTANTS
from edge_sdk.device.memory_budget import (
    MIB,
    estimate_training_peak,
    fit_batch_size,
    frozen_weights_file,
    model_dimensions,
    padded_lengths,
    parse_size,
)
from edge_sdk.errors import ConfigError, MemoryBudgetError
from edge_sdk.profiles import load_profile

BACKENDS = ["portable", "ort-training"]


def manifest_of(bundle: Path) -> Manifest:
    return Manifest.from_json((bundle / "manifest.json").read_text())


def with_manifest_change(source: Path, target: Path, change) -> Path:
    bundle = Path(shutil.copytree(source, target))
    data = json.loads((bundle / "manifest.json").read_text())
    change(data)
    (bundle / "manifest.json").write_text(json.dumps(data))
    return bundle


@pytest.mark.parametrize(("text", "size"), [
    ("512MiB", 512 << 20), ("1.5GiB", 3 << 29), ("800MB", 800_000_000), ("1048576", 1 << 20), (" 64 kib ", 64 << 10),
    ("2gb", 2_000_000_000), (4096, 4096),
])
def test_sizes_parse_in_binary_and_decimal_units(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "512 MiBs", "-5MiB", "0", "1.5.2GB", "MiB"])
def test_bad_sizes_name_the_flag_and_the_accepted_forms(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_size(text)
    assert "--memory-budget" in str(caught.value)
    if text not in ("0",):
        assert "512MiB" in str(caught.value)


@pytest.mark.parametrize("fixture", ["tiny-seq-cls", "tiny-causal-lm", "tiny-seq2seq"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_the_estimate_grows_with_batch_and_length(fixtures_dir: Path, fixture: str, backend: str) -> None:
    manifest = manifest_of(fixtures_dir / fixture)
    totals = [estimate_training_peak(manifest, backend, batch, 16).steady for batch in (1, 2, 4, 8, 64)]
    assert totals == sorted(totals) and len(set(totals)) == len(totals)
    lengths = [estimate_training_peak(manifest, backend, 4, length).steady for length in (4, 8, 16, 32)]
    assert lengths == sorted(lengths) and len(set(lengths)) == len(lengths)
    estimate = estimate_training_peak(manifest, backend, 4, 16)
    assert estimate.total == max(estimate.load_peak, sum(estimate.parts.values()))
    assert {"runtime", "frozen weights", "trainable + optimizer", "activations", "logits"} <= set(estimate.parts)


def test_language_model_logits_follow_batch_length_and_vocabulary(fixtures_dir: Path) -> None:
    manifest = manifest_of(fixtures_dir / "tiny-causal-lm")
    vocabulary = manifest.outputs[0].shape[-1]
    one = estimate_training_peak(manifest, "portable", 1, 10).parts["logits"]
    assert estimate_training_peak(manifest, "portable", 3, 20).parts["logits"] == pytest.approx(6 * one, rel=1e-6)
    assert one >= 4 * 10 * vocabulary  # at least the float32 logits themselves
    classifier = manifest_of(fixtures_dir / "tiny-seq-cls")
    # A classifier has one output row per example, whatever its length.
    assert (estimate_training_peak(classifier, "portable", 2, 8).parts["logits"]
            == estimate_training_peak(classifier, "portable", 2, 32).parts["logits"])


def _without_dimensions(source: Path, target: Path) -> Path:
    """The bundle as an SDK before recorded dimensions wrote it."""
    return with_manifest_change(source, target, lambda data: data["model"].pop("dimensions", None))


def test_recorded_dimensions_win_over_derived_ones(fixtures_dir: Path, tmp_path: Path) -> None:
    source = fixtures_dir / "tiny-seq-cls"
    derived = model_dimensions(manifest_of(_without_dimensions(source, tmp_path / "older")))
    assert derived.hidden_size > 0 and derived.layers > 0
    if "dimensions" in manifest_of(source).model:  # a bundle that records them: derived agrees where it can
        recorded = model_dimensions(manifest_of(source))
        assert (recorded.hidden_size, recorded.layers) == (derived.hidden_size, derived.layers)
    dims = {"hidden_size": 512, "layers": 9, "intermediate_size": 2048, "attention_heads": 8, "vocab_size": 1000}
    bundle = with_manifest_change(source, tmp_path / "b", lambda data: data["model"].update(dimensions=dims))
    recorded = model_dimensions(manifest_of(bundle))
    assert (recorded.hidden_size, recorded.layers, recorded.intermediate_size, recorded.attention_heads) == (
        512, 9, 2048, 8)
    assert not recorded.derived and derived.derived


def test_derived_dimensions_count_the_adapted_layers(fixtures_dir: Path, tmp_path: Path) -> None:
    manifest = manifest_of(_without_dimensions(fixtures_dir / "tiny-causal-lm", tmp_path / "older"))
    dims = model_dimensions(manifest)
    layer_numbers = {part for spec in manifest.trainable for part in spec.name.split(".") if part.isdigit()}
    assert dims.layers == len(layer_numbers)
    assert dims.vocab_size == manifest.outputs[0].shape[-1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_fit_picks_the_largest_batch_that_fits(fixtures_dir: Path, backend: str) -> None:
    manifest = manifest_of(fixtures_dir / "tiny-causal-lm")
    at = {batch: estimate_training_peak(manifest, backend, batch, 24).total for batch in range(1, 17)}
    for fits in (1, 5, 11):
        budget = at[fits] + (at[fits + 1] - at[fits]) // 2  # between batch `fits` and the next
        fit = fit_batch_size(manifest, backend, 16, 24, budget)
        assert (fit.batch_size, fit.requested, fit.reduced) == (fits, 16, True)
        assert fit.estimate.total <= budget < at[fits + 1]
        assert "batch size 16" in fit.note() and f"batch size {fits}" in fit.note()
    whole = fit_batch_size(manifest, backend, 16, 24, at[16])
    assert (whole.batch_size, whole.reduced) == (16, False)


def test_the_refusal_gives_both_estimates_and_a_budget_that_fits(fixtures_dir: Path) -> None:
    manifest = manifest_of(fixtures_dir / "tiny-seq-cls")
    at_one = estimate_training_peak(manifest, "portable", 1, 32).total
    with pytest.raises(MemoryBudgetError) as caught:
        fit_batch_size(manifest, "portable", 8, 32, at_one - 1)
    message = str(caught.value)
    assert "at batch 8 x 32 tokens" in message and "even batch size 1 needs" in message
    assert "activations" in message and "frozen weights" in message  # the breakdown
    suggested = int(message.split("--memory-budget to at least ")[1].split(" MiB")[0].replace(",", "")) * MIB
    assert suggested >= at_one
    fit_batch_size(manifest, "portable", 8, 32, suggested)  # what it suggests does fit


def test_padded_length_is_the_longest_example_capped_by_max_length(fixtures_dir: Path, tiny_data: Path) -> None:
    bundle = DeviceBundle.open(fixtures_dir / "tiny-seq-cls")
    train = bundle.task.load(tiny_data / "train.jsonl")
    length, output_length = padded_lengths(bundle.manifest, train)
    assert length == min(max(len(ids) for ids, _ in train.encoded), bundle.manifest.max_length)
    assert output_length is None


def test_seq2seq_logits_follow_the_target_length(fixtures_dir: Path, tiny_data: Path) -> None:
    bundle = DeviceBundle.open(fixtures_dir / "tiny-seq2seq")
    train = bundle.task.load(tiny_data / "s2s-train.jsonl")
    _, output_length = padded_lengths(bundle.manifest, train)
    assert output_length == max(len(target) for target in train.targets) + 1


def test_personalize_lowers_the_batch_to_fit_and_says_so(tiny_bundle: Path, tiny_data: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    bundle = DeviceBundle.open(tiny_bundle)
    train = bundle.task.load(tiny_data / "train.jsonl")
    length, _ = padded_lengths(bundle.manifest, train)
    budget = estimate_training_peak(bundle.manifest, "portable", 3, length).total
    with caplog.at_level(logging.WARNING):
        result = bundle.personalize(tiny_data / "train.jsonl", backend="portable", memory_budget=budget,
                                    settings=TrainingSettings(epochs=1, batch_size=16))
    assert result.memory["requested_batch_size"] == 16 and result.memory["batch_size"] == 3
    assert result.memory["estimate"]["total_bytes"] <= budget
    assert result.steps == -(-len(train) // 3)
    assert any("training with batch size 3" in record.getMessage() for record in caplog.records)
    unbounded = bundle.personalize(tiny_data / "train.jsonl", backend="portable", adapter="free",
                                   settings=TrainingSettings(epochs=1, batch_size=16))
    assert unbounded.memory is None


def run(*args: str | Path):
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def test_cli_flag_reports_the_fit_in_json(tiny_bundle: Path, tiny_data: Path) -> None:
    manifest = manifest_of(tiny_bundle)
    result = run("personalize", tiny_bundle, "--data", tiny_data / "train.jsonl", "--epochs", "1", "--batch-size",
                 "8", "--backend", "portable", "--memory-budget", "64GiB", "--json")
    assert result.exit_code == 0, result.stderr
    memory = json.loads(result.stdout)["memory"]
    assert memory["budget_bytes"] == 64 << 30 and memory["batch_size"] == memory["requested_batch_size"] == 8
    assert memory["estimate"]["backend"] == "portable" and manifest.max_length >= memory["estimate"]["sequence_length"]


@pytest.mark.parametrize(("budget", "expected"), [("lots", "--memory-budget: 'lots' is not a size"),
                                                  ("1MiB", "would not fit the memory budget of 1 MiB")])
def test_cli_refuses_in_one_line(tiny_bundle: Path, tiny_data: Path, budget: str, expected: str) -> None:
    result = run("personalize", tiny_bundle, "--data", tiny_data / "train.jsonl", "--backend", "portable",
                 "--memory-budget", budget)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and expected in lines[0], result.stderr
    assert not (tiny_bundle / "adapters" / "default.safetensors").exists()


def test_the_profile_budget_applies_and_the_flag_wins(fixtures_dir: Path, tiny_data: Path, tmp_path: Path) -> None:
    bundle = with_manifest_change(fixtures_dir / "tiny-seq-cls", tmp_path / "b",
                                  lambda data: data["profile"].setdefault("limits", {}).update(memory_budget="1MiB"))
    device = DeviceBundle.open(bundle, verify=False)
    with pytest.raises(MemoryBudgetError, match="profile 'cpu' memory_budget to at least"):
        device.personalize(tiny_data / "train.jsonl", backend="portable")
    result = device.personalize(tiny_data / "train.jsonl", backend="portable", memory_budget="64GiB",
                                settings=TrainingSettings(epochs=1, batch_size=4))
    assert result.memory["budget_bytes"] == 64 << 30


def test_a_profile_budget_must_be_written_as_a_size(fixtures_dir: Path, tmp_path: Path) -> None:
    assert load_profile("cpu").memory_budget is None
    bundle = with_manifest_change(fixtures_dir / "tiny-seq-cls", tmp_path / "b",
                                  lambda data: data["profile"].setdefault("limits", {}).update(memory_budget="big"))
    device = DeviceBundle.open(bundle, verify=False)
    with pytest.raises(ConfigError, match="profile 'cpu' memory_budget: 'big' is not a size"):
        device.personalize(fixtures_dir / "data" / "train.jsonl", backend="portable")


def test_writing_a_checkpoint_counts_for_onnx_runtime_only(fixtures_dir: Path) -> None:
    """ONNX Runtime serializes its whole checkpoint state (frozen weights too) in memory when the run
    checkpoints; the portable step writes the state buffers it already holds."""
    if "ort-training" not in manifest_of(fixtures_dir / "tiny-seq-cls").training_backends:
        pytest.skip("the fixture has no ONNX Runtime training artifacts")
    manifest = manifest_of(fixtures_dir / "tiny-seq-cls")
    ort = estimate_training_peak(manifest, "ort-training", 2, 16)
    expected = int(CONSTANTS["ort-training"].checkpoint_factor * frozen_weights_file(manifest, "ort-training"))
    assert ort.parts["checkpoint write"] == expected > 0
    assert estimate_training_peak(manifest, "portable", 2, 16).parts["checkpoint write"] == 0
