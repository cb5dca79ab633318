"""The generation graphs of text-producing tasks, exported and checked against PyTorch at build time:
a decoder with a KV cache for causal LMs, an encoder plus a cached decoder step for seq2seq models.

They take the adapter weights as inputs like the inference graph and share its base weights file, so a
bundle holds the frozen base once however many graphs read it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from edge_sdk.bundle.layout import graph_path
from edge_sdk.host.export import weights_loaded
from edge_sdk.host.model_loading import LoadedModel

# Applied to each exported graph before its check against PyTorch (qlora's int8 base: quantize.py).
GraphRewrite = Callable[[onnx.ModelProto], object]


def _rewrite_saved(path: Path, rewrite: GraphRewrite | None) -> None:
    if rewrite is not None:
        model = onnx.load(str(path))
        rewrite(model)
        onnx.save(model, str(path))


def _eos_ids(loaded: LoadedModel) -> list[int]:
    """Every token that ends a reply: the tokenizer's end-of-text and the generation config's (chat
    models often end turns with a token of their own, e.g. <|im_end|>)."""
    found = [loaded.tokenizer.eos_token_id]
    configured = getattr(loaded.model.get_base_model().generation_config, "eos_token_id", None)
    found += configured if isinstance(configured, list) else [configured]
    return sorted({int(token) for token in found if token is not None})


def _max_positions(config) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        if isinstance(getattr(config, key, None), int):
            return getattr(config, key)
    return None  # relative positions (T5): no fixed limit


def _causal_lm(loaded: LoadedModel, scratch: Path, opset: int, trainable: list[str],
               batch: dict[str, np.ndarray], weights: dict[str, np.ndarray],
               rewrite: GraphRewrite | None) -> tuple[dict, dict]:
    from edge_sdk.host.decoder_export import check_decoder_against_torch, export_decoder_with_cache

    graph = export_decoder_with_cache(loaded.model, scratch / "decoder.onnx", opset, trainable)
    _rewrite_saved(graph.path, rewrite)
    worst = check_decoder_against_torch(loaded.model, graph, batch["input_ids"], batch["attention_mask"], weights)
    relative = graph_path("decoder.onnx")
    spec = graph.to_manifest(relative) | {
        "eos_token_ids": _eos_ids(loaded),
        "max_positions": _max_positions(loaded.model.get_base_model().config),
        "validation_max_abs_diff": worst,
    }
    return {relative: onnx.load(str(graph.path))}, spec


def _seq2seq(loaded: LoadedModel, scratch: Path, opset: int, trainable: list[str],
             batch: dict[str, np.ndarray], weights: dict[str, np.ndarray],
             rewrite: GraphRewrite | None) -> tuple[dict, dict]:
    from edge_sdk.host.seq2seq_export import check_seq2seq_against_torch, export_seq2seq_generation

    graphs = export_seq2seq_generation(loaded.model, scratch / "seq2seq", opset, trainable)
    for graph in (graphs.encoder, graphs.decoder):
        _rewrite_saved(graph.path, rewrite)
    with weights_loaded(loaded.model, weights):  # non-zero LoRA weights: an adapter path that is wrong shows
        worst = check_seq2seq_against_torch(loaded.model, graphs, batch["input_ids"], batch["attention_mask"])
    spec = graphs.to_manifest()
    models = {}
    for part, graph in (("encoder", graphs.encoder), ("decoder", graphs.decoder)):
        relative = graph_path(graph.path.name)
        spec[part]["file"] = relative
        models[relative] = onnx.load(str(graph.path))
    spec["validation_max_abs_diff"] = worst
    return models, spec


_EXPORTERS = {"decoder": _causal_lm, "encoder-decoder": _seq2seq}


def generation_graphs(generation: str, loaded: LoadedModel, scratch: Path, opset: int, trainable: list[str],
                      batch: dict[str, np.ndarray], weights: dict[str, np.ndarray],
                      rewrite: GraphRewrite | None = None) -> tuple[dict, dict]:
    """({bundle path: graph}, the manifest's generation spec) for a ``generation`` family (a TaskSpec's).

    ``batch`` holds sample inputs and ``weights`` non-zero adapter weights for the check against PyTorch;
    ``rewrite`` changes each graph in place before that check, so what is checked is what ships.
    """
    return _EXPORTERS[generation](loaded, scratch, opset, trainable, batch, weights, rewrite)
