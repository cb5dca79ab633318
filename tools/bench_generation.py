"""Benchmark: text generation speed of a causal-LM bundle (SmolLM2-135M-Instruct by default) on the
device runtime vs PyTorch + PEFT with its own KV cache: same model, LoRA adapter, prompt, greedy
decoding and thread count, each in its own process.

    python tools/bench_generation.py [--bundle DIR] [--new-tokens 64] [--threads 2] [--runs 5]

Prints tokens per second (prefill included, as a user waits for it) and writes
bench-results/generation.json.
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
STOCK_PYTHON = ROOT / ".venv-stock" / "bin" / "python"
PROMPT = "Write a long story about a robot who learns to paint, with many details about its first paintings."


def measure_sdk(bundle: str, new_tokens: int, threads: int, runs: int) -> dict:
    from edge_sdk.device import DeviceBundle
    from edge_sdk.device.generation import GenerationSettings

    device_bundle = DeviceBundle.open(bundle, threads=threads)
    settings = GenerationSettings(max_new_tokens=new_tokens)
    device_bundle.generate(PROMPT, settings)  # warm-up: sessions load, arenas grow
    rates, counts = [], []
    for _ in range(runs):
        result = device_bundle.generate(PROMPT, settings)
        rates.append(result.new_tokens / result.seconds)
        counts.append(result.new_tokens)
    return {"runtime": "edge-sdk", "tokens_per_second": statistics.median(rates), "generated": counts}


def measure_torch(bundle: str, new_tokens: int, threads: int, runs: int) -> dict:
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edge_sdk.bundle import open_bundle
    from edge_sdk.host.config import load_recipe

    torch.set_num_threads(threads)
    manifest = open_bundle(bundle, verify=False).manifest
    recipe = load_recipe(ROOT / "models" / "smollm2-chat.toml")
    tokenizer = AutoTokenizer.from_pretrained(recipe.model_dir, gguf_file=recipe.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(recipe.model_dir, gguf_file=recipe.gguf_file, dtype=torch.float32)
    peft = manifest.peft
    model = get_peft_model(model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=peft["rank"], lora_alpha=peft["alpha"],
                                             target_modules=peft["target_modules"], lora_dropout=0.0)).eval()
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)

    def generate() -> tuple[int, float]:
        started = time.perf_counter()
        with torch.no_grad():
            output = model.generate(**prompt, max_new_tokens=new_tokens, do_sample=False)
        return output.shape[1] - prompt["input_ids"].shape[1], time.perf_counter() - started

    generate()
    measured = [generate() for _ in range(runs)]
    return {"runtime": "pytorch+peft", "tokens_per_second": statistics.median(n / s for n, s in measured),
            "generated": [n for n, _ in measured]}


def _run_child(python: Path, name: str, args: argparse.Namespace) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1")
    command = [str(python), __file__, "--child", name, "--bundle", args.bundle, "--new-tokens", str(args.new_tokens),
               "--threads", str(args.threads), "--runs", str(args.runs)]
    output = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--bundle", default=str(ROOT / "build" / "bench" / "smollm2"))
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        measure = measure_torch if args.child == "pytorch" else measure_sdk
        print(json.dumps(measure(args.bundle, args.new_tokens, args.threads, args.runs)))
        return
    if not (Path(args.bundle) / "manifest.json").is_file():
        subprocess.run([str(ROOT / ".venv" / "bin" / "edge-sdk"), "build", str(ROOT / "models" / "smollm2-chat.toml"),
                        "--out", args.bundle], check=True)
    runs = {"pytorch+peft": _run_child(HOST_PYTHON, "pytorch", args),
            "edge-sdk (stock onnxruntime)": _run_child(STOCK_PYTHON if STOCK_PYTHON.exists() else HOST_PYTHON,
                                                       "sdk", args)}
    torch_rate = runs["pytorch+peft"]["tokens_per_second"]
    sdk_rate = runs["edge-sdk (stock onnxruntime)"]["tokens_per_second"]
    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "threads": args.threads},
        "setting": {"model": "SmolLM2-135M-Instruct + LoRA r=8 (q_proj, v_proj)", "decoding": "greedy, batch 1",
                    "new_tokens": args.new_tokens, "runs": args.runs, "prompt": PROMPT},
        "tokens_per_second": {name: run["tokens_per_second"] for name, run in runs.items()},
        "generation_speedup_vs_torch": sdk_rate / torch_rate,
    }
    out = ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    (out / "generation.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"generation, {args.new_tokens} new tokens, greedy, batch 1, {args.threads} threads (median of {args.runs}):")
    for name, rate in result["tokens_per_second"].items():
        print(f"  {name:32s} {rate:8.1f} tokens/s")
    print(f"edge-sdk / PyTorch: {result['generation_speedup_vs_torch']:.2f}x")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
