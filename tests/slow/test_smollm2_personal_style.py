"""Real-model check: SmolLM2-135M-Instruct personalized on a writer's own passages (BBC technology
articles as "the user's notes"): held-out perplexity on that writer's other articles drops, and the
personalized model still generates fluent text. Personalization runs in the torch-free stock
onnxruntime environment (portable step), as on a device; its whole-process peak memory is measured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STOCK = ROOT / ".venv-stock" / "bin"
RESULTS = ROOT / "build" / "slow-results"

# A child runner that reports its child's peak resident memory (ru_maxrss of the finished child, in KiB).
_PEAK = ("import json, resource, subprocess, sys; done = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
         "print(json.dumps({'rc': done.returncode, 'stdout': done.stdout, 'stderr': done.stderr[-2000:], "
         "'peak_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))")


def _fluent(text: str) -> bool:
    """Enough words, mostly real words, not a loop of the same few tokens."""
    words = text.split()
    alphabetic = [w for w in words if any(ch.isalpha() for ch in w)]
    return len(words) >= 8 and len(alphabetic) >= 0.7 * len(words) and len(set(words)) >= 0.4 * len(words)


@pytest.mark.slow
def test_smollm2_learns_a_writers_style_and_still_writes(tmp_path: Path) -> None:
    pytest.importorskip("gguf", reason="the gguf reader is not installed; run `make setup`")
    if not (STOCK / "edge-sdk").exists():
        pytest.skip("the stock-onnxruntime environment .venv-stock is missing; run `make setup`")
    sys.path.insert(0, str(ROOT / "tools"))
    from prepare_notes import prepare_notes

    from edge_sdk.device import DeviceBundle
    from edge_sdk.device.generation import GenerationSettings
    from edge_sdk.host.build import build_bundle
    from edge_sdk.host.config import load_recipe

    data = tmp_path / "notes"
    prepare_notes(data, "tech", {"train": 160, "dev": 24, "test": 60}, sentences=3, seed=0)
    path = build_bundle(load_recipe(ROOT / "models" / "smollm2-chat.toml"), tmp_path / "smollm2")

    run = subprocess.run(
        [str(STOCK / "python"), "-c", _PEAK, str(STOCK / "edge-sdk"), "personalize", str(path), "--data",
         str(data / "train.jsonl"), "--eval-data", str(data / "dev.jsonl"), "--epochs", "2", "--lr", "1e-3",
         "--batch-size", "8", "--threads", "2", "--adapter", "writer", "--json"],
        check=True, capture_output=True, text=True)
    child = json.loads(run.stdout)
    assert child["rc"] == 0, child["stderr"]
    trained = json.loads(child["stdout"])

    bundle = DeviceBundle.open(path)
    before = bundle.evaluate(data / "test.jsonl", adapter="initial")
    after = bundle.evaluate(data / "test.jsonl", adapter="writer")
    prompt = "Write a short note about mobile phones and the internet."
    settings = GenerationSettings(max_new_tokens=48)
    pieces: list[str] = []
    generated = bundle.generate(prompt, settings, adapter="writer", on_text=pieces.append)
    untrained = bundle.generate(prompt, settings, adapter="initial")

    numbers = {
        "perplexity_before": before["perplexity"], "perplexity_after": after["perplexity"],
        "test_tokens": after["tokens"], "steps": trained["steps"], "train_losses": trained["losses"][::5],
        "personalize_peak_rss_gib": child["peak_kib"] / 2**20, "generated_after": generated.text,
        "generated_before": untrained.text, "tokens_per_second": generated.to_dict()["tokens_per_second"],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "smollm2-personal-style.json").write_text(json.dumps(numbers, indent=2) + "\n")
    print(json.dumps(numbers, indent=2))

    assert after["perplexity"] < 0.85 * before["perplexity"]
    assert "".join(pieces) == generated.text  # streamed pieces add up to the result
    assert _fluent(generated.text), generated.text
