"""Turn a staged, validated float32 bundle into an int8 one (`--precision int8`).

The float32 graphs are built and checked first (against PyTorch, and the portable step against ONNX
Runtime training, exactly), so every export mistake is still caught at full precision. Then the frozen
linear layers of every graph on disk are rewritten to int8 (:mod:`edge_sdk.host.int8_matmul`), and what
int8 changes is measured against the float32 graphs on the build's own validation batch: the outputs of
the inference graph and the losses of a few portable training steps. Those figures go to the manifest;
only a change that means the rewrite is broken (not merely approximate) stops the build.

The bundle drops ONNX Runtime's training artifacts: their checkpoint holds a second float32 copy of the
base, and their graph cannot contain the int8 operators (ORT has no gradient for them). An int8 bundle
trains with the portable step, which is faster anyway.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from edge_sdk.bundle import Manifest
from edge_sdk.bundle.store import Bundle
from edge_sdk.device.backends.portable import PortableBackend
from edge_sdk.errors import ExportError
from edge_sdk.graph.prune import prune_unused
from edge_sdk.host.int8_diagnosis import diagnose
from edge_sdk.host.int8_matmul import quantize_frozen_matmuls
from edge_sdk.host.ort_session import cpu_session
from edge_sdk.host.portable.weights import save_with_shared_weights

STEPS = 4
LEARNING_RATE = 1e-2
# Beyond these the int8 graphs are not an approximation of the float ones but a different function (a
# weight read transposed, a scale on the wrong axis): int8 itself moves BERT-sized logits by ~1e-2.
MAX_OUTPUT_CHANGE = 0.25   # of the largest float32 output magnitude
MAX_LOSS_CHANGE = 0.05     # relative, on the first training step


def _outputs(path: Path, feeds: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    return dict(zip(names, cpu_session(path).run(names, feeds), strict=True))


def _step_losses(bundle: Bundle, feeds: dict[str, np.ndarray]) -> list[float]:
    backend = PortableBackend(bundle)
    try:
        return [backend.train_step(feeds, LEARNING_RATE) for _ in range(STEPS)]
    finally:
        backend.close()


def _rewrite_graphs(paths: list[Path], weights_path: Path) -> dict:
    models, summaries = {}, {}
    for path in paths:
        model = onnx.load(str(path))  # with its external data: the rewrite reads the weights
        summary = quantize_frozen_matmuls(model, {init.name for init in model.graph.initializer})
        prune_unused(model.graph)  # the float32 copies of rewritten weights are no longer read
        models[path] = model
        summaries[path.name] = summary.to_dict()
    weights_path.unlink()
    save_with_shared_weights(models, weights_path)
    return summaries


def convert_to_int8(staged: Callable[[Manifest], Bundle], manifest: Manifest,
                    inference_feeds: dict[str, np.ndarray], step_feeds: dict[str, np.ndarray]) -> dict:
    """Rewrite the staged bundle in place and update ``manifest``; return the build record.

    ``inference_feeds`` are the inference graph's inputs with adapter weights; ``step_feeds`` a training
    batch with its targets.
    """
    root = staged(manifest).root
    names = [spec.name for spec in manifest.outputs]
    inference_path = root / manifest.inference["model"]
    reference = _outputs(inference_path, inference_feeds, names)
    reference_losses = _step_losses(staged(manifest), step_feeds)

    graphs = [inference_path, root / manifest.training["portable"]["model"]]
    graphs += [root / relative for relative in _generation_files(manifest)]
    summaries = _rewrite_graphs(graphs, root / manifest.inference["weights"])

    ort_folder = root / Path(manifest.training["ort-training"]["checkpoint"]).parent
    shutil.rmtree(ort_folder)
    if not any(ort_folder.parent.iterdir()):
        ort_folder.parent.rmdir()
    manifest.training["backends"] = ["portable"]
    # int8 keeps its own matrix per direction, so prepacking costs no memory and speeds the int8 GEMM.
    manifest.training["portable"]["prepack_weights"] = True
    del manifest.training["ort-training"]
    manifest.inference["precision"] = "int8"
    # What the device checks before it runs the bundle: no pair of integer products overflows 16 bits.
    manifest.inference["int8_max_pair_sum"] = max(summary["max_pair_sum"] for summary in summaries.values())

    def refuse(what: str) -> ExportError:
        return ExportError(f"{what}; likely cause: {diagnose(inference_path, inference_feeds)}; "
                           "build it with --precision fp32")

    quantized = _outputs(inference_path, inference_feeds, names)
    output_change = {}
    for name in names:
        change = float(np.max(np.abs(quantized[name] - reference[name])))
        scale = max(float(np.max(np.abs(reference[name]))), 1e-6)
        if not np.isfinite(change) or change > MAX_OUTPUT_CHANGE * scale:
            raise refuse(f"int8 moved the inference graph's {name!r} by up to {change:.3g} against float32 "
                         f"(largest value {scale:.3g}); this model does not survive the int8 rewrite")
        output_change[name] = change
    losses = _step_losses(staged(manifest), step_feeds)
    changes = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(losses, reference_losses, strict=True)]
    # The first step runs both from the same weights, so it measures int8's forward error alone; later
    # steps follow two trajectories that drift apart by design, so of them only the direction is checked.
    if not np.all(np.isfinite(losses)) or changes[0] > MAX_LOSS_CHANGE:
        raise refuse(f"the int8 training step's first loss differs from float32's by {changes[0]:.2%} "
                     f"({losses[0]:.6g} vs {reference_losses[0]:.6g})")
    if reference_losses[-1] < reference_losses[0] and not losses[-1] < losses[0]:
        raise refuse(f"the int8 training step does not reduce the loss over {STEPS} steps ({losses}) while "
                     f"float32 does ({reference_losses})")
    return {"precision": "int8", "graphs": summaries, "max_abs_output_change_vs_fp32": output_change,
            "step_losses": {"fp32": reference_losses, "int8": losses},
            "relative_step_loss_change_vs_fp32": changes}


def _generation_files(manifest: Manifest) -> list[str]:
    """Every graph file the generation entry of the manifest names."""
    found: list[str] = []

    def walk(value) -> None:
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, str) and value.endswith(".onnx"):
            found.append(value)

    walk(manifest.inference.get("generation", {}))
    return sorted(set(found))
