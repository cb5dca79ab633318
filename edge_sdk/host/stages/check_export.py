"""Check the exported graph against PyTorch on the validation batch, output by output."""

from __future__ import annotations

from edge_sdk.bundle.layout import FORWARD_GRAPH
from edge_sdk.host.pipeline import BuildState, Fragment, Stage


def _run(state: BuildState, _writer, _draft) -> Fragment:
    from edge_sdk.host.export import compare_outputs, torch_reference

    names = list(state.spec.host.outputs)
    reference = torch_reference(state.loaded.model, state.validation_batch, names)
    exported = dict(zip(names, state.graphs.session(FORWARD_GRAPH).run(names, state.validation_batch), strict=True))
    diffs = compare_outputs(reference, exported, "the exported training graph")
    quantization = {}
    if state.base_rewrite is not None:
        quantization = {"quantization": state.base_rewrite.summary() | {
            "max_abs_output_change_vs_float": state.base_rewrite.output_change(
                state.loaded.model, state.validation_batch, names)}}
    return {"build": {"validation_max_abs_diff": {f"forward.{key}": value for key, value in diffs.items()}}
            | quantization}


STAGE = Stage("check-export", "checking the exported graph against PyTorch", _run)
