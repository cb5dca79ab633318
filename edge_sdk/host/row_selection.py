"""Compute only the sequence positions a graph's outputs read.

A sequence-classification head reads one position of the last hidden states (BERT's pooler takes
``hidden[:, 0]``); the exporter still computes the last layer's output projection, feed-forward block and
layer norms for every position, then gathers one row. Those ops act on each position on its own, so the
row selection can move above them: for MiniLM-L6 at 128 tokens that skips about a seventh of the matrix
arithmetic of a forward pass, and the same of its backward pass once the training graphs are built from it.

The rewrite moves a ``Gather`` along the sequence axis (a constant index, as the exporter writes ``[:, k]``)
above its producer whenever that producer is position-wise and the gathered tensor feeds nothing else. It
stops at anything that mixes positions (attention's ``Reshape``/``MatMul`` of the context, a tensor also read
by another node) and leaves a cheap ``Gather`` there. Shapes come from ONNX shape inference; an input whose
sequence dimension is unknown stops the move rather than risk a wrong broadcast.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edge_sdk.graph import wiring
from edge_sdk.graph.attributes import attribute

# Ops whose output position p depends only on position p of their inputs (with numpy broadcasting).
_ELEMENTWISE = frozenset({
    "Abs", "Add", "Cast", "Clip", "Div", "Dropout", "Elu", "Erf", "Exp", "Gelu", "HardSigmoid", "Identity",
    "LeakyRelu", "Log", "Max", "Min", "Mish", "Mul", "Neg", "Pow", "Reciprocal", "Relu", "Sigmoid", "Sign",
    "Softplus", "Sqrt", "Sub", "Tanh", "Where",
})
# Ops that reduce or normalize over the last axis only (checked per node below).
_LAST_AXIS = frozenset({"LayerNormalization", "Softmax", "LogSoftmax", "ReduceMean", "ReduceSum", "ReduceMax",
                        "ReduceMin", "ReduceL2", "ReduceSumSquare"})
_SEQUENCE_AXIS = 1


_FLOAT_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                          onnx.TensorProto.BFLOAT16})


def _without_float_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph with its float initializers declared as inputs of their type and shape: all that shape
    inference reads of them, without serializing the weights (integer initializers keep their values, which
    shape inference reads as Reshape targets and the like)."""
    light = onnx.ModelProto(ir_version=model.ir_version)
    light.opset_import.extend(model.opset_import)
    graph = light.graph
    graph.name = model.graph.name
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    graph.value_info.extend(model.graph.value_info)
    for init in model.graph.initializer:
        if init.data_type in _FLOAT_TYPES:
            graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
        else:
            graph.initializer.append(init)
    return light


class _Shapes:
    """Ranks and dimensions of the graph's tensors, from shape inference plus initializers and constants."""

    def __init__(self, model: onnx.ModelProto) -> None:
        inferred = onnx.shape_inference.infer_shapes(_without_float_weights(model))
        self._dims: dict[str, list] = {}
        graph = inferred.graph
        for value in [*graph.input, *graph.output, *graph.value_info]:
            kind = value.type.tensor_type
            if kind.HasField("shape"):
                self._dims[value.name] = [d.dim_param or (d.dim_value if d.HasField("dim_value") else None)
                                          for d in kind.shape.dim]
        for init in model.graph.initializer:
            self._dims[init.name] = list(init.dims)
        for node in model.graph.node:
            value = attribute(node, "value") if node.op_type == "Constant" else None
            if value is not None:
                self._dims[node.output[0]] = list(value.dims)

    def dims(self, name: str) -> list | None:
        return self._dims.get(name)

    def record(self, name: str, dims: list) -> None:
        """The shape of a tensor the rewrite adds."""
        self._dims[name] = dims


def _constant_values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The integer constants (gather indices, reduction axes): the only values the rewrite reads."""
    integers = (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer
              if init.data_type in integers}
    for node in model.graph.node:
        tensor = attribute(node, "value") if node.op_type == "Constant" else None
        if tensor is not None and tensor.data_type in integers:
            values[node.output[0]] = numpy_helper.to_array(tensor)
    return values


class _Rewriter:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.graph = model.graph
        self.shapes = _Shapes(model)
        self.constants = _constant_values(model)
        self.outputs = {output.name for output in self.graph.output}
        self.opset = next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), 14)
        self.moved = 0
        self.reshaped: set[str] = set()  # outputs whose shape changed: their inferred value_info is stale
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"row_selection/{hint}_{self._count}"

    def _selected_index(self, node: onnx.NodeProto) -> int | None:
        """The constant position a sequence-axis Gather reads, or None when ``node`` is no such Gather."""
        if node.op_type != "Gather" or len(node.input) != 2:
            return None
        dims = self.shapes.dims(node.input[0])
        if dims is None or len(dims) < 2:
            return None
        axis = attribute(node, "axis", 0)
        if axis < 0:
            axis += len(dims)
        index = self.constants.get(node.input[1])
        if axis != _SEQUENCE_AXIS or index is None or index.size != 1 or index.dtype.kind not in "iu":
            return None
        if isinstance(dims[_SEQUENCE_AXIS], int) and dims[_SEQUENCE_AXIS] <= 1:
            return None  # already one position
        return int(index.reshape(-1)[0])

    def _row_inputs(self, node: onnx.NodeProto, out_dims: list, index: int,
                    readers: dict[str, list[onnx.NodeProto]]) -> dict[int, int] | None:
        """Input index -> the axis of that input that carries the output's positions; None if ``node`` mixes
        positions or a shape is unknown.

        Shape inference names unknown dimensions apart (``unk__12`` and ``unk__15`` may be the same length), so
        an input axis of unknown length counts as carrying the positions when ``index`` is the first or the last
        position: should that axis be 1 at run time (broadcast), gathering it yields the same single row.
        """
        rank = len(out_dims)
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            return None
        if any(name and (readers[name] or name in self.outputs) for name in node.output[1:]):
            return None  # a second output (Dropout's mask) that something reads would change shape too
        if (op in _LAST_AXIS or op == "MatMul") and rank < 3:
            return None  # the selected axis would be one the op reduces or multiplies over
        if op in _LAST_AXIS:
            data = self.shapes.dims(node.input[0])
            if data is None:
                return None
            rank = len(data)  # a reduction without keepdims has one axis fewer than its input
            axis = attribute(node, "axis", -1 if op not in ("Softmax", "LogSoftmax") or self.opset >= 13 else 1)
            axes = attribute(node, "axes")
            if axes is None and op.startswith("Reduce") and len(node.input) > 1 and node.input[1]:
                value = self.constants.get(node.input[1])
                axes = None if value is None else [int(v) for v in value.reshape(-1)]
            if op.startswith("Reduce"):
                if not axes or [a % rank for a in axes] != [rank - 1]:
                    return None
            elif axis % rank != rank - 1:
                return None
            return {0: _SEQUENCE_AXIS}
        if op == "MatMul":
            weight = self.shapes.dims(node.input[1])
            data = self.shapes.dims(node.input[0])
            if weight is None or len(weight) != 2 or data is None or len(data) != rank:
                return None
            return {0: _SEQUENCE_AXIS}
        if op not in _ELEMENTWISE:
            return None
        carried = {}
        for position, name in enumerate(node.input):
            if not name:
                continue
            dims = self.shapes.dims(name)
            if dims is None:
                return None
            if len(dims) > rank:
                return None
            axis = len(dims) - (rank - _SEQUENCE_AXIS)  # numpy broadcasting aligns the last axes
            if axis < 0 or dims[axis] == 1:
                continue  # broadcast over the positions
            if dims[axis] != out_dims[_SEQUENCE_AXIS] and index not in (0, -1):
                return None
            carried[position] = axis
        return carried

    def _index_constant(self, index: int) -> str:
        name = self._name("index")
        self.graph.node.append(helper.make_node(
            "Constant", [], [name], name=self._name("Constant"),
            value=numpy_helper.from_array(np.asarray([index], dtype=np.int64), name=name)))
        return name

    def run(self) -> int:
        # Repeat until nothing moves: each move may expose a new Gather above a position-wise node.
        while self._move_one():
            pass
        _restore_topological_order(self.graph)
        return self.moved

    def _merge_duplicates(self) -> bool:
        """Two gathers of the same positions of one tensor become one (a diamond such as a decomposed layer
        norm reads its input twice), so that the tensor has a single reader again and the move can go on."""
        seen: dict[tuple, str] = {}
        for node in self.graph.node:
            if node.op_type != "Gather" or len(node.input) != 2 or node.output[0] in self.outputs:
                continue
            index = self.constants.get(node.input[1])
            if index is None:
                continue
            key = (node.input[0], attribute(node, "axis", 0), index.shape, tuple(index.reshape(-1).tolist()))
            if key not in seen:
                seen[key] = node.output[0]
                continue
            kept, duplicate = seen[key], node.output[0]
            for reader in self.graph.node:
                for position, name in enumerate(reader.input):
                    if name == duplicate:
                        reader.input[position] = kept
            self.graph.node.remove(node)
            return True
        return False

    def _move_one(self) -> bool:
        if self._merge_duplicates():
            return True
        consumers = wiring.consumers(self.graph.node)
        producers = wiring.producers(self.graph.node)
        for gather in list(self.graph.node):
            index = self._selected_index(gather)
            if index is None:
                continue
            source = gather.input[0]
            producer = producers.get(source)
            out_dims = self.shapes.dims(source)
            if (producer is None or producer.output[0] != source or len(consumers[source]) != 1
                    or source in self.outputs or out_dims is None):
                continue
            carried = self._row_inputs(producer, out_dims, index, consumers)
            if not carried:
                continue
            self._sink(gather, producer, carried, index)
            return True
        return False

    def _sink(self, gather: onnx.NodeProto, producer: onnx.NodeProto, carried: dict[int, int], index: int) -> None:
        """Replace ``producer -> gather`` by ``gather(inputs) -> producer'`` (keeping the position axis, length
        1) and a final gather of position 0, which the next round may move further up."""
        index_name = self._index_constant(index)
        new_inputs = list(producer.input)
        for position, axis in carried.items():
            selected = self._name("selected")
            self.graph.node.append(helper.make_node("Gather", [producer.input[position], index_name], [selected],
                                                    name=self._name("Gather"), axis=axis))
            dims = list(self.shapes.dims(producer.input[position]))
            dims[axis] = 1
            self.shapes.record(selected, dims)
            new_inputs[position] = selected
        keeps_axis = self.constants[gather.input[1]].ndim == 1
        # A one-element index keeps the axis: the moved node writes the gather's output itself (no Identity
        # left between ops, which would hide patterns such as a layer norm from ONNX Runtime's fusions).
        rows = gather.output[0] if keeps_axis else self._name("rows")
        out_dims = list(self.shapes.dims(producer.output[0]))
        out_dims[_SEQUENCE_AXIS] = 1
        self.shapes.record(rows, out_dims)
        moved = helper.make_node(producer.op_type, new_inputs, [rows, *producer.output[1:]],
                                 name=producer.name, domain=producer.domain)
        moved.attribute.extend(producer.attribute)
        self.reshaped.update(moved.output)
        added = [moved]
        if not keeps_axis:
            # A scalar index drops the axis: take position 0 of the one-position result.
            first = self._name("first")
            self.constants[first] = np.asarray(0, dtype=np.int64)
            added += [helper.make_node("Constant", [], [first], name=self._name("Constant"),
                                       value=numpy_helper.from_array(self.constants[first], name=first)),
                      helper.make_node("Gather", [rows, first], list(gather.output), name=gather.name, axis=1)]
        kept = [node for node in self.graph.node if node is not gather and node is not producer]
        del self.graph.node[:]
        self.graph.node.extend([*kept, *added])
        self.constants[index_name] = np.asarray([index], dtype=np.int64)
        self.moved += 1


def _restore_topological_order(graph: onnx.GraphProto) -> None:
    """Nodes were appended out of order; sort them so every input is produced before it is read."""
    available = {value.name for value in graph.input} | {init.name for init in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    producers = wiring.producers(pending)
    placed: set[int] = set()

    def place(node: onnx.NodeProto) -> None:
        stack = [(node, False)]
        while stack:
            current, expanded = stack.pop()
            if id(current) in placed:
                continue
            if expanded:
                placed.add(id(current))
                ordered.append(current)
                available.update(current.output)
                continue
            stack.append((current, True))
            for name in current.input:
                if name not in available and name in producers and id(producers[name]) not in placed:
                    stack.append((producers[name], False))

    for node in pending:
        place(node)
    del graph.node[:]
    graph.node.extend(ordered)


def select_rows_early(model: onnx.ModelProto) -> int:
    """Move constant-position sequence gathers above position-wise ops (in place); return how many moves."""
    rewriter = _Rewriter(model)
    moved = rewriter.run()
    if moved:
        live = {name for node in model.graph.node for name in node.output}
        stale = [value for value in model.graph.value_info
                 if value.name not in live or value.name in rewriter.reshaped]
        for value in stale:
            model.graph.value_info.remove(value)
    return moved
