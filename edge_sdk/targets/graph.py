"""Make a profile's target graph from a bundle and an adapter: merge the adapter into the float weights, fix the
shapes and opset (``static``), quantize to static int8 QDQ calibrated on task data (``quantize``), and check the
result against the float graph on ONNX Runtime's CPU provider before anything is written.

Used by the build (the initial adapter, ``targets/<profile>/``) and by ``edge-sdk adapters deploy`` (a
personalized adapter, ``adapters/<name>.<profile>/``). numpy, onnx and onnxruntime only: no torch.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_sdk.bundle.store import Bundle
from edge_sdk.errors import ConfigError, EdgeSdkError, ExportError
from edge_sdk.tasks.base import TaskData

if TYPE_CHECKING:
    import onnx

    from edge_sdk.profiles import Profile

_LOG = logging.getLogger(__name__)
TARGETS_DIR = "targets"
MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
CALIBRATION_FILE = "calibration.safetensors"
COVERAGE_FILE = "coverage.json"
PROVIDER_CONFIGS = {"VitisAIExecutionProvider": "vaip_config.json"}
# Below this share of matching clear predictions (see _decisive_agreement), or this correlation of its outputs with
# the float graph's, the quantized graph is broken (a wrong scale, a clipped range), not merely rounded: a lossy
# but working quantization of MiniLM kept 80-99% of clear predictions at a correlation above 0.95, a tiny random
# test model 71% at 0.9; a quantized attention mask gives one output for every input (correlation about 0).
MIN_AGREEMENT = 0.5
MIN_CORRELATION = 0.5
_VALIDATION_ROWS = 200


def target_dir(profile_name: str) -> str:
    return f"{TARGETS_DIR}/{profile_name}"


@dataclass
class Calibration:
    """Calibration inputs ([examples, sequence] per graph input) and labelled rows to validate on (if any)."""

    inputs: dict[str, np.ndarray]
    validation: TaskData | None = None
    source: str = ""

    @property
    def examples(self) -> int:
        return len(next(iter(self.inputs.values())))

    def feeds(self) -> list[dict[str, np.ndarray]]:
        return [{name: value[row:row + 1] for name, value in self.inputs.items()} for row in range(self.examples)]

    def save(self, path: Path) -> None:
        from safetensors.numpy import save

        data = save({name: np.ascontiguousarray(value) for name, value in self.inputs.items()},
                    metadata={"format": "edge-sdk-calibration", "source": self.source})
        path.write_bytes(_sorted_header(data))

    @classmethod
    def load(cls, path: Path) -> Calibration:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="numpy") as handle:
                return cls({key: handle.get_tensor(key) for key in handle.keys()},
                           source=(handle.metadata() or {}).get("source", path.name))
        except Exception as exc:  # safetensors' own errors
            raise ConfigError(f"calibration file {str(path)!r} cannot be read: {exc}") from exc


def _sorted_header(data: bytes) -> bytes:
    """safetensors writes its metadata from a hash map, in an order that changes from run to run; the same file
    with its JSON header's keys sorted (same length, same offsets) keeps builds byte-identical."""
    length = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8:8 + length]), sort_keys=True, separators=(",", ":")).encode("utf-8")
    return data[:8] + header.ljust(length) + data[8 + length:]


def device_tools(bundle: Bundle):
    """The bundle's tokenizer and device task (how ``DeviceBundle`` reads data)."""
    from edge_sdk.device.tokenizer import BundleTokenizer
    from edge_sdk.tasks.registry import device_task

    tokenizer = BundleTokenizer(bundle.path(bundle.manifest.tokenizer_spec.file), bundle.manifest)
    return tokenizer, device_task(bundle.manifest, tokenizer)


def read_calibration(bundle: Bundle, profile: Profile, path: str | Path) -> Calibration:
    """Up to ``calibration_samples`` examples of a task data file (JSONL/CSV), tokenized and padded to the static
    shape; the other labelled rows (up to 200; the calibration rows when there are no others) validate."""
    from edge_sdk.targets.run import static_feeds
    from edge_sdk.targets.static import static_length

    tokenizer, task = device_tools(bundle)
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"calibration data {str(path)!r} does not exist; pass a task data file (JSONL or CSV) "
                          "with --calibration-data")
    try:
        data = task.load(path)
    except EdgeSdkError:
        data = task.load(path, require_targets=False)  # unlabelled rows calibrate; no metric then
    if not len(data):
        raise ConfigError(f"calibration data {str(path)!r} holds no examples")
    _, length = static_length(profile, bundle.manifest.max_length)
    count = min(profile.quantization.calibration_samples, len(data))
    order = np.random.default_rng(0).permutation(len(data))  # spread over the file, not its first rows
    chosen, rest = sorted(order[:count].tolist()), sorted(order[count:count + _VALIDATION_ROWS].tolist())
    names = list(tokenizer.pad([data.encoded[0]]))
    rows = [static_feeds(tokenizer, bundle.manifest, data.encoded[row], length, names) for row in chosen]
    inputs = {name: np.concatenate([row[name] for row in rows]) for name in names}
    validation = None
    if data.targets is not None:
        validation = subset(data, rest or chosen)
    return Calibration(inputs=inputs, validation=validation, source=path.name)


def subset(data: TaskData, rows: list[int]) -> TaskData:
    """The rows ``rows`` of ``data`` (its targets and context kept row by row)."""
    import copy

    picked = copy.copy(data)
    picked.encoded = [data.encoded[row] for row in rows]
    picked.targets = [data.targets[row] for row in rows] if data.targets is not None else None
    if len(data.context) == len(data.encoded):
        picked.context = [data.context[row] for row in rows]
    return picked


@dataclass
class TargetGraph:
    model: onnx.ModelProto
    validation: dict[str, Any]
    quantization: dict[str, Any]
    static_shapes: list[int]
    opset: int
    extra: dict[str, Any] = field(default_factory=dict)


def build_target_graph(bundle: Bundle, weights: dict[str, np.ndarray], profile: Profile,
                       calibration: Calibration) -> TargetGraph:
    """The QDQ target graph of ``bundle`` with ``weights`` merged in, validated (see module docstring)."""
    from edge_sdk.graph.merge import merged_model
    from edge_sdk.targets.quantize import qdq_report, quantize_qdq
    from edge_sdk.targets.static import check_static_task, static_length, static_model

    if not profile.has_target_graph:
        raise ConfigError(f"profile {profile.name!r} (precision {profile.precision}) has no target graph; "
                          "profiles with precision = \"int8-qdq\" do")
    manifest = bundle.manifest
    check_static_task(manifest.task, profile)
    if manifest.compute_precision != "fp32":
        raise ConfigError(f"bundle {str(bundle.root)!r} was built with --base {manifest.base}: its frozen layers hold "
                          "only int8 copies, so there are no float weights to merge an adapter into and quantize "
                          "statically; build it with --base float32 or int8-storage")
    batch, length = static_length(profile, manifest.max_length)
    width = next(iter(calibration.inputs.values())).shape[1]
    if width != length:
        raise ConfigError(f"the calibration inputs are {width} tokens long, the target graph takes {length}; "
                          "pass --calibration-data to read them again")
    float_model = static_model(merged_model(bundle, weights), batch, length, profile.opset)
    quantized = quantize_qdq(float_model, calibration.feeds(), profile.quantization)
    report = qdq_report(quantized)
    if report["qdq_wrapped"] != report["matmul_gemm"]:
        raise ExportError(f"{report['matmul_gemm'] - report['qdq_wrapped']} MatMul/Gemm nodes of the target graph "
                          f"read a float input not dequantized (e.g. {report['unwrapped']}); nothing was written")
    validation = validate(bundle, float_model, quantized, calibration, length)
    spec = profile.quantization
    quantization = {"scheme": spec.scheme, "activations": spec.activations,
                    "activation_symmetric": spec.activation_symmetric, "weights": "int8 symmetric",
                    "per_channel": spec.per_channel, "calibration_method": spec.calibration_method,
                    "calibration_examples": calibration.examples, "calibration_source": calibration.source,
                    "op_types": list(spec.op_types), "qdq_wrapped": f"{report['qdq_wrapped']}/{report['matmul_gemm']}",
                    "power_of_two_scales": report["power_of_two_scales"]}
    opset = next(entry.version for entry in quantized.opset_import if entry.domain in ("", "ai.onnx"))
    return TargetGraph(model=quantized, validation=validation, quantization=quantization,
                       static_shapes=[batch, length], opset=opset)


def _session(model: onnx.ModelProto):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1  # per-example latency comparable across machines and runs
    return onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def validate(bundle: Bundle, float_model: onnx.ModelProto, quantized: onnx.ModelProto, calibration: Calibration,
             length: int) -> dict[str, Any]:
    """The quantized graph against the float32 one on the CPU provider: largest logits difference, prediction
    agreement, the task metric on labelled rows, CPU time per example; raises when the quantized graph is broken."""
    from edge_sdk.targets.run import run_static

    tokenizer, task = device_tools(bundle)
    data = calibration.validation
    if data is None:  # unlabelled: the calibration inputs themselves, unpadded again
        mask = calibration.inputs.get("attention_mask")
        ids = calibration.inputs["input_ids"]
        types = calibration.inputs.get("token_type_ids", np.zeros_like(ids))
        encoded = []
        for row in range(len(ids)):
            keep = mask[row].astype(bool) if mask is not None else np.ones(ids.shape[1], bool)
            encoded.append((ids[row][keep], types[row][keep]))
        data = TaskData(encoded=encoded, targets=None, context=[""] * len(encoded))
    reference = run_static(_session(float_model), tokenizer, bundle.manifest, task, data, length)
    candidate = run_static(_session(quantized), tokenizer, bundle.manifest, task, data, length)
    finite = all(np.all(np.isfinite(value)) for value in candidate.first)
    if not finite:
        raise ExportError("the quantized target graph computes non-finite outputs; nothing was written")
    worst = max(float(np.max(np.abs(a - b))) for a, b in zip(reference.first, candidate.first, strict=True))
    same = np.concatenate([np.ravel(a.argmax(-1) == b.argmax(-1)) for a, b in
                           zip(reference.first, candidate.first, strict=True)])
    agreement = float(same.mean())
    decisive, decisive_agreement = _decisive_agreement(reference.first, candidate.first)
    figures: dict[str, Any] = {
        "examples": len(data), "labelled": data.targets is not None, "max_abs_logits_diff": round(worst, 6),
        "prediction_agreement": round(agreement, 4),
        "decisive_predictions": decisive,
        "decisive_agreement": None if decisive_agreement is None else round(decisive_agreement, 4),
        "cpu_ms_per_example": {"float32": round(1000 * reference.seconds / len(data), 3),
                               "int8_qdq": round(1000 * candidate.seconds / len(data), 3)},
    }
    if data.targets is not None:
        figures["metric"] = {"float32": _finite(task.score(data, reference.reduced)),
                             "int8_qdq": _finite(task.score(data, candidate.reduced))}
    _check_not_broken(reference.first, candidate.first, decisive, decisive_agreement, worst)
    return figures


def _decisive_agreement(reference: list[np.ndarray], candidate: list[np.ndarray]) -> tuple[int, float | None]:
    """Agreement on the predictions the float graph makes by a clear margin (top-1 ahead of top-2 by more than twice
    the median absolute output difference). A head that is still untrained (a build's initial adapter) gives
    near-equal logits whose order any rounding flips, which says nothing about the quantization."""
    flat_ref = np.concatenate([np.reshape(a, (-1, a.shape[-1])) for a in reference])
    flat_new = np.concatenate([np.reshape(b, (-1, b.shape[-1])) for b in candidate])
    if flat_ref.shape[-1] < 2:
        return 0, None
    noise = 2 * float(np.median(np.abs(flat_ref - flat_new)))
    top = np.sort(flat_ref, axis=-1)
    clear = (top[:, -1] - top[:, -2]) > noise
    if not clear.any():
        return 0, None
    return int(clear.sum()), float(np.mean(flat_ref[clear].argmax(-1) == flat_new[clear].argmax(-1)))


def _check_not_broken(reference: list[np.ndarray], candidate: list[np.ndarray], decisive: int,
                      decisive_agreement: float | None, worst: float) -> None:
    """Raise when the quantized graph is broken rather than rounded: its outputs no longer follow the input (a
    clipped or overflowing range makes every example give the same output), or it disagrees on the clear calls."""
    flat_ref = np.stack([np.ravel(a) for a in reference]) if len({a.size for a in reference}) == 1 else None
    if flat_ref is not None and len(flat_ref) > 1:
        flat_new = np.stack([np.ravel(b) for b in candidate])
        spread_ref, spread_new = float(flat_ref.std(axis=0).mean()), float(flat_new.std(axis=0).mean())
        if spread_ref > 1e-6 and spread_new < 0.05 * spread_ref:
            raise ExportError("the quantized target graph gives (almost) the same output for every example while the "
                              "float32 graph does not: a quantization range is broken; nothing was written")
        centred_ref = flat_ref - flat_ref.mean(axis=0)
        centred_new = flat_new - flat_new.mean(axis=0)
        norm = float(np.linalg.norm(centred_ref) * np.linalg.norm(centred_new))
        correlation = float(np.sum(centred_ref * centred_new)) / norm if norm > 0 else 0.0
        if spread_ref > 1e-6 and correlation < MIN_CORRELATION:
            raise ExportError(f"the quantized target graph's outputs correlate with the float32 graph's at only "
                              f"{correlation:.2f} across examples: the quantization is broken; nothing was written")
    if decisive >= 10 and decisive_agreement < MIN_AGREEMENT:
        raise ExportError(f"the quantized target graph agrees with the float32 graph on only {decisive_agreement:.1%} "
                          f"of {decisive} clear predictions (largest logits difference {worst:.3g}); the "
                          "quantization is broken: nothing was written")


def _finite(scores: dict[str, float]) -> dict[str, float]:
    return {key: round(float(value), 6) for key, value in scores.items()
            if isinstance(value, (int, float)) and math.isfinite(value)}


def write_target(folder: Path, target: TargetGraph, profile: Profile) -> dict[str, Any]:
    """Write ``target`` into ``folder`` (model.onnx, its weights beside it, coverage.json, the provider's config
    file); returns the sizes and names written."""
    import onnx

    onnx.save(target.model, str(folder / MODEL_FILE), save_as_external_data=True, all_tensors_to_one_file=True,
              location=DATA_FILE, size_threshold=1024)
    onnx.checker.check_model(str(folder / MODEL_FILE), full_check=True)
    # From the file: saving moved the model's weights out of ``target.model`` into DATA_FILE.
    coverage = coverage_report(folder / MODEL_FILE, profile)
    # The graph it describes sits beside it; the path it was read from (a staging folder) means nothing later.
    coverage["graph"] = MODEL_FILE
    (folder / COVERAGE_FILE).write_text(json.dumps(coverage, indent=2) + "\n", encoding="utf-8")
    written = [MODEL_FILE, COVERAGE_FILE]
    if (folder / DATA_FILE).exists():
        written.insert(1, DATA_FILE)
    for provider in (spec.name for spec in profile.providers):  # declared, installed or not
        if provider in PROVIDER_CONFIGS:
            name = PROVIDER_CONFIGS[provider]
            (folder / name).write_bytes(provider_config(name))
            written.append(name)
    sizes = {name: (folder / name).stat().st_size for name in written}
    return {"files": written, "bytes": sizes, "coverage": coverage}


def provider_config(name: str) -> bytes:
    """A provider's configuration file shipped with the SDK. ``vaip_config.json``: the Vitis AI EP's pass list as
    AMD documents it for the Ryzen AI / Versal ONNX Runtime EP (``init`` then ``vaiml_partition``; "Vitis AI EP
    Configuration File", ryzenai.docs.amd.com, and the vitisai_config.json AMD ships with its models)."""
    from importlib import resources

    return resources.files(__package__).joinpath(name).read_bytes()


def coverage_report(model: onnx.ModelProto | Path, profile: Profile) -> dict[str, Any]:
    from edge_sdk.targets.coverage import predict_coverage

    return predict_coverage(model, profile)
