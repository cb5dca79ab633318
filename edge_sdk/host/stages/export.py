"""Trace the training-safe forward graph (held in memory from here on) and the sample batches."""

from __future__ import annotations

import numpy as np

from edge_sdk.bundle.layout import FORWARD_GRAPH
from edge_sdk.bundle.manifest import TensorSpec
from edge_sdk.host.pipeline import BuildState, Fragment, Stage

# Texts of different lengths: the export traces one batch, validation runs another, so dynamic
# sequence length and padding are both exercised.
EXPORT_TEXTS = ["Edge devices adapt models to their users.", "A short one."]
VALIDATION_TEXTS = [
    "The quarterly results beat expectations, and the shares rose sharply in early trading.",
    "Rain later.",
    "Researchers released a new open model that runs on phones without a network connection.",
]


def _encoder_decoder_batch(loaded, max_length: int, texts: list[str]) -> dict[str, np.ndarray]:
    """Sources and targets (the texts, rotated by one) with the teacher-forced decoder inputs."""
    from edge_sdk.host.seq2seq_export import generation_spec
    from edge_sdk.tasks.seq2seq import teacher_forced_inputs

    tokenizer = loaded.tokenizer
    sources = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="np")
    targets = tokenizer(text_target=texts[1:] + texts[:1], truncation=True, max_length=max_length)["input_ids"]
    spec = generation_spec(loaded.model)
    decoder = teacher_forced_inputs(targets, spec.decoder_start_token_id, spec.pad_token_id)
    return {"input_ids": sources["input_ids"].astype(np.int64),
            "attention_mask": sources["attention_mask"].astype(np.int64),
            "decoder_input_ids": decoder["decoder_input_ids"],
            "decoder_attention_mask": decoder["decoder_attention_mask"]}


def _run(state: BuildState, _writer, _draft) -> Fragment:
    from edge_sdk.host.export import export_training_graph, model_input_names, sample_batch
    from edge_sdk.host.seq2seq_export import export_seq2seq_training_graph

    config, loaded, host = state.config, state.loaded, state.spec.host
    path = state.scratch / "forward.onnx"
    if host.export == "encoder-decoder":
        state.input_names = ["input_ids", "attention_mask"]
        state.export_batch = _encoder_decoder_batch(loaded, config.max_length, EXPORT_TEXTS)
        state.validation_batch = _encoder_decoder_batch(loaded, config.max_length, VALIDATION_TEXTS)
        exported = export_seq2seq_training_graph(loaded.model, state.export_batch, path, config.opset)
    else:
        state.input_names = model_input_names(loaded.model, loaded.tokenizer, loaded.model_type)
        state.export_batch = sample_batch(loaded.tokenizer, state.input_names, config.max_length, EXPORT_TEXTS)
        state.validation_batch = sample_batch(loaded.tokenizer, state.input_names, config.max_length,
                                              VALIDATION_TEXTS)
        exported = export_training_graph(loaded.model, state.export_batch, list(host.outputs), path, config.opset,
                                         per_token=host.per_token)
    if state.base_rewrite is not None:  # before the artifacts: the training graphs dequantize too
        exported = state.base_rewrite.rewrite_exported(exported)
    # From here the graph's weights live once, in the graph set's pool; the later stages read the graph
    # there (the training step and the inference graph refer to the same pooled weights).
    state.graphs.add(FORWARD_GRAPH, exported.model)
    exported.model = None
    state.exported = exported
    state.step_feeds = state.validation_batch | host.sample_targets(state.validation_batch, state.classes,
                                                                    np.random.default_rng(config.seed))
    return {
        "inputs": [TensorSpec(name, "int64", ["batch", "sequence"]) for name in state.input_names],
        "outputs": [TensorSpec(name, "float32", host.output_shape(state.classes)) for name in host.outputs],
        "trainable": [TensorSpec(name, "float32", list(state.initial[name].shape)) for name in exported.trainable],
        # > 0: the head's position gather sits above that many position-wise ops of the last layer
        "build": {"positions_selected_early": exported.positions_selected_early},
    }


STAGE = Stage("export", "exporting the training-safe ONNX graph", _run)
