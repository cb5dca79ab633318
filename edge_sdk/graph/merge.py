"""Merge an adapter into the base weights of an inference graph: W' = W + (alpha / r) · B · A for every adapted
linear layer (DoRA: rescaled row by row to the trained magnitude; qlora: the int8 base dequantized first), the
adapter branches removed, the trained head modules baked in. No adapter inputs are left, so any ONNX runtime can
run the result like the original model, at the original model's cost.

numpy + onnx only, so both the host (``edge-sdk adapters export --format merged-onnx``) and the device
(``edge-sdk adapters deploy``, which quantizes the merged graph for an accelerator) use it.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from edge_sdk.bundle.store import Bundle
from edge_sdk.errors import ExportError
from edge_sdk.graph.frozen import frozen_value
from edge_sdk.graph.nodes import node_inputs
from edge_sdk.graph.prune import prune_unused

_LORA_A, _LORA_B, _BASE = "lora_A.default.weight", "lora_B.default.weight", "base_layer.weight"


def _set_initializer(graph: onnx.GraphProto, name: str, value: np.ndarray) -> None:
    producers = [node for node in graph.node if name in node.output]
    for node in producers:  # a DequantizeLinear that produced the weight is no longer needed
        graph.node.remove(node)
    for index, init in enumerate(graph.initializer):
        if init.name == name:
            graph.initializer[index].CopyFrom(numpy_helper.from_array(value, name))
            return
    graph.initializer.append(numpy_helper.from_array(value, name))


_ADAPTER_MARKERS = (".lora_A.", ".lora_B.", ".lora_magnitude_vector.")


def _is_adapter(name: str) -> bool:
    return any(marker in name for marker in _ADAPTER_MARKERS)


def _cut_adapter_branches(graph: onnx.GraphProto, adapter_inputs: set[str]) -> None:
    """Every LoRA/DoRA term joins the base layer's output through an Add (PEFT: ``result = result + …``); with
    the adapter merged into the base weight those terms are gone, so each such Add is replaced by its
    adapter-free input. The terms, left unread, are pruned."""
    dependent, replaced = set(adapter_inputs), {}
    for node in graph.node:  # topological order
        inputs = node_inputs(node)
        if node.op_type == "Add" and len(node.input) == 2 and len(inputs & dependent) == 1:
            # A junction: base output + adapter term. After the merge it is the base output alone, which no
            # longer depends on the adapter (so a residual Add further on is not mistaken for a junction).
            replaced[node.output[0]] = next(name for name in node.input if name not in dependent)
        elif inputs & dependent:
            dependent.update(node.output)
    for node in graph.node:
        for index, name in enumerate(node.input):
            while name in replaced:
                name = replaced[name]
            node.input[index] = name
    still = _reached_from(graph, adapter_inputs)
    for output in graph.output:
        if output.name in still:
            raise ExportError(f"graph output {output.name!r} still depends on the adapter after merging")


def _reached_from(graph: onnx.GraphProto, sources: set[str]) -> set[str]:
    """Every tensor computed from any of ``sources`` (nodes are in topological order: one pass)."""
    reached = set(sources)
    for node in graph.node:
        if any(name in reached for name in node_inputs(node)):
            reached.update(node.output)
    return reached


def _merged_weight(method: str, base: np.ndarray, a: np.ndarray, b: np.ndarray, scale: float,
                   magnitude: np.ndarray | None) -> np.ndarray:
    merged = base + scale * (b @ a)
    if method == "dora":  # PEFT: m * (W + sBA) / ||W + sBA|| per output row
        merged = (magnitude / np.linalg.norm(merged, axis=1))[:, None] * merged
    return merged.astype(np.float32)


def merged_model(bundle: Bundle, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The bundle's inference graph with ``weights`` merged in (see module docstring). A bundle built with
    --freeze-lora-a bakes A into its graph: its recorded float values join the adapter's B here."""
    from edge_sdk.bundle.frozen_lora import frozen_lora_a

    manifest = bundle.manifest
    model = onnx.load(str(bundle.path(manifest.inference_spec.model)))  # external base weights loaded too
    weights = frozen_lora_a(bundle) | dict(weights)
    return merge_into(model, weights, manifest.adapter, manifest.peft_spec.alpha / manifest.peft_spec.rank)


def merge_into(model: onnx.ModelProto, weights: dict[str, np.ndarray], method: str,
               scale: float) -> onnx.ModelProto:
    """Merge ``weights`` (``method`` "lora" or "dora", LoRA scale alpha / rank) into ``model``, an inference
    graph that takes them as inputs, in place; returns ``model``."""
    graph = model.graph
    for name in [n for n in weights if n.endswith(_LORA_A)]:
        prefix = name[: -len(_LORA_A)]
        base_name = prefix + _BASE
        base = frozen_value(graph, base_name)
        if base is None:
            raise ExportError(f"the base weight {base_name!r} is neither an initializer nor a dequantized initializer")
        a, b = weights[name], weights[prefix + _LORA_B]
        if base.shape != (b.shape[0], a.shape[1]):
            raise ExportError(f"{base_name} has shape {list(base.shape)}, not [out, in] = {[b.shape[0], a.shape[1]]}; "
                              "layers that store the weight transposed (GPT-2's Conv1D) cannot be merged here")
        magnitude = weights.get(prefix + "lora_magnitude_vector.default.weight")
        _set_initializer(graph, base_name, _merged_weight(method, base, a, b, scale, magnitude))
    adapter_inputs = {name for name in weights if _is_adapter(name)}
    for name, value in weights.items():
        if name not in adapter_inputs:  # trained head modules become ordinary weights
            graph.initializer.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
    _cut_adapter_branches(graph, adapter_inputs)
    kept = [value for value in graph.input if value.name not in weights]
    del graph.input[:]
    graph.input.extend(kept)
    prune_unused(graph)
    leftovers = sorted({name for node in graph.node for name in node.input if _is_adapter(name)})
    if leftovers:
        raise ExportError(f"adapter tensors are still read after merging: {leftovers[:3]}")
    return model
