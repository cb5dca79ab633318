"""Generation graphs with a KV cache (a causal LM's decoder; a seq2seq model's encoder and decoder
step), exported and checked against PyTorch; they share the base weights with the other graphs."""

from __future__ import annotations

from edge_sdk.host.pipeline import BuildState, Fragment, Stage


def _run(state: BuildState, _writer, _draft) -> Fragment:
    from edge_sdk.host.generation_graphs import generation_graphs

    rewrite = state.base_rewrite.rewrite if state.base_rewrite is not None else None
    graphs, spec = generation_graphs(state.spec.generation, state.loaded, state.scratch, state.config.opset,
                                     state.exported.trainable, state.validation_batch, state.perturbed_adapter(),
                                     rewrite=rewrite)
    for relative, model in graphs.items():
        state.graphs.add(relative, model)
    return {"inference": {"generation": spec}}


STAGE = Stage("generation-graphs", "exporting the generation graphs (KV cache) and checking them against PyTorch",
              _run)
