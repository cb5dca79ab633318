"""The optimized inference graph: the forward graph with the adapter as inputs (so adapters switch per
request) and training-only nodes removed. The exported graph becomes it in place: the training step
has copied what it needs."""

from __future__ import annotations

from edge_sdk.bundle.layout import BASE_WEIGHTS, FORWARD_GRAPH, INFERENCE_GRAPH, INITIAL_ADAPTER
from edge_sdk.host.pipeline import BuildState, Fragment, Stage


def _run(state: BuildState, _writer, _draft) -> Fragment:
    from edge_sdk.host.inference_graph import inference_model

    state.graphs.add(INFERENCE_GRAPH, inference_model(state.graphs.pop(FORWARD_GRAPH), state.exported.trainable))
    return {"inference": {"model": INFERENCE_GRAPH, "weights": BASE_WEIGHTS, "initial_adapter": INITIAL_ADAPTER}}


STAGE = Stage("inference-graph", "making the inference graph (adapter weights as inputs)", _run)
