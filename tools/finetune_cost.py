"""What `edge-sdk finetune` costs per strategy: peak memory per rank, step time, tokens/s, parameters.

    python tools/finetune_cost.py [--model minilm|smollm2|both] [--steps 12] [--out build/finetune-cost.json]
                                  [--rows single,ddp,...]

Rows: ``single`` (one process), ``ddp``, ``fsdp``, ``zero2``, ``zero3`` (two processes each, under torchrun),
``zero2 + --offload-optimizer``, and the quantized frozen base ``--base int8`` / ``--base 4bit`` (one process).
MiniLM-L6 is seq-cls on BBC topics at batch 16 x 128 tokens, SmolLM2-135M causal-lm on BBC passages at batch
4 x 128 tokens; every run is one epoch over exactly ``steps`` global batches, with no evaluation. BBC articles
are long and the passages here are made of 8 sentences, so nearly every row fills its 128 tokens.

The numbers are the run's own report (run.json ``report``): peak memory is each rank's peak resident set
after a reset when training starts (the model load's transient peak is excluded, the loaded model is not);
step time leaves out the first step. Under torchrun each rank gets OMP_NUM_THREADS=1 so that two processes
share the cores instead of fighting over them; the one-process rows use torch's default threads. A row that
fails (an engine not installed, an option not merged yet) is kept with its error.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))  # tools/ is a folder of scripts, not a package

from corpus_files import write_jsonl  # noqa: E402
from finetune_domain import cpu_flags  # noqa: E402
from prepare_bbc import find_bbc_data_dir, load_corpus  # noqa: E402
from prepare_notes import passages  # noqa: E402

# (name, strategy, processes, extra options)
ROWS = [
    ("single", "single", 1, []),
    ("ddp", "ddp", 2, []),
    ("fsdp", "fsdp", 2, []),
    ("zero2", "zero2", 2, []),
    ("zero3", "zero3", 2, []),
    ("zero2 + offload-optimizer", "zero2", 2, ["--offload-optimizer"]),
    ("single, --base int8", "single", 1, ["--base", "int8"]),
    ("single, --base 4bit", "single", 1, ["--base", "4bit"]),
]
MODELS = {
    "minilm": {"source": "models/minilm-topics.toml", "batch": 16, "title": "MiniLM-L6 (seq-cls, BBC topics)"},
    "smollm2": {"source": "models/smollm2-chat.toml", "batch": 4, "title": "SmolLM2-135M (causal-lm)"},
}


def write_data(model: str, rows: int, path: Path) -> None:
    by_topic, _ = load_corpus(find_bbc_data_dir())
    topics = sorted(by_topic)
    # Round-robin over topics so a classification batch holds every label.
    articles = [by_topic[topics[i % len(topics)]][i // len(topics)] for i in range(rows)]
    if model == "minilm":
        write_jsonl(path, ({"text": text, "label": topics[i % len(topics)]} for i, text in enumerate(articles)))
    else:
        chunks = [chunk for article in by_topic["business"] for chunk in passages(article, 8)]
        write_jsonl(path, ({"text": text} for text in chunks[:rows]))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_row(model: str, data: Path, out: Path, strategy: str, processes: int, extra: list[str]) -> dict:
    spec = MODELS[model]
    args = ["finetune", spec["source"], "--data", str(data), "--out", str(out), "--epochs", "1", "--batch-size",
            str(spec["batch"]), "--max-length", "128", "--strategy", strategy, "--checkpoint-every", "0",
            "--overwrite", "--json", *extra]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    if processes > 1:
        env["OMP_NUM_THREADS"] = "1"
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                   "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "edge_sdk", *args]
    else:
        command = [sys.executable, "-m", "edge_sdk", *args]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        # torchrun ends with a banner of '=' lines: the rank's own exception is the last line naming an error.
        lines = [line for line in done.stderr.splitlines() if "Error" in line or "error:" in line]
        return {"error": (lines[-1] if lines else f"exit {done.returncode}")[:500], "wall_seconds": seconds}
    result = json.loads(done.stdout[done.stdout.index("{"):])
    return {**result["report"], "steps": len(result["losses"]), "wall_seconds": seconds}


def markdown(title: str, rows: list[dict]) -> str:
    lines = [f"**{title}**", "",
             "| strategy | processes | peak MiB per rank | step s | tokens/s | trainable / total params | "
             "parameters held per rank | wall s |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['name']} | {row['processes']} | failed: {row['error']} | | | | | "
                         f"{row['wall_seconds']:.0f} |")
            continue
        memory = " / ".join(f"{value:.0f}" for value in row["peak_memory_mib_per_rank"])
        # What the engine left each rank of the parameters (fsdp and zero3 shard the frozen base too).
        held = " / ".join(f"{value / 2**20:.1f}" for value in row["parameter_bytes_per_rank"]) + " MiB"
        lines.append(f"| {row['name']} | {row['processes']} | {memory} | {row['step_seconds']:.2f} | "
                     f"{row['tokens_per_second']:.0f} | {row['trainable_parameters']:,} / "
                     f"{row['total_parameters']:,} ({100 * row['trainable_fraction']:.2f}%) | "
                     f"{held} | {row['wall_seconds']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", choices=[*MODELS, "both"], default="both")
    parser.add_argument("--steps", type=int, default=12, help="global batches per run (the first is not timed)")
    parser.add_argument("--rows", help="comma-separated row names to run (default: all)")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "finetune-cost.json")
    args = parser.parse_args(argv)
    wanted = set(args.rows.split(",")) if args.rows else None
    report: dict = {"cpu": cpu_flags(), "cores": os.cpu_count(), "steps": args.steps,
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "tables": {}}
    with tempfile.TemporaryDirectory(prefix="finetune-cost-") as tmp:
        for model in MODELS if args.model == "both" else [args.model]:
            data = Path(tmp) / f"{model}.jsonl"
            write_data(model, args.steps * MODELS[model]["batch"], data)
            rows = []
            for name, strategy, processes, extra in ROWS:
                if wanted and name not in wanted:
                    continue
                row = run_row(model, data, Path(tmp) / f"{model}-{strategy}", strategy, processes, extra)
                rows.append({"name": name, "processes": processes, **row})
                print(f"{model} {name}: {json.dumps(row)[:300]}", file=sys.stderr, flush=True)
            report["tables"][model] = rows
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2) + "\n")  # after every table: partial runs keep it
    print(f"CPU: {report['cpu']}; {report['cores']} cores; {args.steps} steps per run (timings are noisy: "
          "other work shares the machine)\n")
    print("\n\n".join(markdown(MODELS[model]["title"], rows) for model, rows in report["tables"].items()))
    print(f"\nreport: {args.out}")


if __name__ == "__main__":
    main()
