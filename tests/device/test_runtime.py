"""Device runtime on a tiny bundle built by the host: infer, evaluate, personalize, adapter safety."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_sdk.bundle import verify_bundle
from edge_sdk.device import DeviceBundle, TrainingSettings
from edge_sdk.errors import AdapterError, BundleIntegrityError, BundleVersionError, ConfigError, DataError

FAST = TrainingSettings(epochs=2, learning_rate=1e-2, batch_size=16, seed=3)


def test_infer_returns_a_label_and_a_distribution(tiny_bundle: Path) -> None:
    bundle = DeviceBundle.open(tiny_bundle)
    predictions = bundle.infer(["market shares fell", "goal in the cup match", "a"])
    assert len(predictions) == 3
    for prediction in predictions:
        assert prediction.label in ("business", "sport", "tech")
        assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert prediction.score == max(prediction.probabilities.values())


def test_batched_inference_matches_one_by_one(tiny_bundle: Path) -> None:
    bundle = DeviceBundle.open(tiny_bundle)
    texts = ["market", "the team won the league cup with a late goal", "chip data network app users device"]
    together = [p.probabilities for p in bundle.infer(texts)]
    alone = [bundle.infer([text])[0].probabilities for text in texts]
    for a, b in zip(together, alone, strict=True):
        assert list(a.values()) == pytest.approx(list(b.values()), abs=1e-5)


def test_personalize_lowers_loss_saves_adapter_and_leaves_base_untouched(tiny_bundle: Path, tiny_data: Path) -> None:
    bundle = DeviceBundle.open(tiny_bundle)
    steps, epochs = [], []
    result = bundle.personalize(tiny_data / "train.jsonl", tiny_data / "dev.jsonl", adapter="alice",
                                settings=FAST, on_step=steps.append, on_epoch=epochs.append)
    assert result.steps == len(steps) == 2 * 6 and steps[-1].total_steps == 12
    assert [e.epoch for e in epochs] == [1, 2] and all(e.eval_metrics for e in epochs)
    assert np.mean(result.losses[-3:]) < result.losses[0]
    assert result.before["examples"] == 48
    # The adapter holds the kept epoch's weights and differs from the initial one.
    trained, initial = bundle.adapters.load("alice"), bundle.adapters.load("initial")
    assert any(not np.allclose(trained[k], initial[k]) for k in trained)
    kept = result.history[result.best_epoch - 1]["eval"]
    assert bundle.evaluate(tiny_data / "dev.jsonl", adapter="alice")["loss"] == pytest.approx(kept["loss"], rel=1e-5)
    metadata = bundle.adapters.info("alice").metadata
    assert metadata["base_id"] == bundle.adapters.base_id and metadata["training"]["steps"] == 12
    verify_bundle(tiny_bundle)  # personalization wrote nothing the manifest covers
    assert bundle.adapters.names() == ["initial", "alice"]
    assert bundle.resolve_adapter(None) == "initial"


def test_personalization_is_reproducible_for_a_seed(tiny_bundle: Path, tiny_data: Path) -> None:
    bundle = DeviceBundle.open(tiny_bundle)
    first = bundle.personalize(tiny_data / "train.jsonl", adapter="a", settings=FAST).losses
    second = bundle.personalize(tiny_data / "train.jsonl", adapter="b", settings=FAST).losses
    assert first == pytest.approx(second, rel=1e-5)


def test_personalize_continues_from_an_existing_adapter(tiny_bundle: Path, tiny_data: Path) -> None:
    bundle = DeviceBundle.open(tiny_bundle)
    first = bundle.personalize(tiny_data / "train.jsonl", adapter="carol", settings=FAST)
    again = bundle.personalize(tiny_data / "train.jsonl", adapter="carol", settings=FAST)
    assert bundle.adapters.info("carol").metadata["training"]["started_from"] == "carol"
    # Same seed, same first batch: only the starting weights can change the first loss.
    assert again.losses[0] != pytest.approx(first.losses[0], rel=1e-4)


def test_default_adapter_is_used_once_personalized(tiny_bundle: Path, tiny_data: Path) -> None:
    bundle = DeviceBundle.open(tiny_bundle)
    bundle.personalize(tiny_data / "train.jsonl", settings=FAST)
    assert bundle.resolve_adapter(None) == "default"


def test_label_outside_the_label_map_names_file_and_line(tiny_bundle: Path, tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "goal", "label": "sport"}\n{"text": "film star", "label": "movies"}\n')
    allowed = "allowed labels: 'business', 'sport', 'tech'"
    with pytest.raises(DataError, match=rf"d\.jsonl:2: unknown label 'movies'; {allowed}"):
        DeviceBundle.open(tiny_bundle).personalize(data, adapter="x", settings=FAST)
    assert not (tiny_bundle / "adapters" / "x.safetensors").exists()


def test_empty_and_malformed_data_files(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = DeviceBundle.open(tiny_bundle)
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="empty.jsonl.*no examples"):
        bundle.evaluate(tmp_path / "empty.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": "tech"}\n{"text": "b", "label": \n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: not valid JSON"):
        bundle.personalize(tmp_path / "bad.jsonl", settings=FAST)
    assert bundle.adapters.names() == ["initial"]


def test_tampered_bundle_is_refused_naming_the_file(tiny_bundle: Path) -> None:
    with open(tiny_bundle / "portable" / "base.weights", "r+b") as handle:
        handle.seek(100)
        handle.write(b"\x00\x01\x02")
    with pytest.raises(BundleIntegrityError, match="portable/base.weights: content changed"):
        DeviceBundle.open(tiny_bundle)


def test_newer_schema_is_refused(tiny_bundle: Path) -> None:
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (tiny_bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleVersionError, match="schema version 99"):
        DeviceBundle.open(tiny_bundle)


def test_adapter_from_another_bundle_is_refused(tiny_bundle: Path, fixtures_dir: Path, tiny_data: Path,
                                                tmp_path: Path) -> None:
    other = Path(shutil.copytree(fixtures_dir / "other-seq-cls", tmp_path / "other"))
    DeviceBundle.open(other).personalize(tiny_data / "train.jsonl", adapter="stranger", settings=FAST)
    shutil.copy(other / "adapters" / "stranger.safetensors", tiny_bundle / "adapters" / "stranger.safetensors")
    with pytest.raises(AdapterError, match="trained for another base model"):
        DeviceBundle.open(tiny_bundle).infer(["goal"], adapter="stranger")


def test_unknown_adapter_and_bad_names(tiny_bundle: Path, tiny_data: Path) -> None:
    bundle = DeviceBundle.open(tiny_bundle)
    with pytest.raises(AdapterError, match="no adapter named 'nobody'.*available: initial"):
        bundle.infer(["goal"], adapter="nobody")
    with pytest.raises(AdapterError, match="not allowed"):
        bundle.personalize(tiny_data / "train.jsonl", adapter="../escape", settings=FAST)
    with pytest.raises(AdapterError, match="built-in adapter"):
        bundle.personalize(tiny_data / "train.jsonl", adapter="initial", settings=FAST)


def test_unknown_backend_is_a_config_error(tiny_bundle: Path, tiny_data: Path) -> None:
    with pytest.raises(ConfigError, match="unknown training backend 'cuda'"):
        DeviceBundle.open(tiny_bundle).personalize(tiny_data / "train.jsonl", backend="cuda", settings=FAST)


def test_reloading_weights_many_times_does_not_corrupt_memory(tiny_bundle: Path) -> None:
    """Regression: replacing the checkpoint state under a live module/optimizer aborted the process
    at exit now and then (heap corruption). Run it in a child process so a crash fails this test."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from edge_sdk.device import DeviceBundle\n"
        "from edge_sdk.device.backends import create_backend\n"
        f"bundle = DeviceBundle.open({str(tiny_bundle)!r})\n"
        "weights = bundle.adapters.load('initial')\n"
        "for _ in range(3):\n"
        "    backend = create_backend('auto', bundle.bundle)\n"
        "    for _ in range(8):\n"
        "        backend.load_weights(weights)\n"
        "print('done')\n"
    )
    for _ in range(3):
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert (result.returncode, result.stdout.strip()) == (0, "done"), result.stderr[-500:]


def test_a_recipe_batch_limit_is_enforced_with_a_clear_message(tiny_bundle: Path, tiny_data: Path) -> None:
    manifest_path = tiny_bundle / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["training"]["max_batch_size"] = 4
    manifest_path.write_text(json.dumps(manifest))
    bundle = DeviceBundle.open(tiny_bundle)
    with pytest.raises(ConfigError, match="batch size 16 is above this bundle's limit of 4.*--batch-size 4"):
        bundle.personalize(tiny_data / "train.jsonl", settings=TrainingSettings(epochs=1, batch_size=16))
    assert not bundle.adapters.exists("default")
    bundle.personalize(tiny_data / "train.jsonl", settings=TrainingSettings(epochs=1, batch_size=4))
