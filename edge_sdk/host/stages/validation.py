"""Check the inference graph against PyTorch with a non-zero adapter (a broken adapter path shows)."""

from __future__ import annotations

from edge_sdk.bundle.layout import INFERENCE_GRAPH
from edge_sdk.host.pipeline import BuildState, Fragment, Stage


def _run(state: BuildState, _writer, _draft) -> Fragment:
    from edge_sdk.host.export import compare_outputs, torch_reference, weights_loaded

    names = list(state.spec.host.outputs)
    adapter = state.perturbed_adapter()
    with weights_loaded(state.loaded.model, adapter):
        reference = torch_reference(state.loaded.model, state.validation_batch, names)
    feeds = state.validation_batch | {name: adapter[name] for name in state.exported.trainable}
    actual = dict(zip(names, state.graphs.session(INFERENCE_GRAPH).run(names, feeds), strict=True))
    diffs = compare_outputs(reference, actual, "the optimized inference graph")
    return {"build": {"validation_max_abs_diff": {f"inference.{key}": value for key, value in diffs.items()}}}


STAGE = Stage("validate", "validating the inference graph against PyTorch", _run)
