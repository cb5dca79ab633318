"""Turn `tools/bench.py`'s raw measurements into its headline ratios, a Markdown report and a PNG plot.

Pure functions of the measurements (no timing here), so they are tested on made-up numbers
(tests/host/test_bench_report.py). Ratios follow the issue's convention: for times PyTorch's figure over
ours (above 1: we are faster), for memory ours over PyTorch's (below 1: we use less).

A measurement that failed is a dict with an ``error`` key; it is reported as such and left out of ratios.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

TORCH = "pytorch"
TORCH_LABEL = "PyTorch eager + PEFT"
INFER_FP32, INFER_INT8 = "fp32 bundle", "int8 bundle"
MIB = 1024 * 1024
# Above this share of the CPUs taken by other processes during a measurement, its times are flagged.
CONTENDED = 0.05

# The targets (real MiniLM, LoRA r=8 on query/value, batch 8 x 128 tokens, 2 threads).
TARGETS = {
    "train_step_speedup_vs_torch": (">=", 1.5),
    "peak_memory_ratio_vs_torch": ("<=", 0.6),
    "infer_fp32_speedup_vs_torch": (">=", 1.5),
    "infer_int8_speedup_vs_torch": (">=", 2.5),
}


def ok(measurement: Any) -> bool:
    return isinstance(measurement, Mapping) and bool(measurement) and "error" not in measurement


# --- FLOPs ----------------------------------------------------------------------------------------------

def frozen_linear_parameters(config: Mapping[str, Any]) -> int:
    """Weights of the frozen linear layers every token goes through, from a transformers config dict.

    BERT: per layer query, key, value, attention output (4·d²) and the feed-forward pair (2·d·i).
    Llama: per layer q, o (d·d), k, v (d·kv_heads·head_dim) and gate, up, down (3·d·i), plus the LM head
    (d·vocab), which a causal LM applies to every position. Embeddings are lookups (no FLOPs); the pooler
    and classification head touch one token per row, LoRA's r=8 factors add r/d of their layer: both
    negligible and left out."""
    d, layers, inner = config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"]
    if config["model_type"] == "bert":
        return layers * (4 * d * d + 2 * d * inner)
    if config["model_type"] == "llama":
        heads = config["num_attention_heads"]
        head_dim = config.get("head_dim") or d // heads
        kv = config.get("num_key_value_heads") or heads
        return layers * (2 * d * heads * head_dim + 2 * d * kv * head_dim + 3 * d * inner) + d * config["vocab_size"]
    raise ValueError(f"no FLOP count for model type {config['model_type']!r}; known: bert, llama")


def last_layer_position_wise_parameters(config: Mapping[str, Any]) -> int:
    """BERT's last-layer weights that act on each position alone: attention output (d·d) and feed-forward
    (2·d·i). A sequence-classification head reads one position, so edge-sdk runs them on that one only."""
    if config["model_type"] != "bert":
        raise ValueError(f"no position-wise count for model type {config['model_type']!r}; known: bert")
    d, inner = config["hidden_size"], config["intermediate_size"]
    return d * d + 2 * d * inner


def training_step_flops(config: Mapping[str, Any], batch: int, seq: int,
                        one_position_last_layer: bool = False) -> dict[str, float]:
    """FLOPs of one LoRA training step: 4·T·P + 12·L·B·S²·d_attn.

    T = B·S tokens, P frozen linear weights: 2·T·P forward, 2·T·P backward for the activations' gradients
    (frozen weights need no weight gradient). Attention per layer: Q·Kᵀ and A·V, 2·B·S²·d_attn each forward,
    twice that backward. ``one_position_last_layer``: what a graph executes when the last layer's
    position-wise blocks run on the head's one position per row (B instead of T tokens)."""
    tokens = batch * seq
    parameters = frozen_linear_parameters(config)
    heads = config["num_attention_heads"]
    attention_width = heads * (config.get("head_dim") or config["hidden_size"] // heads)
    linear = 4 * tokens * parameters
    if one_position_last_layer:
        linear -= 4 * (tokens - batch) * last_layer_position_wise_parameters(config)
    attention = 12 * config["num_hidden_layers"] * batch * seq * seq * attention_width
    return {"total": float(linear + attention), "linear": float(linear), "attention": float(attention),
            "frozen_linear_parameters": parameters}


# --- headline ratios -----------------------------------------------------------------------------------

def _medians(runs: Mapping[str, Any]) -> dict[str, float]:
    return {name: run["median_s"] for name, run in runs.items() if ok(run)}


def _ratios_vs_torch(values: Mapping[str, float], torch_value: float | None, ours_over_torch: bool) -> dict:
    if torch_value is None:
        return {}
    return {name: (value / torch_value if ours_over_torch else torch_value / value)
            for name, value in values.items() if name != TORCH}


def _infer_latency(raw: Mapping[str, Any], variant: str, batch: int) -> float | None:
    run = raw.get("inference", {}).get(variant)
    return run[str(batch)]["median_s"] if ok(run) and str(batch) in run else None


def summarize(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The headline keys: speed-ups and the memory ratio against PyTorch, each backend's ratio, which SDK
    variant is fastest/leanest, the training step's FLOPs and fraction of the measured peak, and whether
    each target is met. A figure that could not be measured is None."""
    steps = _medians(raw.get("train_step", {}))
    torch_step = steps.get(TORCH)
    step_ratios = _ratios_vs_torch(steps, torch_step, ours_over_torch=False)
    fastest = max(step_ratios, key=step_ratios.get) if step_ratios else None

    memory = {name: run["peak_rss_mib"] for name, run in raw.get("personalization", {}).items() if ok(run)}
    memory_ratios = _ratios_vs_torch(memory, memory.get(TORCH), ours_over_torch=True)
    leanest = min(memory_ratios, key=memory_ratios.get) if memory_ratios else None

    summary: dict[str, Any] = {
        "train_step_speedup_vs_torch": step_ratios.get(fastest) if fastest else None,
        "train_step_fastest_backend": fastest,
        "train_step_speedup_by_backend": step_ratios,
        "peak_memory_ratio_vs_torch": memory_ratios.get(leanest) if leanest else None,
        "peak_memory_leanest_backend": leanest,
        "peak_memory_ratio_by_backend": memory_ratios,
    }
    for batch, prefix in ((8, "infer"), (1, "infer_batch1")):
        torch_latency = _infer_latency(raw, TORCH, batch)
        for variant, key in ((INFER_FP32, "fp32"), (INFER_INT8, "int8")):
            ours = _infer_latency(raw, variant, batch)
            summary[f"{prefix}_{key}_speedup_vs_torch"] = torch_latency / ours if torch_latency and ours else None
    summary["infer_throughput_sequences_per_s"] = {
        variant: 8 / latency for variant in raw.get("inference", {})
        if (latency := _infer_latency(raw, variant, 8))}
    summary |= _fraction_of_peak(raw, steps, fastest)
    summary["targets"] = {key: {"target": f"{op} {bound}", "value": summary[key],
                                "met": None if summary[key] is None
                                else (summary[key] >= bound if op == ">=" else summary[key] <= bound)}
                          for key, (op, bound) in TARGETS.items()}
    return summary


def _fraction_of_peak(raw: Mapping[str, Any], steps: Mapping[str, float], fastest: str | None) -> dict[str, Any]:
    """FLOPs of the step over its time, as a fraction of the peak of the arithmetic it does: float32 steps
    against the best float32 matrix-product rate measured; int8 steps (frozen linear layers in int8, the
    attention products in float32) against the time their two parts would take at the int8 and float32
    peaks."""
    config = raw.get("model_config")
    peaks: dict[str, float] = {}
    for run in raw.get("peak", {}).values():
        if ok(run):
            precision = run.get("precision", "fp32")
            peaks[precision] = max(peaks.get(precision, 0.0), run["gflops"] * 1e9)
    if not config or "fp32" not in peaks:
        return {"train_step_flops": None, "peak_gflops": None, "train_step_fraction_of_peak": None,
                "train_step_fraction_of_peak_by_backend": {}}
    setting = raw["setting"]
    flops = training_step_flops(config, setting["batch"], setting["seq"])
    # edge-sdk's graphs run the last layer's position-wise blocks on the head's one position (bench.py records
    # it from the bundle's manifest): count the arithmetic each step executes, not the model's nominal work.
    executed = training_step_flops(config, setting["batch"], setting["seq"], one_position_last_layer=True) \
        if raw.get("sdk_one_position_last_layer") else flops
    by_backend = {}
    for name, seconds in steps.items():
        work = flops if name == TORCH else executed
        if raw["train_step"][name].get("precision", "fp32") == "int8":
            if "int8" not in peaks:
                continue
            ideal = work["linear"] / peaks["int8"] + work["attention"] / peaks["fp32"]
        else:
            ideal = work["total"] / peaks["fp32"]
        by_backend[name] = ideal / seconds
    return {"train_step_flops": flops["total"], "sdk_train_step_flops": executed["total"],
            "peak_gflops": peaks["fp32"] / 1e9,
            "peak_int8_gops": peaks["int8"] / 1e9 if "int8" in peaks else None,
            "train_step_fraction_of_peak": by_backend.get(fastest) if fastest else None,
            "train_step_fraction_of_peak_by_backend": by_backend}


# --- Markdown ------------------------------------------------------------------------------------------

def _number(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def _cell(run: Any, value: float | None, digits: int = 1) -> str:
    if isinstance(run, Mapping) and "error" in run:
        return "failed"
    return _number(value, digits)


def _ms(run: Any) -> float | None:
    return run["median_s"] * 1000 if ok(run) and "median_s" in run else None


def _count(number: float) -> str:
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if number >= scale:
            return f"{number / scale:.1f}{suffix}"
    return f"{number:.0f}"


def machine_line(machine: Mapping[str, Any]) -> str:
    versions = ", ".join(f"{name} {version}" for name, version in machine.get("versions", {}).items())
    details = [f"{float(machine['cpu_mhz']):.0f} MHz"] if machine.get("cpu_mhz") else []
    details += machine.get("vector_extensions", [])
    cpu = machine.get("cpu_model", "?") + (f" ({', '.join(details)})" if details else "")
    return (f"{cpu}, {machine.get('cores', '?')} cores, {machine.get('threads', '?')} threads per measurement, "
            f"{machine.get('os', '?')}; {versions}")


def load_line(machine: Mapping[str, Any]) -> str:
    """Other work on the machine inflates times (not memory): the load average says how much there was."""
    start, end = machine.get("load_average_start"), machine.get("load_average_end")
    if start is None or end is None:
        return ""
    return (f"Load average (1 / 5 / 15 min) when the benchmark started: {' / '.join(f'{v:.2f}' for v in start)}; "
            f"when it ended: {' / '.join(f'{v:.2f}' for v in end)}.")


def _headline_rows(raw: Mapping[str, Any], summary: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    steps = raw.get("train_step", {})
    torch_step = steps.get(TORCH, {})
    torch_ms = _ms(torch_step)
    setting = raw.get("setting", {})
    shape = f"batch {setting.get('batch')} × {setting.get('seq')}"
    for name, run in steps.items():
        if name == TORCH:
            continue
        ours = _ms(run)
        rows.append([f"training step, {shape} (ms)", _cell(torch_step, torch_ms), f"{_cell(run, ours)} ({name})",
                     _ratio(summary["train_step_speedup_by_backend"].get(name))])
    runs = raw.get("personalization", {})
    torch_run = runs.get(TORCH, {})
    for name, run in runs.items():
        if name == TORCH:
            continue
        rows.append(["peak memory of a personalization run (MiB)",
                     _cell(torch_run, torch_run.get("peak_rss_mib"), 0),
                     f"{_cell(run, run.get('peak_rss_mib'), 0)} ({name})",
                     _ratio(summary["peak_memory_ratio_by_backend"].get(name))])
    for batch, prefix in ((1, "infer_batch1"), (8, "infer")):
        torch_latency = _infer_latency(raw, TORCH, batch)
        for variant, key in ((INFER_FP32, "fp32"), (INFER_INT8, "int8")):
            ours = _infer_latency(raw, variant, batch)
            rows.append([f"inference latency, batch {batch} × {setting.get('infer_seq')} (ms)",
                         _cell(raw.get("inference", {}).get(TORCH), torch_latency and torch_latency * 1000, 2),
                         f"{_cell(raw.get('inference', {}).get(variant), ours and ours * 1000, 2)} ({variant})",
                         _ratio(summary[f"{prefix}_{key}_speedup_vs_torch"])])
    throughput = summary["infer_throughput_sequences_per_s"]
    for variant in (INFER_FP32, INFER_INT8):
        ours, theirs = throughput.get(variant), throughput.get(TORCH)
        rows.append(["inference throughput, batch 8 (sequences/s)", _number(theirs), f"{_number(ours)} ({variant})",
                     _ratio(ours / theirs if ours and theirs else None)])
    return rows


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(row) + " |" for row in rows)]


def _personalization_lines(raw: Mapping[str, Any]) -> list[str]:
    """Each personalization run's work and outcome: the memory comparison is only fair if both sides trained
    the same steps and evaluated the same examples."""
    runs = raw.get("personalization", {})
    if not runs:
        return []
    rows = []
    for name, run in runs.items():
        if not ok(run):
            rows.append([name, "failed", "—", "—", "—"])
            continue
        accuracy = f"{run.get('accuracy_before', 0):.3f} → {run.get('accuracy_after', 0):.3f}"
        rows.append([name, str(run.get("steps", "—")), accuracy, _number(run.get("wall_s")),
                     _number(run.get("peak_rss_mib"), 0)])
    return ["## Personalization runs", "", raw.get("personalization_note", ""), "",
            *_table(["run", "steps", "held-out accuracy before → after", "wall time (s)", "peak memory (MiB)"], rows),
            ""]


def _footprint_rows(footprint: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for label, key, scale, unit in (("import time", "import_s", 1000, "ms"),
                                    ("installed size of the runtime's packages", "installed_bytes", 1 / MIB, "MiB"),
                                    ("model / bundle size", "model_bytes", 1 / MIB, "MiB"),
                                    ("adapter size", "adapter_bytes", 1 / 1024, "KiB")):
        entry = footprint.get(key, {})
        torch_value = entry.get(TORCH)
        for name, value in entry.items():
            if name == TORCH:
                continue
            rows.append([f"{label} ({unit})", _number(torch_value * scale if torch_value is not None else None),
                         f"{_number(value * scale if value is not None else None)} ({name})",
                         _ratio(value / torch_value if value is not None and torch_value else None)])
    return rows


def _scaling_rows(scaling: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    batch = scaling.get("sequence_batch", "?")
    for variant, points in scaling.get("sequence", {}).items():
        for seq, run in points.items():
            rows.append([variant, f"{batch} × {seq}", _cell(run, _ms(run)),
                         _cell(run, run.get("peak_rss_mib") if ok(run) else None, 0)])
    for model, entry in scaling.get("model_size", {}).items():
        for variant, run in entry.get("runs", {}).items():
            rows.append([f"{variant}, {model} ({_count(entry.get('parameters', 0))} parameters)",
                         f"{entry.get('batch')} × {entry.get('seq')}", _cell(run, _ms(run)),
                         _cell(run, run.get("peak_rss_mib") if ok(run) else None, 0)])
    return rows


def markdown(raw: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    """The whole report: headline table, targets, FLOPs, footprint, build times, scaling."""
    setting = raw.get("setting", {})
    lines = [f"# edge-sdk benchmark: {setting.get('model', '?')}", "",
             f"Machine: {machine_line(raw.get('machine', {}))}.", "", load_line(raw.get("machine", {})), "",
             f"Setting: {setting.get('description', '')}", "",
             "Ratios: times are PyTorch's over ours (above 1: we are faster); memory and sizes are ours over "
             "PyTorch's (below 1: we use less).", ""]
    lines += _table(["measurement", TORCH_LABEL, "edge-sdk (variant)", "ratio"], _headline_rows(raw, summary))
    lines += ["", "## Targets", ""]
    lines += _table(["figure", "value", "target", "met"],
                    [[key, _ratio(entry["value"]), entry["target"], {True: "yes", False: "no", None: "—"}[entry["met"]]]
                     for key, entry in summary["targets"].items()])
    lines += ["", f"Fastest training backend: {summary['train_step_fastest_backend']}; leanest personalization run: "
                  f"{summary['peak_memory_leanest_backend']}.", ""]
    if summary.get("train_step_flops"):
        fractions = ", ".join(f"{name} {value:.1%}" for name, value in
                              summary["train_step_fraction_of_peak_by_backend"].items())
        int8 = summary.get("peak_int8_gops")
        lines += ["## Arithmetic rate", "",
                  f"A training step is {summary['train_step_flops'] / 1e9:.2f} GFLOP ({raw.get('flops_note', '')}). "
                  + (f"edge-sdk's steps execute {summary['sdk_train_step_flops'] / 1e9:.2f} GFLOP of it: the last "
                     "layer's attention output and feed-forward blocks run on the one position the classification "
                     "head reads, and each step is held against that. "
                     if summary.get("sdk_train_step_flops") != summary["train_step_flops"] else "")
                  +
                  f"Measured peak: {summary['peak_gflops']:.1f} GFLOP/s float32"
                  + (f", {int8:.1f} GOP/s int8" if int8 else "") + f" ({raw.get('peak_note', '')}). "
                  f"Fraction of the peak each training step reaches: {fractions}. An int8 step is held against "
                  "the time its int8 part (the frozen linear layers) and its float32 part (attention) would take "
                  "at their peaks.", ""]
    lines += _personalization_lines(raw)
    lines += ["## Device footprint", ""]
    lines += _table(["measurement", TORCH_LABEL, "edge-sdk (variant)", "edge-sdk ÷ PyTorch"],
                    _footprint_rows(raw.get("footprint", {})))
    lines += ["", raw.get("footprint", {}).get("note", ""), "", "## Build time", ""]
    lines += _table(["bundle", "`edge-sdk build` wall time (s)", "build's own time (s)", "peak memory (MiB)"],
                    [[name, "reused (built earlier)" if run.get("reused") else _cell(run, run.get("wall_s")),
                      _cell(run, run.get("build_s")), _cell(run, run.get("peak_rss_mib"), 0)]
                     for name, run in raw.get("builds", {}).items()])
    lines += ["", "## Scaling (training step)", "", raw.get("scaling", {}).get("note", ""), ""]
    lines += _table(["variant", "batch × tokens", "step (ms)", "peak memory (MiB)"],
                    _scaling_rows(raw.get("scaling", {})))
    lines += _companion_lines(raw)
    contended = list(_contended(raw))
    if contended:
        lines += ["", "## Measurements other work slowed down", "",
                  f"Other processes (or the hypervisor) took more than {CONTENDED:.0%} of the CPUs while these ran; "
                  "their times are inflated, their peak memory is not:", "", *contended]
    errors = [f"- {section} / {name}: {run['error']}" for section in ("builds", "train_step", "personalization",
                                                                       "inference")
              for name, run in raw.get(section, {}).items() if isinstance(run, Mapping) and "error" in run]
    if errors:
        lines += ["", "## Failed measurements", "", *errors]
    return "\n".join(lines) + "\n"


def _contended(raw: Mapping[str, Any]):
    """``- section / name: share`` for every measurement during which other work took CPU time."""
    def walk(prefix: str, node: Any):
        if isinstance(node, Mapping):
            if node.get("others_cpu_share", 0.0) > CONTENDED:
                yield f"- {prefix}: {node['others_cpu_share']:.0%}"
            for key, child in node.items():
                if isinstance(child, Mapping):
                    yield from walk(f"{prefix} / {key}" if prefix else str(key), child)

    for section in ("builds", "train_step", "personalization", "inference", "peak", "scaling"):
        yield from walk(section, raw.get(section, {}))


def _companion_lines(raw: Mapping[str, Any]) -> list[str]:
    """What tools/bench_generation.py and tools/bench_adapters.py measured, when `make bench` ran them."""
    lines = []
    generation = raw.get("generation")
    if generation:
        setting = generation.get("setting", {})
        rates = generation.get("tokens_per_second", {})
        theirs = rates.get("pytorch+peft")
        lines += ["", "## Text generation (tools/bench_generation.py)", "",
                  f"{setting.get('model', '?')}, {setting.get('decoding', '?')}, {setting.get('new_tokens', '?')} new "
                  "tokens, prefill included.", ""]
        lines += _table(["runtime", "tokens/s", "vs PyTorch"],
                        [[name, _number(rate), _ratio(rate / theirs if theirs else None)]
                         for name, rate in rates.items()])
    switching = raw.get("adapter_switching")
    if switching:
        lines += ["", "## Adapter switching (tools/bench_adapters.py)", ""]
        rows = [[label, _number(switching.get(key), 2)] for label, key in (
            ("same adapter every request (ms)", "infer_batch1_same_adapter_ms"),
            ("another adapter every request (ms)", "infer_batch1_switching_every_request_ms"),
            ("first load of an adapter from disk (ms)", "adapter_first_load_from_disk_ms"))]
        rows.append(["resident memory, one adapter / all (MiB)",
                     f"{_number(switching.get('rss_mib_one_adapter'), 0)} / "
                     f"{_number(switching.get('rss_mib_all_adapters'), 0)}"])
        lines += _table(["batch-1 inference", "value"], rows)
    return lines


# --- plot ----------------------------------------------------------------------------------------------

def plot_scaling(raw: Mapping[str, Any], path: Path) -> Path:
    """Four panels: step time and peak memory against sequence length (top) and model size (bottom)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on build servers
    import matplotlib.pyplot as plt

    scaling = raw.get("scaling", {})
    figure, axes = plt.subplots(2, 2, figsize=(11, 8.5))
    for variant, points in scaling.get("sequence", {}).items():
        good = [(int(seq), run) for seq, run in points.items() if ok(run)]
        if not good:
            continue
        axes[0][0].plot([seq for seq, _ in good], [run["median_s"] * 1000 for _, run in good], marker="o",
                        label=variant)
        axes[0][1].plot([seq for seq, _ in good], [run["peak_rss_mib"] for _, run in good], marker="o", label=variant)
    batch = scaling.get("sequence_batch", "?")
    lengths = sorted({int(seq) for points in scaling.get("sequence", {}).values() for seq in points})
    for axis, what in ((axes[0][0], "training step (ms)"), (axes[0][1], "peak memory of the process (MiB)")):
        axis.set_xscale("log", base=2)
        axis.set_xticks(lengths, labels=[str(length) for length in lengths])
        axis.set_xlabel(f"sequence length (batch {batch})")
        axis.set_ylabel(what)
        axis.grid(True, alpha=0.3)
        axis.legend()
    by_variant: dict[str, list[tuple[float, float, float, str]]] = {}
    for model, entry in scaling.get("model_size", {}).items():
        for variant, run in entry.get("runs", {}).items():
            if ok(run):
                by_variant.setdefault(variant, []).append(
                    (entry["parameters"], run["median_s"] * 1000, run["peak_rss_mib"], model))
    shape = next((f"batch {e.get('batch')} × {e.get('seq')}" for e in scaling.get("model_size", {}).values()), "")
    for variant, points in by_variant.items():
        points.sort()
        axes[1][0].plot([p[0] for p in points], [p[1] for p in points], marker="s", label=variant)
        axes[1][1].plot([p[0] for p in points], [p[2] for p in points], marker="s", label=variant)
        for axis, index in ((axes[1][0], 1), (axes[1][1], 2)):
            for point in points:
                axis.annotate(point[3], (point[0], point[index]), textcoords="offset points", xytext=(4, 4),
                              fontsize=8)
    for axis, what in ((axes[1][0], "training step (ms)"), (axes[1][1], "peak memory of the process (MiB)")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel(f"model parameters ({shape})")
        axis.set_ylabel(what)
        axis.grid(True, alpha=0.3)
        if by_variant:
            axis.legend()
    figure.suptitle(f"edge-sdk vs {TORCH_LABEL}: LoRA training step, {raw.get('machine', {}).get('threads')} threads")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
