"""Who writes and who reads each tensor of a node list (direct inputs only, not names read in subgraphs)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import onnx


def producers(nodes: Iterable[onnx.NodeProto]) -> dict[str, onnx.NodeProto]:
    """Tensor name -> the node that outputs it. Graph inputs and initializers have no entry."""
    return {name: node for node in nodes for name in node.output}


def consumers(nodes: Iterable[onnx.NodeProto]) -> defaultdict[str, list[onnx.NodeProto]]:
    """Tensor name -> the nodes that read it, in node order; a tensor nobody reads maps to an empty list
    (a defaultdict, so callers can ask about any name)."""
    readers: defaultdict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in nodes:
        for name in node.input:
            readers[name].append(node)
    return readers
