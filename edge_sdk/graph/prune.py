"""Remove what no graph output depends on."""

from __future__ import annotations

import onnx

from edge_sdk.graph.nodes import node_inputs


def prune_unused(graph: onnx.GraphProto) -> None:
    """Remove the nodes and initializers no graph output depends on (the ratio constants of removed
    Dropouts, shape probes of traced code, dead gradient paths): ONNX Runtime would warn about each one
    every time a device opens the graph. Nodes are stored in topological order."""
    needed = {output.name for output in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output):
            kept.append(node)
            needed |= node_inputs(node)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    initializers = [init for init in graph.initializer if init.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
