"""Read a node's attributes as Python values."""

from __future__ import annotations

from typing import Any

import onnx
from onnx import helper


def _value(entry: onnx.AttributeProto) -> Any:
    value = helper.get_attribute_value(entry)
    # Strings come back as bytes; every caller compares them with str literals.
    return value.decode() if isinstance(value, bytes) else value


def attribute(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    """A node attribute's value (strings decoded), or ``default`` when the node does not set it."""
    for entry in node.attribute:
        if entry.name == name:
            return _value(entry)
    return default


def attributes(node: onnx.NodeProto) -> dict[str, Any]:
    """Every attribute the node sets, by name (strings decoded)."""
    return {entry.name: _value(entry) for entry in node.attribute}
