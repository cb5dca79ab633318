"""Interrupted personalization resumes from its last epoch checkpoint with the same losses."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from storage_faults import PowerCut, cut_after_epoch

from edge_sdk.device import DeviceBundle, TrainingSettings
from edge_sdk.device.backends import training_build_installed
from edge_sdk.errors import AdapterError

SETTINGS = TrainingSettings(epochs=3, learning_rate=1e-2, batch_size=16, seed=5)
BACKENDS = ["portable", pytest.param("ort-training", marks=pytest.mark.skipif(
    not training_build_installed(), reason="needs onnxruntime-training"))]


@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_reproduces_the_uninterrupted_run(backend: str, tiny_bundle: Path, tiny_data: Path,
                                                 tmp_path: Path) -> None:
    twin = Path(shutil.copytree(tiny_bundle, tmp_path / "twin"))
    train, dev = tiny_data / "train.jsonl", tiny_data / "dev.jsonl"
    straight = DeviceBundle.open(twin).personalize(train, dev, adapter="u", settings=SETTINGS, backend=backend)

    bundle = DeviceBundle.open(tiny_bundle)
    with pytest.raises(PowerCut):
        bundle.personalize(train, dev, adapter="u", settings=SETTINGS, backend=backend, on_epoch=cut_after_epoch(2))
    assert not bundle.adapters.exists("u")  # nothing half-saved as the adapter
    resumed = bundle.personalize(train, dev, adapter="u", settings=SETTINGS, backend=backend, resume=True)

    np.testing.assert_allclose(resumed.losses, straight.losses, rtol=1e-5)
    assert [h["eval"]["loss"] for h in resumed.history] == pytest.approx(
        [h["eval"]["loss"] for h in straight.history], rel=1e-5)
    assert resumed.best_epoch == straight.best_epoch
    assert bundle.adapters.info("u").metadata["training"]["resumed_after_epoch"] == 2
    for name, value in DeviceBundle.open(twin).adapters.load("u").items():
        np.testing.assert_allclose(bundle.adapters.load("u")[name], value, rtol=1e-4, atol=1e-6)
    assert not (tiny_bundle / "adapters" / ".checkpoints" / "u").exists()  # cleaned up after success


def test_resume_refuses_other_data_or_settings_and_missing_runs(tiny_bundle: Path, tiny_data: Path) -> None:
    bundle = DeviceBundle.open(tiny_bundle)
    with pytest.raises(AdapterError, match="no interrupted personalization of adapter 'v'"):
        bundle.personalize(tiny_data / "train.jsonl", adapter="v", settings=SETTINGS, resume=True)
    with pytest.raises(PowerCut):
        bundle.personalize(tiny_data / "train.jsonl", adapter="v", settings=SETTINGS, on_epoch=cut_after_epoch(1))
    with pytest.raises(AdapterError, match="used different data_sha256"):
        bundle.personalize(tiny_data / "dev.jsonl", adapter="v", settings=SETTINGS, resume=True)
    faster = TrainingSettings(epochs=3, learning_rate=5e-2, batch_size=16, seed=5)
    with pytest.raises(AdapterError, match="used different settings"):
        bundle.personalize(tiny_data / "train.jsonl", adapter="v", settings=faster, resume=True)
    # Starting over without --resume is always allowed and replaces the stale checkpoint.
    bundle.personalize(tiny_data / "train.jsonl", adapter="v", settings=SETTINGS)
    assert bundle.adapters.names() == ["initial", "v"]
