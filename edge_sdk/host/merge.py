"""A standalone inference graph with an adapter merged into the base weights (``edge-sdk adapters export
--format merged-onnx``): W' = W + (alpha / r) · B · A for every adapted linear layer, the LoRA branches
removed, the trained head modules baked in. No adapter inputs are left, so any ONNX runtime can run it
like the original model, at the original model's cost.

Needs the ``onnx`` package (host side); the bundle is read as is, nothing in it changes.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edge_sdk.bundle.store import Bundle
from edge_sdk.errors import AdapterError, ExportError
from edge_sdk.host.inference_graph import prune_unused

_LORA_A, _LORA_B, _BASE = "lora_A.default.weight", "lora_B.default.weight", "base_layer.weight"
_MAX_BRANCH_NODES = 8  # Transpose, MatMul, Mul (scaling), Cast … before the branch joins the base output


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    found: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def _float_weight(graph: onnx.GraphProto, name: str) -> np.ndarray:
    """The float value of the frozen weight ``name``: an initializer, or a DequantizeLinear of initializers
    (a qlora bundle's int8 base), which is then replaced by the float value."""
    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init).astype(np.float32)
    initializers = {init.name: init for init in graph.initializer}
    for node in graph.node:
        if node.output[0] == name and node.op_type == "DequantizeLinear":
            values = [numpy_helper.to_array(initializers[i]) if i in initializers else None for i in node.input]
            if any(value is None for value in values[:2]):
                break
            quantized, scale = values[0].astype(np.float32), values[1].astype(np.float32)
            zero = values[2].astype(np.float32) if len(values) > 2 and values[2] is not None else 0.0
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            shape = [1] * quantized.ndim
            if np.ndim(scale):
                shape[axis] = -1
            return (quantized - np.reshape(zero, shape if np.ndim(zero) else [])) * np.reshape(scale, shape)
    raise ExportError(f"the base weight {name!r} is neither an initializer nor a dequantized initializer")


def _set_initializer(graph: onnx.GraphProto, name: str, value: np.ndarray) -> None:
    producers = [node for node in graph.node if name in node.output]
    for node in producers:  # a DequantizeLinear that produced the weight is no longer needed
        graph.node.remove(node)
    for index, init in enumerate(graph.initializer):
        if init.name == name:
            graph.initializer[index].CopyFrom(numpy_helper.from_array(value, name))
            return
    graph.initializer.append(numpy_helper.from_array(value, name))


def _bypass_branch(graph: onnx.GraphProto, lora_b: str) -> None:
    """Cut the LoRA branch that starts at ``lora_b``: the Add that joins it to the base layer's output is
    replaced by that output. Left unconnected, the branch is pruned."""
    consumers = _consumers(graph)
    current = lora_b
    for _ in range(_MAX_BRANCH_NODES):
        nodes = consumers.get(current, [])
        if len(nodes) != 1:
            break
        node = nodes[0]
        if node.op_type == "Add":
            base_output = next(name for name in node.input if name != current)
            for consumer in graph.node:
                for index, name in enumerate(consumer.input):
                    if name == node.output[0]:
                        consumer.input[index] = base_output
            for output in graph.output:
                if output.name == node.output[0]:
                    raise ExportError(f"the LoRA branch of {lora_b!r} ends in a graph output; cannot merge it")
            return
        current = node.output[0]
    raise ExportError(f"cannot find where the LoRA branch of {lora_b!r} joins the base layer (an unexpected "
                      "graph shape); the bundle's inference graph with adapter inputs still works")


def merged_model(bundle: Bundle, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The bundle's inference graph with ``weights`` merged in (see module docstring)."""
    manifest = bundle.manifest
    if manifest.peft.get("method", "lora") not in ("lora", "qlora"):
        raise AdapterError(f"merged-onnx export supports LoRA adapters (lora and qlora bundles); this bundle's method "
                           f"is {manifest.peft.get('method')!r}: use --format peft and merge with PEFT's "
                           "merge_and_unload on the host")
    model = onnx.load(str(bundle.path(manifest.inference["model"])))  # external base weights loaded too
    graph = model.graph
    scale = float(manifest.peft["alpha"]) / float(manifest.peft["rank"])
    for name in [n for n in weights if n.endswith(_LORA_A)]:
        prefix = name[: -len(_LORA_A)]
        base_name = prefix + _BASE
        base = _float_weight(graph, base_name)
        a, b = weights[name], weights[prefix + _LORA_B]
        if base.shape != (b.shape[0], a.shape[1]):
            raise ExportError(f"{base_name} has shape {list(base.shape)}, not [out, in] = {[b.shape[0], a.shape[1]]}; "
                              "layers that store the weight transposed (GPT-2's Conv1D) cannot be merged here")
        _set_initializer(graph, base_name, (base + scale * (b @ a)).astype(np.float32))
        _bypass_branch(graph, prefix + _LORA_B)
    adapter_inputs = set(weights)
    for name, value in weights.items():
        if _LORA_A not in name and _LORA_B not in name:  # trained head modules become ordinary weights
            graph.initializer.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
    kept = [value for value in graph.input if value.name not in adapter_inputs]
    del graph.input[:]
    graph.input.extend(kept)
    prune_unused(graph)
    leftovers = sorted({name for node in graph.node for name in node.input if ".lora_" in name})
    if leftovers:
        raise ExportError(f"LoRA tensors are still read after merging: {leftovers[:3]}")
    return model


def export_merged_onnx(bundle: Bundle, weights: dict[str, np.ndarray], out: Path, overwrite: bool = False) -> Path:
    """Write the merged graph to ``out`` (a .onnx file; its weights in ``out`` + ``.data`` beside it),
    atomically: a failure leaves nothing at ``out``."""
    out = Path(out)
    if out.suffix != ".onnx":
        raise AdapterError(f"--out for merged-onnx is a .onnx file path, got {str(out)!r}")
    data = out.with_name(out.name + ".data")
    if (out.exists() or data.exists()) and not overwrite:
        raise AdapterError(f"{str(out)!r} already exists; choose another --out or pass --overwrite")
    model = merged_model(bundle, weights)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        onnx.save(model, str(staging / out.name), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=data.name, size_threshold=1024)
        if (staging / data.name).exists():
            os.replace(staging / data.name, data)
        os.replace(staging / out.name, out)
    finally:
        for leftover in staging.iterdir():
            leftover.unlink()
        staging.rmdir()
    return out
