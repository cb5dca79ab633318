"""`edge-sdk build`: model + PEFT settings → a verified, self-contained bundle."""

from __future__ import annotations

import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
from safetensors.numpy import save_file

import edge_sdk
from edge_sdk.bundle import BundleWriter, Manifest, TensorSpec
from edge_sdk.host.artifacts import build_training_artifacts
from edge_sdk.host.config import BuildConfig
from edge_sdk.host.export import (
    compare_outputs,
    export_training_graph,
    model_input_names,
    sample_batch,
    torch_reference,
    weights_loaded,
)
from edge_sdk.host.generation_graphs import generation_graphs
from edge_sdk.host.inference_graph import inference_model
from edge_sdk.host.int8_bundle import convert_to_int8
from edge_sdk.host.model_loading import LoadedModel, load_for_task
from edge_sdk.host.ort_session import cpu_session
from edge_sdk.host.portable.assemble import build_train_step, state_names
from edge_sdk.host.portable.validate import validate_portable_step
from edge_sdk.host.portable.weights import save_with_shared_weights
from edge_sdk.host.quantize import quantize_adapted_base
from edge_sdk.host.seq2seq_export import export_seq2seq_training_graph
from edge_sdk.host.tasks import host_task
from edge_sdk.profiles import load_profile

PORTABLE_DIR = "portable"
INFERENCE_MODEL = f"{PORTABLE_DIR}/inference.onnx"
TRAIN_STEP_MODEL = f"{PORTABLE_DIR}/train_step.onnx"
BASE_WEIGHTS = f"{PORTABLE_DIR}/base.weights"
INITIAL_ADAPTER = "adapters/initial.safetensors"
TOKENIZER_DIR = "tokenizer"
TRAINING_DIR = "training/ort"

# Texts of different lengths: the export traces one batch, validation runs another, so dynamic
# sequence length and padding are both exercised.
_EXPORT_TEXTS = ["Edge devices adapt models to their users.", "A short one."]
_VALIDATION_TEXTS = [
    "The quarterly results beat expectations, and the shares rose sharply in early trading.",
    "Rain later.",
    "Researchers released a new open model that runs on phones without a network connection.",
]

Progress = Callable[[str], None]


def _trainable_weights(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {name: p.detach().numpy().copy() for name, p in model.named_parameters() if p.requires_grad}


def _perturbed(weights: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    # Zero-initialised LoRA B would hide a broken adapter path, so validation uses non-zero weights.
    rng = np.random.default_rng(seed)
    return {name: (value + rng.normal(0.0, 0.05, value.shape)).astype(np.float32) for name, value in weights.items()}


def _validate(loaded: LoadedModel, forward_path: Path, inference_path: Path, batch: dict[str, np.ndarray],
              output_names: list[str], trainable: list[str], seed: int) -> dict[str, float]:
    """Check both ONNX graphs against PyTorch; return the max differences for the manifest."""
    model = loaded.model
    initial = _trainable_weights(model)
    reference = torch_reference(model, batch, output_names)
    exported = dict(zip(output_names, cpu_session(forward_path).run(output_names, batch), strict=True))
    diffs = {"forward." + k: v for k, v in compare_outputs(reference, exported, "the exported training graph").items()}

    perturbed = _perturbed(initial, seed)
    with weights_loaded(model, perturbed):
        reference = torch_reference(model, batch, output_names)
    feeds = dict(batch) | {name: perturbed[name] for name in trainable}
    optimized = dict(zip(output_names, cpu_session(inference_path).run(output_names, feeds), strict=True))
    diffs |= {"inference." + k: v for k, v in compare_outputs(
        reference, optimized, "the optimized inference graph").items()}
    return diffs


def _seq2seq_batch(loaded: LoadedModel, max_length: int, texts: list[str]) -> dict[str, np.ndarray]:
    """Sources and targets (the texts, rotated by one) with the teacher-forced decoder inputs."""
    from edge_sdk.device.seq2seq_generation import teacher_forced_inputs
    from edge_sdk.host.seq2seq_export import generation_spec

    tokenizer = loaded.tokenizer
    sources = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="np")
    targets = tokenizer(text_target=texts[1:] + texts[:1], truncation=True, max_length=max_length)["input_ids"]
    spec = generation_spec(loaded.model)
    decoder = teacher_forced_inputs(targets, spec.decoder_start_token_id, spec.pad_token_id)
    return {"input_ids": sources["input_ids"].astype(np.int64), "attention_mask": sources["attention_mask"].astype(
        np.int64), "decoder_input_ids": decoder["decoder_input_ids"],
        "decoder_attention_mask": decoder["decoder_attention_mask"]}


def _tokenizer_info(tokenizer) -> dict:
    """What the device tokenizer cannot read from tokenizer.json: padding, the special tokens a chat
    template names, and the template itself."""
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    return {
        "file": f"{TOKENIZER_DIR}/tokenizer.json",
        "pad_token_id": int(tokenizer.pad_token_id),
        "padding_side": tokenizer.padding_side,
        "bos_token": tokenizer.bos_token,
        "bos_token_id": tokenizer.bos_token_id,
        # Whether plain text starts with the begin-of-text token (Llama's tokenizers add it, SmolLM2's not).
        "adds_bos": tokenizer.bos_token_id is not None and tokenizer("x").input_ids[:1] == [tokenizer.bos_token_id],
        "eos_token": tokenizer.eos_token,
        "eos_token_id": tokenizer.eos_token_id,
        "chat_template": template,
    }


def _classes(config: BuildConfig, loaded: LoadedModel) -> int:
    """Size of the outputs' class axis: the user's labels, or the vocabulary of a language model."""
    if host_task(config.task).uses_labels:
        return len(config.labels)
    head = loaded.model.get_output_embeddings()
    return int(head.weight.shape[0]) if head is not None else 0


def build_bundle(config: BuildConfig, out: str | Path, overwrite: bool = False,
                 progress: Progress | None = None) -> Path:
    """Build a bundle for ``config`` at ``out`` (atomically: on failure nothing is left at ``out``)."""
    report = progress or (lambda _message: None)
    started = time.perf_counter()
    config.validate()
    profile = load_profile(config.profile)
    task = host_task(config.task)

    with BundleWriter(out, overwrite=overwrite) as writer, tempfile.TemporaryDirectory() as scratch:
        report(f"loading {config.model_dir} and applying LoRA r={config.lora.rank}")
        loaded = load_for_task(config)
        # qlora: from here on the PyTorch model holds the int8 base (dequantized), so every export and check
        # below sees exactly the weights the bundle stores.
        quantized = quantize_adapted_base(loaded.model) if config.lora.method == "qlora" else None
        report("exporting the training-safe ONNX graph")
        if task.name == "seq2seq":
            input_names = ["input_ids", "attention_mask"]
            export_batch = _seq2seq_batch(loaded, config.max_length, _EXPORT_TEXTS)
            validation_batch = _seq2seq_batch(loaded, config.max_length, _VALIDATION_TEXTS)
            graph = export_seq2seq_training_graph(loaded.model, export_batch, Path(scratch) / "forward.onnx",
                                                  config.opset)
        else:
            input_names = model_input_names(loaded.model, loaded.tokenizer, loaded.model_type)
            export_batch = sample_batch(loaded.tokenizer, input_names, config.max_length, _EXPORT_TEXTS)
            validation_batch = sample_batch(loaded.tokenizer, input_names, config.max_length, _VALIDATION_TEXTS)
            graph = export_training_graph(loaded.model, export_batch, list(task.outputs),
                                          Path(scratch) / "forward.onnx", config.opset, per_token=task.per_token)
        if quantized:
            graph = quantized.rewrite_exported(graph)  # before the artifacts: the training graphs dequantize too
        classes = _classes(config, loaded)
        report("building ONNX Runtime training artifacts")
        training_dir = writer.folder(TRAINING_DIR)
        training_files = build_training_artifacts(graph, task.loss_block(classes), training_dir)
        report("lowering the training graph to a portable standard-ONNX training step")
        forward = onnx.load(str(graph.path))
        train_step = build_train_step(
            onnx.load(str(training_dir / training_files["training_model"])),
            onnx.load(str(training_dir / training_files["optimizer_model"])),
            frozen_values={init.name: init for init in forward.graph.initializer},
            trainable=graph.trainable, batch_inputs=[*input_names, *task.target_inputs],
        )
        initial = _trainable_weights(loaded.model)
        generation = None
        if task.name in ("causal-lm", "seq2seq"):
            report("exporting the generation graphs (KV cache) and checking them against PyTorch")
            generation = generation_graphs(task.name, loaded, Path(scratch), config.opset, graph.trainable,
                                           validation_batch, _perturbed(initial, config.seed),
                                           rewrite=quantized.rewrite if quantized else None)
        inference_path, train_step_path = writer.path(INFERENCE_MODEL), writer.path(TRAIN_STEP_MODEL)
        # The step copied its frozen initializers, so the forward graph itself can become the inference graph.
        graphs = {inference_path: inference_model(forward, graph.trainable), train_step_path: train_step}
        graphs |= {writer.path(relative): model for relative, model in (generation[0] if generation else {}).items()}
        save_with_shared_weights(graphs, writer.path(BASE_WEIGHTS))
        report("validating the ONNX graphs against PyTorch")
        diffs = _validate(loaded, graph.path, inference_path, validation_batch, list(task.outputs), graph.trainable,
                          config.seed)

        loaded.tokenizer.save_pretrained(str(writer.folder(TOKENIZER_DIR)))
        save_file(initial, str(writer.path(INITIAL_ADAPTER)), metadata={"format": "edge-sdk-adapter"})

        manifest = Manifest(
            task=config.task,
            labels=list(config.labels),
            model={
                "source": config.source_description or str(config.model_dir),
                "model_type": loaded.model_type,
                "architecture": type(loaded.model.get_base_model()).__name__,
                "parameters": int(sum(p.numel() for p in loaded.model.parameters())),
            },
            tokenizer=_tokenizer_info(loaded.tokenizer),
            max_length=config.max_length,
            inputs=[TensorSpec(name, "int64", ["batch", "sequence"]) for name in input_names],
            outputs=[TensorSpec(name, "float32", task.output_shape(classes)) for name in task.outputs],
            trainable=[TensorSpec(name, "float32", list(initial[name].shape)) for name in graph.trainable],
            peft={
                "method": config.lora.method,
                "rank": config.lora.rank,
                "alpha": config.lora.alpha,
                "target_modules": loaded.target_modules,
                "modules_to_save": loaded.modules_to_save,
                "trainable_parameters": int(sum(v.size for v in initial.values())),
            },
            training={
                "backends": ["ort-training", "portable"],
                "max_batch_size": config.max_batch_size,
                "loss": "cross_entropy",
                "targets": [{"name": name, "dtype": "int64", "shape": shape}
                            for name, shape in task.target_inputs.items()],
                "ort-training": {key: f"{TRAINING_DIR}/{name}" for key, name in training_files.items()},
                # The step reads each frozen matrix as stored; prepacking would copy it once per product.
                "portable": {"model": TRAIN_STEP_MODEL, "weights": BASE_WEIGHTS, "prepack_weights": False,
                             "names": state_names(graph.trainable, train_step)},
            },
            inference={"model": INFERENCE_MODEL, "weights": BASE_WEIGHTS, "initial_adapter": INITIAL_ADAPTER}
            | ({"generation": generation[1]} if generation else {}),
            profile=profile.to_dict(),
            build={
                "seed": config.seed,
                "opset": config.opset,
                "validation_max_abs_diff": diffs,
                # > 0: the head's position gather sits above that many position-wise ops of the last layer
                "positions_selected_early": graph.positions_selected_early,
                "seconds": round(time.perf_counter() - started, 1),
                "host": {
                    "python": platform.python_version(),
                    "torch": torch.__version__,
                    "onnxruntime": onnxruntime.__version__,
                },
            },
            sdk_version=edge_sdk.__version__,
        )
        if quantized:
            manifest.build["quantization"] = quantized.summary() | {
                "max_abs_output_change_vs_float": quantized.output_change(loaded.model, validation_batch,
                                                                          list(task.outputs))}
        report("checking the portable step against ONNX Runtime training, step by step")
        step_feeds = validation_batch | task.sample_targets(validation_batch, classes,
                                                            np.random.default_rng(config.seed))
        manifest.build["portable_max_relative_loss_difference"] = validate_portable_step(writer.staged(manifest),
                                                                                         step_feeds)
        if config.precision == "int8":
            report("int8: quantizing the frozen linear layers and measuring what that changes")
            adapter = _perturbed(initial, config.seed)
            manifest.build["precision"] = convert_to_int8(
                writer.staged, manifest, validation_batch | {name: adapter[name] for name in graph.trainable},
                step_feeds)
        report("writing the bundle")
        return writer.commit(manifest)
