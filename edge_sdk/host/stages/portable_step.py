"""Lower ORT's training and optimizer graphs to one standard-ONNX training step (any stock ORT runs it)."""

from __future__ import annotations

import onnx

from edge_sdk.bundle.layout import BASE_WEIGHTS, FORWARD_GRAPH, TRAIN_STEP_GRAPH
from edge_sdk.host.pipeline import BuildState, Fragment, Stage


def _run(state: BuildState, _writer, _draft) -> Fragment:
    from edge_sdk.host.portable.assemble import build_train_step, state_names

    exported = state.exported
    step = build_train_step(
        onnx.load(str(state.ort_dir / state.ort_artifacts["training_model"])),
        onnx.load(str(state.ort_dir / state.ort_artifacts["optimizer_model"])),
        # The pooled weights' placeholders: the step refers to the same pool entries as the other graphs.
        frozen_values={init.name: init for init in state.graphs.model(FORWARD_GRAPH).graph.initializer},
        trainable=exported.trainable,
        batch_inputs=[*state.input_names, *(target.name for target in state.spec.host.targets)],
    )
    names = state_names(exported.trainable, step)
    state.graphs.add(TRAIN_STEP_GRAPH, step)
    # The step reads each frozen matrix as stored; prepacking would copy it once per product.
    return {"training": {"portable": {"model": TRAIN_STEP_GRAPH, "weights": BASE_WEIGHTS, "prepack_weights": False,
                                      "names": names}}}


STAGE = Stage("portable-step", "lowering the training graph to a portable standard-ONNX training step", _run)
