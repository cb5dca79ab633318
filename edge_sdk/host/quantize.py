"""QLoRA's quantized base: the frozen weights of the LoRA-adapted linear layers, stored as int8.

Each adapted layer's base weight W [out, in] (as ``nn.Linear`` stores it) becomes symmetric int8 with one
float scale per output row, ``scale = max|W_row| / 127``, and every graph of the bundle (the training
graph ORT's artifacts are built from, hence the portable step; the inference graph; the generation
graphs) reads it back through a standard ``DequantizeLinear`` (per-axis, opset 13+) whose output keeps
W's name, so the exported wiring (Transpose → MatMul, or Gemm) is untouched. The LoRA matrices, and every
weight that is not an adapted layer's base, stay float.

Why the PyTorch model is switched to the dequantized weights before anything is exported (rather than
validated against the float model with a looser tolerance): a bundle's graphs must agree with PEFT's own
forward pass over the weights the bundle actually holds, and ``DequantizeLinear`` computes
``float(q) * scale`` in float32, exactly the values put into PyTorch, so the build keeps its usual
atol 1e-4 / rtol 1e-3 and still catches any export mistake. What int8 costs against the original float
model is a property of the model, not of the export; it is measured on the validation batch and written
to the manifest (``build.quantization``), not gated by a threshold that would have to be tuned per model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from edge_sdk.errors import ConfigError, ExportError
from edge_sdk.graph.row_quantization import QuantizedWeight, quantize_rows
from edge_sdk.host.export import ExportedGraph, torch_reference, weights_loaded

SCHEME = "int8 symmetric, one scale per output channel (DequantizeLinear axis 0)"
QUANTIZED_SUFFIX, SCALE_SUFFIX, ZERO_POINT_SUFFIX = ".int8", ".scale", ".zero_point"


@dataclass
class QuantizedBase:
    """The quantized base weights by parameter name (as ``named_parameters`` and the graphs name them)."""

    weights: dict[str, QuantizedWeight]
    float_weights: dict[str, np.ndarray] = field(repr=False)  # the originals, to measure what int8 costs

    def summary(self) -> dict:
        float_bytes = sum(4 * q.values.size for q in self.weights.values())
        int8_bytes = sum(q.values.nbytes + q.scale.nbytes + q.values.shape[0] for q in self.weights.values())
        return {"scheme": SCHEME, "weights": len(self.weights), "float_bytes": float_bytes, "int8_bytes": int8_bytes}

    def rewrite(self, model: onnx.ModelProto, require_all: bool = False) -> list[str]:
        """Replace each quantized weight initializer of ``model`` by int8 + scale + zero point and a
        DequantizeLinear that outputs the original name (in place). Returns the new initializer names."""
        graph = model.graph
        present = {init.name: init for init in graph.initializer}
        if set(self.weights) & set(present) and not any(entry.domain in ("", "ai.onnx") and entry.version >= 13
                                                        for entry in model.opset_import):
            raise ExportError("per-channel DequantizeLinear needs ONNX opset 13 or newer")
        if require_all:
            missing = sorted(set(self.weights) - set(present))
            if missing:
                raise ExportError("quantized base weights are missing from the exported graph: "
                                  + ", ".join(missing[:5]))
        dequantize_nodes, added, replaced = [], [], set()
        for name, quantized in self.weights.items():
            if name not in present:
                continue
            exported = numpy_helper.to_array(present[name])
            if exported.dtype != np.float32 or not np.array_equal(exported, quantized.dequantized()):
                # The graph must hold the very values PyTorch was validated with, or "same name, same bytes"
                # (the shared weights file) and the exact check against PyTorch would both be lies.
                raise ExportError(f"the exported {name!r} is not the dequantized int8 weight the model holds "
                                  "(was the model changed after quantize_adapted_base?)")
            tensors = (quantized.values, quantized.scale, np.zeros(quantized.values.shape[0], np.int8))
            names = [name + suffix for suffix in (QUANTIZED_SUFFIX, SCALE_SUFFIX, ZERO_POINT_SUFFIX)]
            added += [numpy_helper.from_array(array, tensor_name) for array, tensor_name in zip(tensors, names,
                                                                                               strict=True)]
            dequantize_nodes.append(helper.make_node("DequantizeLinear", names, [name], axis=0,
                                                     name=f"{name}.dequantize"))
            replaced.add(name)
        kept = [init for init in graph.initializer if init.name not in replaced]
        del graph.initializer[:]
        graph.initializer.extend(kept + added)
        inputs = [value for value in graph.input if value.name not in replaced]  # old exporters list initializers
        del graph.input[:]
        graph.input.extend(inputs)
        # Nodes are stored in topological order: the weights are computed before anything reads them.
        nodes = list(graph.node)
        del graph.node[:]
        graph.node.extend(dequantize_nodes + nodes)
        return [init.name for init in added]

    def rewrite_exported(self, graph: ExportedGraph) -> ExportedGraph:
        """Rewrite the training-export graph (in memory) and list its new frozen initializers."""
        added = self.rewrite(graph.model, require_all=True)
        frozen = [name for name in graph.frozen if name not in self.weights] + added
        return dataclasses.replace(graph, frozen=frozen)

    def output_change(self, peft_model: torch.nn.Module, batch: dict[str, np.ndarray],
                      output_names: list[str]) -> dict[str, float]:
        """Max abs difference per output between the int8 base (as the model now holds it) and the float one."""
        quantized = torch_reference(peft_model, batch, output_names)
        with weights_loaded(peft_model, self.float_weights):
            original = torch_reference(peft_model, batch, output_names)
        return {name: float(np.max(np.abs(quantized[name] - original[name]))) for name in output_names}


def adapted_base_weights(peft_model: torch.nn.Module) -> list[str]:
    """Parameter names of the base weights of every LoRA-adapted linear layer, in model order.

    Matched by identity, not by name: a base weight tied to another module (an output layer tied to the
    embeddings) is listed under the name ``named_parameters`` gives it, which is the name the graphs use.
    """
    from peft.tuners.lora import LoraLayer

    names_by_id = {id(parameter): name for name, parameter in peft_model.named_parameters()}
    found = []
    for module_name, module in peft_model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        base = module.get_base_layer()
        if not isinstance(base, torch.nn.Linear):
            raise ConfigError(f"qlora quantizes linear base layers; {module_name} is a {type(base).__name__}")
        name = names_by_id[id(base.weight)]
        if name not in found:
            found.append(name)
    if not found:
        raise ConfigError("qlora found no LoRA-adapted linear layer to quantize")
    return found


def quantize_adapted_base(peft_model: torch.nn.Module) -> QuantizedBase:
    """Quantize the adapted layers' base weights and put their dequantized values into ``peft_model``
    (permanently: everything exported or validated afterwards sees the int8 base)."""
    parameters = dict(peft_model.named_parameters())
    weights, originals = {}, {}
    for name in adapted_base_weights(peft_model):
        originals[name] = parameters[name].detach().numpy().copy()
        weights[name] = quantize_rows(originals[name])
        with torch.no_grad():
            parameters[name].copy_(torch.from_numpy(weights[name].dequantized()))
    return QuantizedBase(weights=weights, float_weights=originals)
