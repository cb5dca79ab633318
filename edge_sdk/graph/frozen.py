"""Where a frozen weight comes from: the initializer behind a tensor, and a weight's float value.

Exporters and ORT's gradient builder rarely feed a weight initializer straight into its product: they read
it through Transposes and Identities, and a qlora bundle stores it as int8 behind a DequantizeLinear.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from edge_sdk.graph.attributes import attribute

# Chains are short; a bound keeps a malformed (cyclic) graph from looping.
_MAX_CHAIN = 8


def _is_2d_transpose(node: onnx.NodeProto) -> bool:
    perm = attribute(node, "perm")
    return node.op_type == "Transpose" and (perm is None or list(perm) == [1, 0])


def frozen_source(name: str, producers: dict[str, onnx.NodeProto], frozen: dict[str, TensorProto]
                  ) -> tuple[str, bool] | None:
    """(initializer, transposed?) when ``name`` is a frozen 2-D float weight seen through Transposes and
    Identities; None otherwise. ``producers`` maps tensor names to the nodes that output them
    (:func:`edge_sdk.graph.wiring.producers`); ``frozen`` holds the initializers that may be traced to."""
    transposed = False
    for _ in range(_MAX_CHAIN):
        if name in frozen:
            tensor = frozen[name]
            if tensor.data_type == TensorProto.FLOAT and len(tensor.dims) == 2:
                return name, transposed
            return None
        node = producers.get(name)
        if node is None:
            return None
        if _is_2d_transpose(node):
            transposed = not transposed
        elif node.op_type != "Identity":
            return None
        name = node.input[0]
    return None


def frozen_value(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    """The float32 value of the frozen weight ``name``: an initializer, or a DequantizeLinear whose inputs are
    initializers (a qlora bundle's int8 base); None when it is neither. Initializer data must be loaded."""
    initializers = {init.name: init for init in graph.initializer}
    if name in initializers:
        return numpy_helper.to_array(initializers[name]).astype(np.float32)
    for node in graph.node:
        if node.output[0] == name and node.op_type == "DequantizeLinear":
            values = [numpy_helper.to_array(initializers[i]) if i in initializers else None for i in node.input]
            if any(value is None for value in values[:2]):
                return None
            quantized, scale = values[0].astype(np.float32), values[1].astype(np.float32)
            zero = values[2].astype(np.float32) if len(values) > 2 and values[2] is not None else 0.0
            axis = attribute(node, "axis", 1)  # ONNX's default for DequantizeLinear
            shape = [1] * quantized.ndim
            if np.ndim(scale):
                shape[axis] = -1
            return (quantized - np.reshape(zero, shape if np.ndim(zero) else [])) * np.reshape(scale, shape)
    return None
