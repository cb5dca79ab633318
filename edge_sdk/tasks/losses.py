"""Training losses as small declarative ONNX graphs over a task's outputs and target inputs.

Device-safe (numpy only): a loss here is data, and the host turns it into an ONNX Runtime ``onnxblock``
block (``edge_sdk.host.losses``) when it builds the training artifacts. Every op used has a gradient in
ONNX Runtime training and a lowering in the portable step (``edge_sdk.host.portable.lowering``).
Node inputs name the task's outputs (``logits``, ``start_logits`` …) and targets (``labels`` …) directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_sdk.tasks.base import IGNORE_INDEX


@dataclass(frozen=True)
class LossNode:
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LossGraph:
    """Nodes (in order), their constant inputs, and the name of the scalar loss they compute; ``shapes``
    declares intermediate shapes ONNX Runtime's gradient builder cannot infer on its own."""

    nodes: tuple[LossNode, ...]
    output: str
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    shapes: dict[str, tuple[str | int, ...]] = field(default_factory=dict)


def _softmax_cross_entropy(scores: str, labels: str, out: str, ignore_index: int | None) -> LossNode:
    attributes: dict[str, Any] = {"reduction": "mean"}
    if ignore_index is not None:
        attributes["ignore_index"] = ignore_index
    return LossNode("SoftmaxCrossEntropyLoss", (scores, labels), (out, out + "_log_prob"), attributes)


def cross_entropy(_classes: int) -> LossGraph:
    """Mean cross-entropy of [batch, classes] ``logits`` against int64 ``labels`` [batch]."""
    return LossGraph((_softmax_cross_entropy("logits", "labels", "loss.value", IGNORE_INDEX),), "loss.value")


def token_cross_entropy(classes: int) -> LossGraph:
    """Mean cross-entropy over tokens: [batch, sequence, classes] ``logits`` are flattened first (ONNX's
    SoftmaxCrossEntropyLoss wants classes on axis 1); IGNORE_INDEX targets carry no loss."""
    return LossGraph(
        nodes=(LossNode("Reshape", ("logits", "loss.scores_shape"), ("loss.scores_flat",)),
               LossNode("Reshape", ("labels", "loss.labels_shape"), ("loss.labels_flat",)),
               _softmax_cross_entropy("loss.scores_flat", "loss.labels_flat", "loss.value", IGNORE_INDEX)),
        output="loss.value",
        constants={"loss.scores_shape": np.asarray([-1, classes], np.int64),
                   "loss.labels_shape": np.asarray([-1], np.int64)},
        shapes={"loss.scores_flat": ("tokens", classes)},
    )


def span_cross_entropy(_classes: int) -> LossGraph:
    """Extractive QA: the mean of the start- and end-position cross-entropies (as transformers computes it)."""
    return LossGraph(
        nodes=(_softmax_cross_entropy("start_logits", "start_positions", "loss.start", None),
               _softmax_cross_entropy("end_logits", "end_positions", "loss.end", None),
               LossNode("Add", ("loss.start", "loss.end"), ("loss.span_sum",)),
               LossNode("Mul", ("loss.span_sum", "loss.half"), ("loss.span_mean",))),
        output="loss.span_mean",
        constants={"loss.half": np.asarray(0.5, np.float32)},
    )
