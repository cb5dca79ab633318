"""What the int8 weight range costs and buys: the shipped 7-bit weights against full 8-bit ones, on MiniLM and
BBC News, on this machine.

    python tools/int8_weight_range.py [--threads 2] [--repeats 30] [--work build/int8-range] [--json FILE]

int8 bundles store frozen weights in [-64, 64] so that no pair of uint8 x int8 products can overflow the
16-bit lanes of ONNX Runtime's kernel on x86 CPUs without VNNI (see edge_sdk/bundle/int8_arithmetic.py).
This tool measures what that costs against full-range weights ([-127, 127]) in accuracy and speed, one run,
any CPU. From the fp32 bundle's inference graph it makes four graphs with the adapter trained in fp32:

- `fp32`: the float graph (the reference);
- `int8 7-bit (shipped)`: what `--base int8-compute` builds;
- `int8 8-bit u8u8`: full-range weights stored as uint8 with zero point 128, which ONNX Runtime multiplies
  with a widening kernel: exact 8-bit arithmetic on every CPU (the accuracy 8-bit weights would have);
- `int8 8-bit s8`: full-range int8 weights on the u8 x s8 kernel: exact where the CPU has VNNI,
  16-bit-saturated where it has not (what edge-sdk built before).

For each: held-out accuracy, the largest and mean logit change against fp32, and inference latency at
batch 8 x 128 tokens (alternating rounds, median). Prints a Markdown table and the CPU's vector extensions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

VARIANTS = ("fp32", "int8 7-bit (shipped)", "int8 8-bit u8u8", "int8 8-bit s8")


def int8_graph(fp32_graph, frozen: set[str], weight_max: int, unsigned: bool):
    """The fp32 graph with its frozen products rewritten as `--base int8-compute` does, at ``weight_max``; with
    ``unsigned`` the int8 weights are stored as uint8 (+128, zero point 128) for the widening kernel."""
    import onnx
    from onnx import numpy_helper

    from edge_sdk.graph.prune import prune_unused
    from edge_sdk.host import int8_matmul

    model = onnx.ModelProto()
    model.CopyFrom(fp32_graph)
    # The build refuses weights beyond ±64 on purpose; this measurement needs them, so it lifts the limit here.
    saved = int8_matmul.WEIGHT_MAX, int8_matmul.INT16_MAX
    int8_matmul.WEIGHT_MAX, int8_matmul.INT16_MAX = weight_max, 1 << 31
    try:
        int8_matmul.quantize_frozen_matmuls(model, frozen)
    finally:
        int8_matmul.WEIGHT_MAX, int8_matmul.INT16_MAX = saved
    prune_unused(model.graph)
    if unsigned:
        for init in model.graph.initializer:
            if init.name.endswith(".int8mm"):
                values = numpy_helper.to_array(init).astype(np.int16) + 128
                init.CopyFrom(numpy_helper.from_array(values.astype(np.uint8), init.name))
        for node in model.graph.node:
            if node.op_type == "MatMulInteger":
                node.input[3] = "weight_range.zero_point_u8"
        model.graph.initializer.append(numpy_helper.from_array(np.array(128, np.uint8), "weight_range.zero_point_u8"))
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30, help="timed runs per variant and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "int8-range")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    import onnx
    import onnxruntime
    from bench import cpuinfo_fields, vector_extensions
    from prepare_bbc import prepare_bbc

    from edge_sdk.device import DeviceBundle, TrainingSettings
    from edge_sdk.host.build import build_bundle
    from edge_sdk.host.config import load_recipe

    data = args.work / "data"
    prepare_bbc(data, train_per_label=80, dev_per_label=20, test_per_label=60, seed=0)
    print("building the MiniLM topic bundle (fp32) and training its adapter on BBC News", file=sys.stderr)
    bundle_path = build_bundle(load_recipe(ROOT / "models" / "minilm-topics.toml"), args.work / "minilm",
                               overwrite=True)
    bundle = DeviceBundle.open(bundle_path, threads=args.threads)
    bundle.personalize(data / "train.jsonl", adapter="news",
                       settings=TrainingSettings(epochs=3, learning_rate=2e-3, batch_size=16, seed=0))
    weights = bundle.adapters.load("news")

    fp32_graph = onnx.load(str(bundle_path / bundle.manifest.inference["model"]))
    frozen = {init.name for init in fp32_graph.graph.initializer}
    graphs = {"fp32": fp32_graph,
              "int8 7-bit (shipped)": int8_graph(fp32_graph, frozen, 64, unsigned=False),
              "int8 8-bit u8u8": int8_graph(fp32_graph, frozen, 127, unsigned=True),
              "int8 8-bit s8": int8_graph(fp32_graph, frozen, 127, unsigned=False)}
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.log_severity_level = 3
    sessions = {name: onnxruntime.InferenceSession(graph.SerializeToString(), options,
                                                   providers=["CPUExecutionProvider"])
                for name, graph in graphs.items()}

    test = bundle.task.load(data / "test.jsonl")
    gold = np.asarray(test.targets)
    order = np.argsort([len(ids) for ids, _ in test.encoded], kind="stable")
    logits = {name: np.zeros((len(test), len(bundle.labels)), np.float32) for name in sessions}
    for start in range(0, len(order), 16):
        rows = order[start:start + 16]
        feeds = bundle.tokenizer.pad([test.encoded[i] for i in rows]) | weights
        for name, session in sessions.items():
            graph_inputs = {value.name for value in session.get_inputs()}
            logits[name][rows] = session.run(["logits"], {k: v for k, v in feeds.items() if k in graph_inputs})[0]

    # Latency at batch 8 x 128: the eight longest held-out documents, cut to 128 tokens.
    longest = [test.encoded[i] for i in order[-8:]]
    batch = bundle.tokenizer.pad(longest) | weights
    timings: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(args.rounds):
        for name, session in sessions.items():
            feeds = {k: v for k, v in batch.items() if k in {value.name for value in session.get_inputs()}}
            session.run(["logits"], feeds)  # warm-up
            runs = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                session.run(["logits"], feeds)
                runs.append(time.perf_counter() - started)
            timings[name].append(statistics.median(runs))

    results = {"cpu_extensions": vector_extensions(cpuinfo_fields()), "onnxruntime": onnxruntime.__version__,
               "threads": args.threads, "batch_shape": list(batch["input_ids"].shape), "test_documents": len(test),
               "variants": {}}
    for name in VARIANTS:
        change = np.abs(logits[name] - logits["fp32"])
        results["variants"][name] = {
            "accuracy": float(np.mean(logits[name].argmax(-1) == gold)),
            "max_abs_logit_change": float(change.max()), "mean_abs_logit_change": float(change.mean()),
            "latency_ms": 1e3 * statistics.median(timings[name]),
        }
    print(f"CPU extensions: {', '.join(results['cpu_extensions']) or 'none listed'}; onnxruntime "
          f"{results['onnxruntime']}, {args.threads} threads; {len(test)} held-out BBC documents; latency at "
          f"batch {results['batch_shape'][0]} x {results['batch_shape'][1]}")
    print("| variant | accuracy | max / mean logit change vs fp32 | latency (ms) |")
    print("|---|---|---|---|")
    for name, row in results["variants"].items():
        print(f"| {name} | {row['accuracy']:.3f} | {row['max_abs_logit_change']:.3f} / "
              f"{row['mean_abs_logit_change']:.4f} | {row['latency_ms']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
