"""Training-safe ONNX export of a PEFT model and its check against PyTorch.

Why the TorchScript exporter in TRAINING mode without constant folding: in EVAL mode it merges
initializers with equal values (every zero-initialised LoRA B matrix becomes one tensor), which breaks
gradient building; see docs/training-export.md.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

from edge_sdk.errors import ExportError
from edge_sdk.host.row_selection import select_rows_early

log = logging.getLogger(__name__)

_WRAPPER_PREFIX = "model."


def model_input_names(peft_model: torch.nn.Module, tokenizer, model_type: str) -> list[str]:
    """Inputs the exported graph takes: what the tokenizer produces and the model's forward accepts.

    Decoder-only models also get explicit ``position_ids``: transformers computes them (and the mask)
    with ops the exporter cannot trace.
    """
    forward = inspect.signature(peft_model.get_base_model().forward).parameters
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in tokenizer.model_input_names and "token_type_ids" in forward:
        names.append("token_type_ids")
    if (model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
            and "position_ids" in forward):
        names.append("position_ids")
    return names


def position_ids_from_mask(attention_mask: np.ndarray) -> np.ndarray:
    return np.maximum(np.cumsum(attention_mask, axis=1) - 1, 0).astype(np.int64)


def sample_batch(tokenizer, input_names: list[str], max_length: int, texts: list[str]) -> dict[str, np.ndarray]:
    """Tokenize sample texts into int64 arrays (padded, so the mask path is exercised)."""
    encoded = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="np")
    batch = {name: np.asarray(encoded[name], dtype=np.int64) for name in input_names if name in encoded}
    if "token_type_ids" in input_names and "token_type_ids" not in batch:
        batch["token_type_ids"] = np.zeros_like(batch["input_ids"])
    if "position_ids" in input_names:
        batch["position_ids"] = position_ids_from_mask(batch["attention_mask"])
    return batch


def peft_forward(peft_model: torch.nn.Module, inputs: dict[str, torch.Tensor]):
    """The LoRA model's forward pass with every input passed through.

    Why not ``peft_model(**inputs)``: PEFT's task wrappers forward a fixed set of arguments, and
    PeftModelForQuestionAnswering (peft 0.21.2) drops ``token_type_ids`` and ``position_ids``, so BERT
    would read the context as part of the question. The LoRA layers live in ``base_model`` either way.
    """
    return peft_model.base_model(**inputs)


class _ForwardWrapper(torch.nn.Module):
    """Positional inputs in a fixed order and only the task's outputs, as the ONNX graph exposes them."""

    def __init__(self, model: torch.nn.Module, input_names: list[str], output_names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.input_names = input_names
        self.output_names = output_names

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        result = peft_forward(self.model, dict(zip(self.input_names, inputs, strict=True)))
        return tuple(getattr(result, name) for name in self.output_names)


@contextlib.contextmanager
def model_mode(module: torch.nn.Module, training: bool) -> Iterator[None]:
    """``module`` in training or eval mode for the block, its own mode restored afterwards."""
    previous = module.training
    module.train(training)
    try:
        yield
    finally:
        module.train(previous)


@contextlib.contextmanager
def weights_loaded(peft_model: torch.nn.Module, weights: dict[str, np.ndarray]) -> Iterator[None]:
    """Put ``weights`` into the model's parameters of those names for the block, the old values back after."""
    parameters = dict(peft_model.named_parameters())
    unknown = sorted(set(weights) - set(parameters))
    if unknown:
        raise ExportError(f"weights name no parameter of the model: {', '.join(unknown[:10])}")
    saved = {name: parameters[name].detach().clone() for name in weights}
    try:
        with torch.no_grad():
            for name, value in weights.items():
                parameters[name].copy_(torch.from_numpy(np.asarray(value)))
        yield
    finally:
        with torch.no_grad():
            for name, value in saved.items():
                parameters[name].copy_(value)


def trace_to_onnx(wrapper: torch.nn.Module, args: tuple, path: Path, input_names: list[str],
                  output_names: list[str], dynamic_axes: dict, opset: int, what: str) -> onnx.ModelProto:
    """Trace ``wrapper`` (whose ``model`` attribute is the PEFT model) with the TorchScript exporter in
    TRAINING mode without constant folding, and return the graph with parameters named as in PEFT.

    The model's own train/eval mode is restored afterwards: the exporter leaves it in training mode,
    which would switch dropout on for anything that runs the model next.
    """
    try:
        with model_mode(wrapper.model, True), warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper, args, str(path), input_names=input_names, output_names=output_names,
                dynamic_axes=dynamic_axes, opset_version=opset, training=torch.onnx.TrainingMode.TRAINING,
                do_constant_folding=False, export_params=True, dynamo=False,
            )
    except ExportError:
        raise
    except Exception as exc:  # the exporter raises a zoo of types; the message is what helps
        raise ExportError(f"ONNX export of {what} failed: {exc}") from exc
    model_proto = onnx.load(str(path))
    _strip_prefix_from_initializers(model_proto)
    return model_proto


@dataclass
class ExportedGraph:
    """An exported training-safe graph, held in memory from here on (``path`` is the exporter's own file)."""

    model: onnx.ModelProto
    path: Path
    input_names: list[str]
    output_names: list[str]
    trainable: list[str]          # ONNX initializer names of the trainable parameters, in model order
    frozen: list[str]
    # Position-wise ops above which the head's one-position gather was moved (host/row_selection.py).
    positions_selected_early: int = 0


def export_training_graph(peft_model: torch.nn.Module, batch: dict[str, np.ndarray], output_names: list[str],
                          path: Path, opset: int, per_token: bool = False) -> ExportedGraph:
    """Export the PEFT model's forward pass with parameter names kept, ready for gradient building.

    ``per_token`` outputs keep the inputs' sequence axis, which must stay symbolic in the graph.
    """
    input_names = list(batch)
    output_names = list(output_names)
    wrapper = _ForwardWrapper(peft_model, input_names, output_names)
    args = tuple(torch.from_numpy(batch[name]) for name in input_names)
    dynamic_axes = {name: {0: "batch", 1: "sequence"} for name in input_names}
    for name in output_names:
        dynamic_axes[name] = {0: "batch", 1: "sequence"} if per_token else {0: "batch"}
    model_proto = trace_to_onnx(wrapper, args, path, input_names, output_names, dynamic_axes, opset, "the model")
    # A sequence-level head reads one position: compute only that row in the last layer's position-wise
    # blocks (inference, ORT training and the portable step are all built from this graph).
    moved = 0 if per_token else select_rows_early(model_proto)
    initializers = [init.name for init in model_proto.graph.initializer]
    trainable = [name for name, p in peft_model.named_parameters() if p.requires_grad]
    present = set(initializers)
    missing = [name for name in trainable if name not in present]
    if missing:
        raise ExportError(
            "trainable parameters are missing from the exported graph (renamed or folded by the exporter): "
            + ", ".join(missing[:10])
        )
    trainable_set = set(trainable)
    frozen = [name for name in initializers if name not in trainable_set]
    return ExportedGraph(model=model_proto, path=path, input_names=input_names, output_names=output_names,
                         trainable=trainable, frozen=frozen, positions_selected_early=moved)


def _strip_prefix_from_initializers(model_proto: onnx.ModelProto) -> None:
    """Name graph parameters exactly like the PEFT model's ``named_parameters`` (drop the wrapper's prefix)."""
    renames = {init.name: init.name[len(_WRAPPER_PREFIX):] for init in model_proto.graph.initializer
               if init.name.startswith(_WRAPPER_PREFIX)}
    for init in model_proto.graph.initializer:
        init.name = renames.get(init.name, init.name)
    for node in model_proto.graph.node:
        for index, name in enumerate(node.input):
            if name in renames:
                node.input[index] = renames[name]


def torch_reference(peft_model: torch.nn.Module, batch: dict[str, np.ndarray],
                    output_names: list[str]) -> dict[str, np.ndarray]:
    peft_model.eval()
    with torch.no_grad():
        result = peft_forward(peft_model, {name: torch.from_numpy(value) for name, value in batch.items()})
    return {name: getattr(result, name).numpy() for name in output_names}


def compare_outputs(expected: dict[str, np.ndarray], actual: dict[str, np.ndarray], what: str,
                    atol: float = 1e-4, rtol: float = 1e-3) -> dict[str, float]:
    """Per-output max absolute difference; raise naming each output beyond tolerance."""
    differences = {}
    failures = []
    for name, reference in expected.items():
        value = actual[name]
        if value.shape != reference.shape:
            failures.append(f"{name}: shape {list(value.shape)} vs PyTorch {list(reference.shape)}")
            continue
        diff = float(np.max(np.abs(value - reference))) if reference.size else 0.0
        differences[name] = diff
        if not np.allclose(value, reference, atol=atol, rtol=rtol):
            failures.append(f"{name}: max abs difference {diff:.3g}")
    if failures:
        raise ExportError(
            f"{what} disagrees with the PyTorch model beyond tolerance (atol={atol}, rtol={rtol}): "
            + "; ".join(failures)
        )
    return differences
