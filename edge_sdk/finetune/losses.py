"""A task's declarative loss (``edge_sdk.tasks.losses.LossGraph``) computed in PyTorch, node by node, so host
fine-tuning minimises exactly what the bundle's training graph minimises on the device, for every task,
without a second hand-written copy of each loss."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from edge_sdk.errors import ConfigError
from edge_sdk.tasks.losses import LossGraph, LossNode


def _softmax_cross_entropy(node: LossNode, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    # ONNX's SoftmaxCrossEntropyLoss: classes on axis 1, mean over the targets that are not ignore_index.
    if node.attributes.get("reduction", "mean") != "mean":
        raise ConfigError(f"loss node {node.outputs[0]}: only reduction 'mean' is supported on the host")
    ignore = node.attributes.get("ignore_index")
    return F.cross_entropy(scores.float(), labels.long(), ignore_index=-100 if ignore is None else int(ignore))


def _reduce_mean(node: LossNode, value: torch.Tensor) -> torch.Tensor:
    axes = node.attributes.get("axes")
    keep = bool(node.attributes.get("keepdims", 1))
    if axes is None:
        return value.mean() if not keep else value.mean().reshape([1] * value.dim())
    return value.mean(dim=tuple(axes), keepdim=keep)


_OPS: dict[str, Callable[..., torch.Tensor]] = {
    "SoftmaxCrossEntropyLoss": _softmax_cross_entropy,
    "Reshape": lambda _node, value, shape: value.reshape([int(d) for d in shape.tolist()]),
    "Add": lambda _node, a, b: a + b,
    "Sub": lambda _node, a, b: a - b,
    "Mul": lambda _node, a, b: a * b,
    "Div": lambda _node, a, b: a / b,
    "Neg": lambda _node, a: -a,
    "Relu": lambda _node, a: torch.relu(a),
    "Exp": lambda _node, a: torch.exp(a),
    "Log": lambda _node, a: torch.log(a),
    "Sigmoid": lambda _node, a: torch.sigmoid(a),
    "ReduceMean": _reduce_mean,
    "ReduceSum": lambda node, a: a.sum() if node.attributes.get("axes") is None else a.sum(
        dim=tuple(node.attributes["axes"]), keepdim=bool(node.attributes.get("keepdims", 1))),
}


def check_loss(loss: LossGraph) -> None:
    """ConfigError naming a loss op the host cannot compute (before any training starts)."""
    unknown = sorted({node.op_type for node in loss.nodes if node.op_type not in _OPS})
    if unknown:
        raise ConfigError(f"the task's loss uses {', '.join(unknown)}, which host fine-tuning does not compute; "
                          f"supported: {', '.join(sorted(_OPS))}")


def task_loss(loss: LossGraph, values: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """The scalar loss of ``loss`` over ``values`` (the task's outputs and targets by name), and how many terms
    its mean is over: the targets the first cross-entropy counts (those not ignored: a language model's real
    tokens), or the elements the first mean reduces. Ranks that split a batch weigh their losses by it, so the
    mean over the whole batch is the one process's mean even when ranks hold different numbers of tokens."""
    env = dict(values)
    device = next(iter(values.values())).device
    for name, constant in loss.constants.items():
        env[name] = torch.from_numpy(constant.copy()).to(device)
    terms = None
    for node in loss.nodes:
        operands = [env[name] for name in node.inputs]
        env[node.outputs[0]] = _OPS[node.op_type](node, *operands)
        if terms is None and node.op_type == "SoftmaxCrossEntropyLoss":
            ignore = node.attributes.get("ignore_index")
            terms = int((operands[1] != ignore).sum()) if ignore is not None else int(operands[1].numel())
        elif terms is None and node.op_type == "ReduceMean":
            terms = int(operands[0].numel() // env[node.outputs[0]].numel())
    return env[loss.output].reshape(()), terms if terms is not None else 1
