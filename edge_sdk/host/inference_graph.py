"""The inference graph: the exported forward pass with the adapter weights as graph inputs.

Adapter weights are inputs rather than initializers so that one loaded session serves every adapter
in the store: switching users or skills feeds other tensors, it never reloads the base weights.
"""

from __future__ import annotations

import onnx
from onnx import helper


def _promote_to_inputs(model: onnx.ModelProto, names: list[str]) -> None:
    wanted = set(names)
    kept = []
    promoted = {}
    for init in model.graph.initializer:
        if init.name in wanted:
            promoted[init.name] = helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
        else:
            kept.append(init)
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    # Graph inputs follow the order of ``names`` so that the manifest order and the graph agree.
    model.graph.input.extend(promoted[name] for name in names)


def _drop_dropout(model: onnx.ModelProto) -> None:
    """A training-mode export keeps Dropout nodes (ratio 0); at inference they are identities."""
    nodes = []
    for node in model.graph.node:
        if node.op_type == "Dropout":
            nodes.append(helper.make_node("Identity", [node.input[0]], [node.output[0]], name=node.name))
        else:
            nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def inference_model(model: onnx.ModelProto, trainable: list[str]) -> onnx.ModelProto:
    """Turn the exported forward pass ``model`` into the inference graph (in place) and return it.

    It is stored unoptimized: ONNX Runtime applies the profile's graph optimizations when the device
    opens it, and an unoptimized graph keeps the parameter names the portable training step shares.
    """
    _promote_to_inputs(model, trainable)
    _drop_dropout(model)
    return model
