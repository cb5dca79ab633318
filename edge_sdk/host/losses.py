"""A task's declarative loss (``edge_sdk.tasks.losses.LossGraph``) as an ONNX Runtime ``onnxblock`` block."""

from __future__ import annotations

import onnx

from edge_sdk.tasks.losses import LossGraph
from edge_sdk.tasks.spec import TargetSpec

_ELEMENT_TYPES = {"int64": onnx.TensorProto.INT64, "float32": onnx.TensorProto.FLOAT}
CLASSES_DIM = "classes"  # a target's dimension that is the outputs' class count (multi-hot labels)


def loss_block(loss: LossGraph, outputs: tuple[str, ...], targets: tuple[TargetSpec, ...], classes: int):
    """The block that appends ``loss`` to the exported graph: target inputs the graph lacks (the decoder
    inputs of seq2seq are model inputs already), constants, nodes; it returns the loss output's name."""
    from onnxruntime.training import onnxblock

    def dims(shape: tuple[str | int, ...]) -> list[str | int]:
        return [classes if dim == CLASSES_DIM else dim for dim in shape]

    class _TaskLoss(onnxblock.Block):
        def build(self, *output_names: str) -> str:
            rename = dict(zip(outputs, output_names, strict=True))
            graph = self.base.graph
            present = {value.name for value in graph.input}
            for target in targets:
                if target.name not in present:
                    graph.input.append(onnx.helper.make_tensor_value_info(
                        target.name, _ELEMENT_TYPES[target.dtype], dims(target.shape)))
            graph.initializer.extend(onnx.numpy_helper.from_array(value, name)
                                     for name, value in loss.constants.items())
            graph.node.extend(onnx.helper.make_node(node.op_type, [rename.get(name, name) for name in node.inputs],
                                                    list(node.outputs), **node.attributes)
                              for node in loss.nodes)
            graph.value_info.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, list(shape))
                                    for name, shape in loss.shapes.items())
            return loss.output

    return _TaskLoss()
