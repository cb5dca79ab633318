"""Assemble `train_step(batch, params, optimizer state) -> (loss, new params, new state)`.

Why lower ORT's training graph rather than write our own autodiff: the gradient graph is the one the
`ort-training` backend runs, so the two backends compute the same step by construction, and each
lowering is a small formula that is unit-tested against the ORT kernel it replaces.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from edge_sdk.errors import ExportError
from edge_sdk.graph.attributes import attributes as attributes_of
from edge_sdk.graph.prune import prune_unused
from edge_sdk.host.portable.frozen_weights import read_frozen_weights_in_place
from edge_sdk.host.portable.lowering import LoweringContext, lower_node, unsupported_ops

OPSET = 14
STEP_INPUT = "optimizer.step"
LEARNING_RATE_INPUT = "optimizer.learning_rate"
STEP_OUTPUT = "optimizer.step.updated"
_ACCUMULATOR = ("com.microsoft", "InPlaceAccumulatorV2")


def first_moment(name: str) -> str:
    return f"{name}.adam_m"


def second_moment(name: str) -> str:
    return f"{name}.adam_v"


def updated(name: str) -> str:
    return f"{name}.updated"


@dataclass(frozen=True)
class AdamWSettings:
    """AdamW as ONNX Runtime's training artifacts define it (Hugging Face mode: bias correction folded
    into the learning rate, decoupled weight decay applied after the update)."""

    beta1: float = 0.9
    beta2: float = 0.999
    epsilon: float = 1e-6
    weight_decay: float = 0.0

    @classmethod
    def from_optimizer_model(cls, model: onnx.ModelProto) -> AdamWSettings:
        for node in model.graph.node:
            if node.op_type == "AdamWOptimizer":
                attributes = attributes_of(node)
                if attributes.get("adam_mode", 0) != 1 or attributes.get("correct_bias", 1) != 1:
                    raise ExportError(f"unsupported AdamW variant in the optimizer graph: {attributes}")
                return cls(beta1=attributes.get("alpha", 0.9), beta2=attributes.get("beta", 0.999),
                           epsilon=attributes.get("epsilon", 1e-8), weight_decay=attributes.get("weight_decay", 0.0))
        raise ExportError("the optimizer graph has no AdamWOptimizer node")


def _replace_accumulators(graph: onnx.GraphProto) -> dict[str, str]:
    """Drop gradient accumulation: one step uses the gradient itself. Returns {param: gradient tensor}."""
    gradients = {}
    kept = []
    for node in graph.node:
        if (node.domain, node.op_type) == _ACCUMULATOR:
            gradient = node.input[1]
            gradients[gradient.removesuffix("_grad")] = gradient
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    return gradients


def _is_standard(node: onnx.NodeProto) -> bool:
    if node.domain not in ("", "ai.onnx"):
        return False
    try:
        onnx.defs.get_schema(node.op_type, max_inclusive_version=OPSET, domain="")
    except onnx.defs.SchemaError:
        return False
    return True


class _Ranks:
    """Tensor ranks for lowerings that need them, from ONNX shape inference.

    Inference cannot see through contrib operators, so on a miss it is re-run over the graph as lowered
    so far: each lowered prefix is standard ONNX, which lets shapes flow further down the graph.
    """

    def __init__(self, model: onnx.ModelProto) -> None:
        self._model = model
        self._ranks: dict[str, int] = {}
        self.nodes: list[onnx.NodeProto] = list(model.graph.node)
        self._refresh()

    def _refresh(self) -> None:
        probe = onnx.ModelProto()
        probe.CopyFrom(self._model)
        del probe.graph.node[:]
        probe.graph.node.extend(self.nodes)
        inferred = shape_inference.infer_shapes(probe, strict_mode=False)
        for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
            if value.type.tensor_type.HasField("shape"):
                self._ranks[value.name] = len(value.type.tensor_type.shape.dim)
        for init in inferred.graph.initializer:
            self._ranks[init.name] = len(init.dims)

    def __call__(self, name: str) -> int | None:
        if name not in self._ranks:
            self._refresh()
        return self._ranks.get(name)


def _lower(model: onnx.ModelProto) -> None:
    """Replace every non-standard node by its standard-ONNX lowering, in graph order."""
    graph = model.graph
    ranks = _Ranks(model)
    context = LoweringContext(rank_of=ranks, prefix="portable")
    original = list(graph.node)
    lowered: list[onnx.NodeProto] = []
    for index, node in enumerate(original):
        before = len(context.nodes)
        if lower_node(node, context):
            lowered.extend(context.nodes[before:])
        elif _is_standard(node):
            lowered.append(node)
        else:
            raise ExportError(f"no lowering for {node.domain or 'ai.onnx'}:{node.op_type} (node {node.name!r})")
        ranks.nodes = lowered + original[index + 1:]
    del graph.node[:]
    graph.node.extend(lowered)


def _append_adamw(graph: onnx.GraphProto, trainable: list[str], gradients: dict[str, str],
                  settings: AdamWSettings) -> None:
    """Per parameter: m, v moving averages; w -= lr_t * m / (sqrt(v) + eps); w -= lr * wd * w."""
    def const(name: str, value) -> str:
        graph.node.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(
            np.asarray(value, dtype=np.float32), name)))
        return name

    b1, b2 = const("adamw.beta1", settings.beta1), const("adamw.beta2", settings.beta2)
    one_minus_b1, one_minus_b2 = const("adamw.1-beta1", 1 - settings.beta1), const("adamw.1-beta2", 1 - settings.beta2)
    one, eps = const("adamw.one", 1.0), const("adamw.eps", settings.epsilon)
    decay = const("adamw.weight_decay", settings.weight_decay)
    graph.node.append(helper.make_node("Constant", [], ["adamw.step_one"],
                                       value=numpy_helper.from_array(np.asarray(1, np.int64), "adamw.step_one")))
    nodes = [
        helper.make_node("Add", [STEP_INPUT, "adamw.step_one"], [STEP_OUTPUT]),
        helper.make_node("Cast", [STEP_OUTPUT], ["adamw.t"], to=onnx.TensorProto.FLOAT),
        helper.make_node("Pow", [b1, "adamw.t"], ["adamw.b1^t"]),
        helper.make_node("Pow", [b2, "adamw.t"], ["adamw.b2^t"]),
        helper.make_node("Sub", [one, "adamw.b1^t"], ["adamw.alpha_correction"]),
        helper.make_node("Sub", [one, "adamw.b2^t"], ["adamw.beta_correction"]),
        helper.make_node("Sqrt", ["adamw.beta_correction"], ["adamw.sqrt_beta_correction"]),
        helper.make_node("Mul", [LEARNING_RATE_INPUT, "adamw.sqrt_beta_correction"], ["adamw.lr_scaled"]),
        helper.make_node("Div", ["adamw.lr_scaled", "adamw.alpha_correction"], ["adamw.lr_corrected"]),
        helper.make_node("Mul", [LEARNING_RATE_INPUT, decay], ["adamw.lr_decay"]),
    ]
    for index, name in enumerate(trainable):
        g, m, v, p = gradients[name], first_moment(name), second_moment(name), name
        t = f"adamw.{index}."
        nodes += [
            helper.make_node("Mul", [b1, m], [t + "b1m"]),
            helper.make_node("Mul", [one_minus_b1, g], [t + "g1"]),
            helper.make_node("Add", [t + "b1m", t + "g1"], [updated(m)]),
            helper.make_node("Mul", [g, g], [t + "gg"]),
            helper.make_node("Mul", [b2, v], [t + "b2v"]),
            helper.make_node("Mul", [one_minus_b2, t + "gg"], [t + "g2"]),
            helper.make_node("Add", [t + "b2v", t + "g2"], [updated(v)]),
            helper.make_node("Sqrt", [updated(v)], [t + "sqrt_v"]),
            helper.make_node("Add", [t + "sqrt_v", eps], [t + "denominator"]),
            helper.make_node("Div", [updated(m), t + "denominator"], [t + "direction"]),
            helper.make_node("Mul", ["adamw.lr_corrected", t + "direction"], [t + "update"]),
            helper.make_node("Sub", [p, t + "update"], [t + "stepped"]),
            helper.make_node("Mul", ["adamw.lr_decay", t + "stepped"], [t + "decayed"]),
            helper.make_node("Sub", [t + "stepped", t + "decayed"], [updated(p)]),
        ]
    graph.node.extend(nodes)


def build_train_step(training_model: onnx.ModelProto, optimizer_model: onnx.ModelProto,
                     frozen_values: dict[str, onnx.TensorProto], trainable: list[str],
                     batch_inputs: list[str]) -> onnx.ModelProto:
    """The portable step graph. Frozen parameters become initializers taken from ``frozen_values``."""
    model = onnx.ModelProto()
    model.CopyFrom(training_model)
    graph = model.graph
    loss_output = graph.output[0].name  # generate_artifacts puts the loss first
    unknown = [op for op in unsupported_ops(graph) if op != "com.microsoft:InPlaceAccumulatorV2"]
    if unknown:
        raise ExportError(
            "the training graph uses operators the portable step cannot express in standard ONNX: "
            + ", ".join(sorted(set(unknown)))
        )
    gradients = _replace_accumulators(graph)
    missing = [name for name in trainable if name not in gradients]
    if missing:
        raise ExportError(f"the training graph computes no gradient for: {', '.join(missing[:5])}")
    _lower(model)
    settings = AdamWSettings.from_optimizer_model(optimizer_model)
    _append_adamw(graph, trainable, gradients, settings)

    inputs = {value.name: value for value in graph.input}
    shapes = {name: list(frozen_values[name].dims) for name in frozen_values}
    trainable_inputs = [inputs[name] for name in trainable]
    new_inputs = [inputs[name] for name in batch_inputs]
    new_inputs += trainable_inputs
    for value in trainable_inputs:
        for moment in (first_moment(value.name), second_moment(value.name)):
            new_inputs.append(helper.make_tensor_value_info(moment, onnx.TensorProto.FLOAT,
                                                            [d.dim_value for d in value.type.tensor_type.shape.dim]))
    new_inputs.append(helper.make_tensor_value_info(STEP_INPUT, onnx.TensorProto.INT64, []))
    new_inputs.append(helper.make_tensor_value_info(LEARNING_RATE_INPUT, onnx.TensorProto.FLOAT, []))
    frozen = [name for name in inputs if name not in set(batch_inputs) | set(trainable)
              and not name.endswith("_grad.accumulation.buffer") and name != "lazy_reset_grad"]
    absent = [name for name in frozen if name not in frozen_values]
    if absent:
        raise ExportError(f"no values for frozen parameters {', '.join(absent[:5])}")
    del graph.input[:]
    graph.input.extend(new_inputs)
    graph.initializer.extend(frozen_values[name] for name in frozen)

    outputs = {value.name: value for value in graph.output}
    new_outputs = [outputs[loss_output]]
    for value in trainable_inputs:
        for name in (value.name, first_moment(value.name), second_moment(value.name)):
            shape = shapes.get(name) or [d.dim_value for d in value.type.tensor_type.shape.dim]
            new_outputs.append(helper.make_tensor_value_info(updated(name), onnx.TensorProto.FLOAT, shape))
    new_outputs.append(helper.make_tensor_value_info(STEP_OUTPUT, onnx.TensorProto.INT64, []))
    del graph.output[:]
    graph.output.extend(new_outputs)
    graph.name = "train_step"

    # One copy of each frozen matrix on the device: products read it as stored (see frozen_weights.py); the
    # pruning below removes the Transposes they no longer read.
    read_frozen_weights_in_place(model, set(frozen))
    prune_unused(graph)
    del model.opset_import[:]
    model.opset_import.extend([helper.make_opsetid("", OPSET)])
    model.ir_version = min(model.ir_version, 8)
    return model


def state_names(trainable: list[str], model: onnx.ModelProto) -> dict:
    """How the device binds the step graph: every state tensor's input and output names."""
    state = [*trainable, *map(first_moment, trainable), *map(second_moment, trainable)]
    return {
        "loss": model.graph.output[0].name,
        "step": STEP_INPUT,
        "step_updated": STEP_OUTPUT,
        "learning_rate": LEARNING_RATE_INPUT,
        "first_moment": {name: first_moment(name) for name in trainable},
        "second_moment": {name: second_moment(name) for name in trainable},
        "updated": {name: updated(name) for name in state},
    }
