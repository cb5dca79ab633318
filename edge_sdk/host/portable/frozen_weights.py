"""Let every product read a frozen weight matrix as stored, so a device holds it once.

The exported forward pass multiplies by ``Transpose(W)`` (how ``nn.Linear`` exports), and the gradient of
the activations multiplies by ``W`` again through the gradient builder's own Transpose. ONNX Runtime folds
each transposed constant into a second full copy of the matrix when it loads the graph, and prepacks both:
the SmolLM2-135M training step session held 1,247 MiB for 513 MiB of weights. Here a product that needs ``Wᵀ``
becomes ``Gemm(A, W, transB=1)`` (standard ONNX, which reads ``W`` transposed without a copy), one that
needs ``W`` reads it directly, and the Transposes of frozen weights disappear.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edge_sdk.graph import wiring
from edge_sdk.graph.attributes import attribute
from edge_sdk.graph.frozen import frozen_source


def read_frozen_weights_in_place(model: onnx.ModelProto, frozen: set[str]) -> int:
    """Rewrite ``model`` in place (see the module docstring); return how many products were rewired.

    The Transposes that only served the rewired products are left for ``prune_unused`` to remove.

    ``frozen`` names the initializers that are constants of the graph (never a trained parameter, whose
    value changes every step)."""
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer if init.name in frozen}
    producers = wiring.producers(graph.node)
    nodes: list[onnx.NodeProto] = []
    rewired = 0
    constants: dict[tuple[str, tuple[int, ...]], str] = {}

    def constant(value: list[int], hint: str) -> str:
        key = (hint, tuple(value))
        if key not in constants:
            name = f"frozen_weights/{hint}_{len(constants)}"
            nodes.append(helper.make_node("Constant", [], [name], name=name,
                                          value=numpy_helper.from_array(np.asarray(value, np.int64), name)))
            constants[key] = name
        return constants[key]

    for node in graph.node:
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
            nodes.append(node)
            continue
        source = frozen_source(node.input[1], producers, initializers)
        if source is None or source[0] == node.input[1]:
            nodes.append(node)  # not a frozen weight, or already read as stored
            continue
        weight, transposed = source
        rewired += 1
        if node.op_type == "Gemm":
            flip = transposed != bool(attribute(node, "transB", 0))
            gemm = helper.make_node("Gemm", [node.input[0], weight, *node.input[2:]], list(node.output), name=node.name)
            gemm.attribute.extend(a for a in node.attribute if a.name != "transB")
            gemm.attribute.append(helper.make_attribute("transB", int(flip)))
            nodes.append(gemm)
            continue
        if not transposed:
            nodes.append(helper.make_node("MatMul", [node.input[0], weight], list(node.output), name=node.name))
            continue
        # A [..., K] x Wᵀ (W is [N, K]): flatten A's leading axes, Gemm with transB, restore them.
        rows, columns = (int(d) for d in initializers[weight].dims)
        stem = node.name or node.output[0]
        a, output = node.input[0], node.output[0]
        nodes += [
            helper.make_node("Reshape", [a, constant([-1, columns], "rows_by_k")], [f"{stem}.2d"],
                             name=f"{stem}.flatten"),
            helper.make_node("Gemm", [f"{stem}.2d", weight], [f"{stem}.gemm"], name=f"{stem}.gemm", transB=1),
            helper.make_node("Shape", [a], [f"{stem}.shape"], name=f"{stem}.shape"),
            helper.make_node("Slice", [f"{stem}.shape", constant([0], "zero"), constant([-1], "minus_one")],
                             [f"{stem}.leading"], name=f"{stem}.leading"),
            helper.make_node("Concat", [f"{stem}.leading", constant([rows], "n")], [f"{stem}.out_shape"],
                             name=f"{stem}.out_shape", axis=0),
            helper.make_node("Reshape", [f"{stem}.gemm", f"{stem}.out_shape"], [output], name=f"{stem}.restore"),
        ]
    if rewired:
        del graph.node[:]
        graph.node.extend(nodes)
    return rewired

