"""The portable backend: standard-ONNX training step on any onnxruntime, equal to ort-training step by step."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_sdk.device import DeviceBundle, TrainingSettings
from edge_sdk.device.backends import create_backend, training_build_installed
from edge_sdk.tasks.base import TaskData, cross_entropy

needs_training_build = pytest.mark.skipif(not training_build_installed(),
                                          reason="the ort-training backend needs onnxruntime-training")


def _reference(fixtures_dir: Path) -> tuple[TrainingSettings, list[float]]:
    recorded = json.loads((fixtures_dir / "reference_losses.json").read_text())
    return TrainingSettings(**recorded["settings"]), recorded["losses"]


def test_portable_losses_match_recorded_ort_training_losses(tiny_bundle: Path, tiny_data: Path,
                                                           fixtures_dir: Path) -> None:
    """Same bundle, seed and data: the first 20 step losses agree within 1e-4 relative (any environment)."""
    settings, expected = _reference(fixtures_dir)
    result = DeviceBundle.open(tiny_bundle).personalize(tiny_data / "train.jsonl", adapter="p", settings=settings,
                                                        backend="portable")
    assert len(expected) >= 20 and result.backend == "portable"
    np.testing.assert_allclose(result.losses[:20], expected[:20], rtol=1e-4)
    assert np.mean(result.losses[-4:]) < np.mean(result.losses[:4])


@needs_training_build
def test_portable_and_ort_training_agree_here_too(tiny_bundle: Path, tiny_data: Path, fixtures_dir: Path) -> None:
    settings, _ = _reference(fixtures_dir)
    bundle = DeviceBundle.open(tiny_bundle)
    portable = bundle.personalize(tiny_data / "train.jsonl", adapter="p", settings=settings, backend="portable")
    ort = bundle.personalize(tiny_data / "train.jsonl", adapter="o", settings=settings, backend="ort-training")
    np.testing.assert_allclose(portable.losses, ort.losses, rtol=1e-4)
    p, o = bundle.adapters.load("p"), bundle.adapters.load("o")
    assert p.keys() == o.keys()
    for name in p:
        np.testing.assert_allclose(p[name], o[name], rtol=1e-3, atol=1e-5)


def test_auto_picks_what_is_installed(tiny_bundle: Path, tiny_data: Path) -> None:
    bundle = DeviceBundle.open(tiny_bundle)
    result = bundle.personalize(tiny_data / "train.jsonl", adapter="a", settings=TrainingSettings(epochs=1))
    assert result.backend == ("ort-training" if training_build_installed() else "portable")
    assert bundle.adapters.info("a").metadata["training"]["backend"] == result.backend


@pytest.mark.parametrize("backend", ["portable", pytest.param("ort-training", marks=needs_training_build)])
def test_step_loss_equals_the_inference_graph_loss(backend: str, tiny_bundle: Path, tiny_data: Path) -> None:
    bundle = DeviceBundle.open(tiny_bundle)
    rows = [json.loads(line) for line in (tiny_data / "train.jsonl").read_text().splitlines()[:8]]
    encoded = bundle.tokenizer.encode_full([row["text"] for row in rows])
    labels = np.asarray([bundle.labels.index(row["label"]) for row in rows], dtype=np.int64)
    trainer = create_backend(backend, bundle.bundle)
    try:
        weights = bundle.adapters.load("initial")
        trainer.load_weights(weights)
        expected = cross_entropy(np.stack(bundle.outputs(TaskData(encoded, None), weights)), labels)
        feeds = bundle.tokenizer.pad(encoded) | {"labels": labels}
        assert trainer.train_step(feeds, 1e-3) == pytest.approx(expected, rel=1e-5)
        # The step updated the weights it keeps between steps.
        moved = trainer.weights()
        assert any(not np.allclose(moved[name], weights[name]) for name in weights)
        trainer.load_weights(weights)  # a fresh start gives the same first loss again
        assert trainer.train_step(feeds, 1e-3) == pytest.approx(expected, rel=1e-5)
    finally:
        trainer.close()


def test_portable_adapter_has_the_same_format(tiny_bundle: Path, tiny_data: Path) -> None:
    bundle = DeviceBundle.open(tiny_bundle)
    bundle.personalize(tiny_data / "train.jsonl", adapter="p", settings=TrainingSettings(epochs=1),
                       backend="portable")
    trained, initial = bundle.adapters.load("p"), bundle.adapters.load("initial")
    assert {k: v.shape for k, v in trained.items()} == {k: v.shape for k, v in initial.items()}
    assert bundle.adapters.info("p").metadata["training"]["backend"] == "portable"
