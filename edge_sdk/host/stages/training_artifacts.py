"""ONNX Runtime's training artifacts (training, eval and optimizer graphs, checkpoint) from the exported
graph and the task's loss. The portable step is lowered from them; a float-compute bundle also ships
them for the ort-training backend (an int8-compute one does not: ORT has no gradient for int8 ops)."""

from __future__ import annotations

import dataclasses

from edge_sdk.bundle.layout import FORWARD_GRAPH, ORT_TRAINING_DIR
from edge_sdk.host.pipeline import BuildState, Fragment, Stage


def _run(state: BuildState, _writer, _draft) -> Fragment:
    from edge_sdk.host.artifacts import build_training_artifacts
    from edge_sdk.host.losses import loss_block

    host = state.spec.host
    state.ship_ort_artifacts = state.config.base != "int8-compute"
    loss = loss_block(host.loss(state.classes), host.outputs, host.targets, state.classes)
    # The artifact builder needs the weights inline (its checkpoint stores them): a transient copy.
    exported = dataclasses.replace(state.exported, model=state.graphs.materialized(FORWARD_GRAPH))
    state.ort_artifacts = build_training_artifacts(exported, loss, state.ort_dir)
    training = {
        "backends": ["ort-training", "portable"] if state.ship_ort_artifacts else ["portable"],
        "max_batch_size": state.config.max_batch_size,
        "loss": host.loss.__name__,
        "targets": [{"name": target.name, "dtype": target.dtype, "shape": list(target.shape)}
                    for target in host.targets],
    }
    if state.ship_ort_artifacts:
        training["ort-training"] = {key: f"{ORT_TRAINING_DIR}/{name}" for key, name in state.ort_artifacts.items()}
    return {"training": training}


STAGE = Stage("training-artifacts", "building ONNX Runtime training artifacts", _run)
