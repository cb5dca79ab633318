"""A node's inputs and outputs, and the nodes of a graph including those of its subgraphs."""

from __future__ import annotations

from collections.abc import Iterable

import onnx


def input_at(node: onnx.NodeProto, index: int) -> str | None:
    """The name of input ``index``, None when it is absent or left empty (an omitted optional input)."""
    return node.input[index] if index < len(node.input) and node.input[index] else None


def output_at(node: onnx.NodeProto, index: int) -> str | None:
    """The name of output ``index``, None when it is absent or left empty (an output nobody asked for)."""
    return node.output[index] if index < len(node.output) and node.output[index] else None


def node_inputs(node: onnx.NodeProto) -> set[str]:
    """Every tensor name the node reads: its inputs and the outer-scope names its If/Loop bodies read."""
    names = set(node.input)
    for attribute in node.attribute:
        for subgraph in [attribute.g, *attribute.graphs]:
            for inner in subgraph.node:
                names |= node_inputs(inner)
    return names


def walk_nodes(graph: onnx.GraphProto) -> Iterable[onnx.NodeProto]:
    """The graph's nodes in order, each followed by the nodes of its subgraphs (If/Loop bodies), recursively."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from walk_nodes(attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for subgraph in attribute.graphs:
                    yield from walk_nodes(subgraph)
