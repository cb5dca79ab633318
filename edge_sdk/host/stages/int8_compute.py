"""int8 compute: the frozen linear layers of every graph become integer products (int8 weights,
``edge_sdk.host.int8_matmul``), and what that changes is measured against the float32 graphs.

Runs after the float32 graphs were checked (against PyTorch, and the portable step against ONNX Runtime
training, exactly), so every export mistake is still caught at full precision. Then the graphs held in
memory are rewritten and compared on the build's own validation batch: the outputs of the inference graph
and the losses of a few portable training steps. Those figures go to the manifest; only a change that
means the rewrite is broken (not merely approximate) stops the build, with a diagnosis of the cause.
ONNX Runtime's training artifacts are not shipped (training_artifacts.py): their checkpoint would hold a
second float32 base, and ORT has no gradient for the int8 operators.
"""

from __future__ import annotations

import numpy as np

from edge_sdk.bundle.layout import INFERENCE_GRAPH
from edge_sdk.errors import ExportError
from edge_sdk.host.pipeline import BuildState, Fragment, Stage

STEPS = 4
LEARNING_RATE = 1e-2
# Beyond these the int8 graphs are not an approximation of the float ones but a different function (a
# weight read transposed, a scale on the wrong axis): int8 itself moves BERT-sized logits by ~1e-2.
MAX_OUTPUT_CHANGE = 0.25   # of the largest float32 output magnitude
MAX_LOSS_CHANGE = 0.05     # relative, on the first training step
# int8 keeps its own matrix per direction, so prepacking costs no memory and speeds the int8 GEMM.
PREPACK_INT8 = True


def _step_losses(state: BuildState, draft: Fragment, prepack_weights: bool) -> list[float]:
    from edge_sdk.host.stages.backend_check import portable_backend

    backend = portable_backend(state, draft, prepack_weights)
    try:
        return [backend.train_step(state.step_feeds, LEARNING_RATE) for _ in range(STEPS)]
    finally:
        backend.close()


def _rewrite(state: BuildState) -> dict:
    from edge_sdk.graph.prune import prune_unused
    from edge_sdk.host.int8_matmul import quantize_frozen_matmuls

    summaries = {}
    for relative in list(state.graphs):
        model = state.graphs.materialized(relative)  # the rewrite reads the weights
        summary = quantize_frozen_matmuls(model, {init.name for init in model.graph.initializer})
        prune_unused(model.graph)  # the float32 copies of rewritten weights are no longer read
        state.graphs.replace(relative, model)
        summaries[relative.rsplit("/", 1)[-1]] = summary.to_dict()
    return summaries


def _run(state: BuildState, _writer, draft: Fragment) -> Fragment:
    from edge_sdk.host.int8_diagnosis import diagnose

    names = list(state.spec.host.outputs)
    adapter = state.perturbed_adapter()
    feeds = state.validation_batch | {name: adapter[name] for name in state.exported.trainable}
    reference = dict(zip(names, state.graphs.session(INFERENCE_GRAPH).run(names, feeds), strict=True))
    reference_losses = _step_losses(state, draft, draft["training"]["portable"]["prepack_weights"])
    summaries = _rewrite(state)

    def refuse(what: str) -> ExportError:
        return ExportError(f"{what}; likely cause: {diagnose(state.graphs.materialized(INFERENCE_GRAPH), feeds)}; "
                           "build it with --base float32 (or int8-storage)")

    quantized = dict(zip(names, state.graphs.session(INFERENCE_GRAPH).run(names, feeds), strict=True))
    output_change = {}
    for name in names:
        change = float(np.max(np.abs(quantized[name] - reference[name])))
        scale = max(float(np.max(np.abs(reference[name]))), 1e-6)
        if not np.isfinite(change) or change > MAX_OUTPUT_CHANGE * scale:
            raise refuse(f"int8 moved the inference graph's {name!r} by up to {change:.3g} against float32 "
                         f"(largest value {scale:.3g}); this model does not survive the int8 rewrite")
        output_change[name] = change
    losses = _step_losses(state, draft, PREPACK_INT8)
    changes = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(losses, reference_losses, strict=True)]
    # The first step runs both from the same weights, so it measures int8's forward error alone; later
    # steps follow two trajectories that drift apart by design, so of them only the direction is checked.
    if not np.all(np.isfinite(losses)) or changes[0] > MAX_LOSS_CHANGE:
        raise refuse(f"the int8 training step's first loss differs from float32's by {changes[0]:.2%} "
                     f"({losses[0]:.6g} vs {reference_losses[0]:.6g})")
    if reference_losses[-1] < reference_losses[0] and not losses[-1] < losses[0]:
        raise refuse(f"the int8 training step does not reduce the loss over {STEPS} steps ({losses}) while "
                     f"float32 does ({reference_losses})")
    return {
        "inference": {
            "precision": "int8",
            # What the device checks before it runs the bundle: no pair of integer products overflows 16 bits.
            "int8_max_pair_sum": max(summary["max_pair_sum"] for summary in summaries.values()),
        },
        "training": {"portable": {"prepack_weights": PREPACK_INT8}},
        "build": {"precision": {"precision": "int8", "graphs": summaries,
                                "max_abs_output_change_vs_fp32": output_change,
                                "step_losses": {"fp32": reference_losses, "int8": losses},
                                "relative_step_loss_change_vs_fp32": changes}},
    }


STAGE = Stage("int8-compute", "int8 compute: quantizing the frozen linear layers and measuring what that changes",
              _run)
