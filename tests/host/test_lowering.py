"""Lowering of ORT training operators to standard ONNX (edge_sdk.host.portable.lowering).

Every registered lowering is checked against ONNX Runtime's own kernel (the training build has them all):
a one-node model runs in onnxruntime, the lowered standard-only model passes the ONNX checker and runs in
onnxruntime (graph optimizations off, so ORT cannot fuse it back into contrib ops) and in the ONNX reference
evaluator, and both agree with the kernel within float32 tolerance rtol = atol = 1e-5.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from edge_sdk.errors import ExportError
from edge_sdk.host.portable.lowering import LOWERINGS, LoweringContext, lower_node, unsupported_ops

RTOL = 1e-5
ATOL = 1e-5
MS = "com.microsoft"
KERNEL_OPSETS = [helper.make_opsetid("", 14), helper.make_opsetid(MS, 1)]
PORTABLE_OPSETS = [helper.make_opsetid("", 14)]


@dataclasses.dataclass
class Case:
    node: onnx.NodeProto
    feeds: dict[str, np.ndarray]


def _node(op_type: str, inputs: list[str], outputs: list[str], domain: str = MS, **attributes) -> onnx.NodeProto:
    return helper.make_node(op_type, inputs, outputs, domain=domain, name=f"test_{op_type}", **attributes)


def _value_info(name: str, array: np.ndarray) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(array.dtype), array.shape)


def _model(nodes: list[onnx.NodeProto], feeds: dict, outputs: list[onnx.ValueInfoProto], opsets) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [_value_info(k, v) for k, v in feeds.items()], outputs)
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8  # what onnxruntime 1.19 reads
    return model


def _session(model: onnx.ModelProto, optimize: bool = True) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _run_op(op_type: str, inputs: dict[str, np.ndarray | None], n_outputs: int = 1, domain: str = MS, **attributes):
    """Run one ORT kernel; None inputs are omitted optional inputs."""
    names = [name if value is not None else "" for name, value in inputs.items()]
    outputs = [f"out{i}" for i in range(n_outputs)]
    feeds = {name: value for name, value in inputs.items() if value is not None}
    node = _node(op_type, names, outputs, domain, **attributes)
    model = _model([node], feeds, [onnx.ValueInfoProto(name=o) for o in outputs], KERNEL_OPSETS)
    return _session(model).run(None, feeds)


def _floats(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _lower(case: Case, expected: dict[str, np.ndarray]) -> onnx.ModelProto:
    # rank_of answers as shape inference would: from the inputs and from the kernel's outputs.
    ranks = {name: value.ndim for name, value in case.feeds.items()}
    ranks.update({name: value.ndim for name, value in expected.items()})
    context = LoweringContext(ranks.get, prefix="test")
    assert lower_node(case.node, context)
    outputs = [_value_info(name, value) for name, value in expected.items()]
    return _model(context.nodes, case.feeds, outputs, PORTABLE_OPSETS)


def _check_case(case: Case) -> None:
    out_names = [name for name in case.node.output if name]
    kernel_model = _model([case.node], case.feeds, [onnx.ValueInfoProto(name=o) for o in out_names], KERNEL_OPSETS)
    expected = dict(zip(out_names, _session(kernel_model).run(out_names, case.feeds), strict=True))

    lowered = _lower(case, expected)
    onnx.checker.check_model(lowered, full_check=True)
    assert {node.domain for node in lowered.graph.node} <= {"", "ai.onnx"}
    assert [(o.domain, o.version) for o in lowered.opset_import] == [("", 14)]

    by_ort = _session(lowered, optimize=False).run(out_names, case.feeds)
    by_reference = ReferenceEvaluator(lowered).run(out_names, case.feeds)
    for name, ort_value, reference_value in zip(out_names, by_ort, by_reference, strict=True):
        want = expected[name]
        for got in (ort_value, np.asarray(reference_value)):
            assert got.dtype == want.dtype, name
            assert got.shape == want.shape, name
            np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=f"{case.node.op_type}:{name}")


# --------------------------------------------------------------------------------------------- builders

BUILDERS: dict[tuple[str, str], Callable[[np.random.Generator], list[Case]]] = {}


def builder(domain: str, op_type: str):
    def register(function):
        BUILDERS[(domain, op_type)] = function
        return function

    return register


SHAPES = [(5,), (3, 7), (2, 3, 4)]


@builder(MS, "Gelu")
def _gelu(rng):
    return [Case(_node("Gelu", ["X"], ["Y"]), {"X": _floats(rng, *s, scale=3)}) for s in SHAPES]


@builder(MS, "FastGelu")
def _fast_gelu(rng):
    cases = [Case(_node("FastGelu", ["X"], ["Y"]), {"X": _floats(rng, *s, scale=3)}) for s in SHAPES]
    cases.append(Case(_node("FastGelu", ["X", "B"], ["Y"]), {"X": _floats(rng, 2, 3, 4), "B": _floats(rng, 4)}))
    return cases


@builder(MS, "BiasGelu")
def _bias_gelu(rng):
    return [
        Case(_node("BiasGelu", ["A", "B"], ["Y"]), {"A": _floats(rng, *s, scale=3), "B": _floats(rng, s[-1])})
        for s in SHAPES
    ]


def _grad_cases(op_type: str, rng, with_bias: bool = False, **attributes) -> list[Case]:
    cases = []
    for shape in SHAPES:
        feeds = {"dY": _floats(rng, *shape), "X": _floats(rng, *shape, scale=3)}
        if with_bias:
            feeds["B"] = _floats(rng, shape[-1])
        cases.append(Case(_node(op_type, list(feeds), ["dX"], **attributes), feeds))
    return cases


@builder(MS, "GeluGrad")
def _gelu_grad(rng):
    return _grad_cases("GeluGrad", rng)


@builder(MS, "FastGeluGrad")
def _fast_gelu_grad(rng):
    return _grad_cases("FastGeluGrad", rng)


@builder(MS, "BiasGeluGrad_dX")
def _bias_gelu_grad(rng):
    return _grad_cases("BiasGeluGrad_dX", rng, with_bias=True)


@builder(MS, "BiasFastGeluGrad_dX")
def _bias_fast_gelu_grad(rng):
    return _grad_cases("BiasFastGeluGrad_dX", rng, with_bias=True)


@builder(MS, "QuickGelu")
def _quick_gelu(rng):
    cases = [Case(_node("QuickGelu", ["X"], ["Y"]), {"X": _floats(rng, *s, scale=3)}) for s in SHAPES]
    cases.append(Case(_node("QuickGelu", ["X"], ["Y"], alpha=1.3), {"X": _floats(rng, 2, 3, 4, scale=3)}))
    return cases


@builder(MS, "QuickGeluGrad")
def _quick_gelu_grad(rng):
    return _grad_cases("QuickGeluGrad", rng) + _grad_cases("QuickGeluGrad", rng, alpha=1.3)[-1:]


def _forward_output_cases(op_type: str, rng, forward: Callable[[np.ndarray], np.ndarray], **attributes):
    # These grads take the forward OUTPUT Y, so feed a genuine one.
    cases = []
    for shape in SHAPES:
        y = forward(_floats(rng, *shape, scale=2)).astype(np.float32)
        cases.append(Case(_node(op_type, ["dY", "Y"], ["dX"], **attributes), {"dY": _floats(rng, *shape), "Y": y}))
    return cases


@builder(MS, "TanhGrad")
def _tanh_grad(rng):
    return _forward_output_cases("TanhGrad", rng, np.tanh)


@builder(MS, "SigmoidGrad")
def _sigmoid_grad(rng):
    return _forward_output_cases("SigmoidGrad", rng, lambda x: 1 / (1 + np.exp(-x)))


@builder(MS, "ReluGrad")
def _relu_grad(rng):
    cases = _grad_cases("ReluGrad", rng)
    cases[-1].feeds["X"][0, 0, :2] = 0.0  # the kernel passes no gradient at exactly 0
    return cases


@builder(MS, "LeakyReluGrad")
def _leaky_relu_grad(rng):
    def leaky(x):
        return np.where(x > 0, x, 0.2 * x)

    return _forward_output_cases("LeakyReluGrad", rng, leaky, alpha=0.2)


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@builder(MS, "SoftmaxGrad_13")
def _softmax_grad(rng):
    cases = []
    for shape, axis in [((5,), None), ((3, 7), 1), ((2, 3, 4), -1), ((2, 3, 4), 1), ((2, 3, 4), 0)]:
        attrs = {} if axis is None else {"axis": axis}
        y = _run_op("Softmax", {"X": _floats(rng, *shape, scale=2)}, domain="", axis=-1 if axis is None else axis)[0]
        cases.append(Case(_node("SoftmaxGrad_13", ["dY", "Y"], ["dX"], **attrs), {"dY": _floats(rng, *shape), "Y": y}))
    return cases


@builder(MS, "LogSoftmaxGrad_13")
def _log_softmax_grad(rng):
    cases = []
    for shape, axis in [((5,), -1), ((3, 7), 1), ((2, 3, 4), 1)]:
        y = _run_op("LogSoftmax", {"X": _floats(rng, *shape, scale=2)}, domain="", axis=axis)[0]
        node = _node("LogSoftmaxGrad_13", ["dY", "Y"], ["dX"], axis=axis)
        cases.append(Case(node, {"dY": _floats(rng, *shape), "Y": y}))
    return cases


@builder(MS, "DropoutGrad")
def _dropout_grad(rng):
    def feeds(shape):
        return {"dy": _floats(rng, *shape), "mask": rng.random(shape) > 0.3}

    ratio = np.array(0.2, dtype=np.float32)
    return [
        Case(_node("DropoutGrad", ["dy", "mask"], ["dx"]), feeds((3, 7))),
        Case(_node("DropoutGrad", ["dy", "mask", "ratio"], ["dx"]), {**feeds((2, 3, 4)), "ratio": ratio}),
        Case(
            _node("DropoutGrad", ["dy", "mask", "ratio", "mode"], ["dx"]),
            {**feeds((2, 3, 4)), "ratio": ratio, "mode": np.array(True)},
        ),
    ]


@builder(MS, "Scale")
def _scale(rng):
    return [
        Case(_node("Scale", ["A", "s"], ["Y"]), {"A": _floats(rng, 3, 7), "s": np.array(0.3, dtype=np.float32)}),
        # ReduceMean's gradient divides by an int64 element count.
        Case(_node("Scale", ["A", "s"], ["Y"], scale_down=1), {"A": _floats(rng, 2, 3, 4), "s": np.array(6)}),
        Case(
            _node("Scale", ["A", "s"], ["Y"], scale_down=1),
            {"A": _floats(rng, 5), "s": np.array(3.0, dtype=np.float32)},
        ),
    ]


@builder(MS, "FusedMatMul")
def _fused_matmul(rng):
    def case(a_shape, b_shape, **attrs):
        feeds = {"A": _floats(rng, *a_shape), "B": _floats(rng, *b_shape)}
        return Case(_node("FusedMatMul", ["A", "B"], ["Y"], **attrs), feeds)

    return [
        case((3, 4), (4, 5)),
        case((2, 3, 4), (4, 5), alpha=0.5),
        case((2, 4, 3), (4, 5), transA=1),
        case((2, 3, 4), (2, 5, 4), transB=1, alpha=2.0),
        case((4, 3), (5, 4), transA=1, transB=1, transBatchA=0, transBatchB=0),
        case((2, 1, 4, 3), (3, 5, 4), transA=1, transB=1),
    ]


def _log_prob(logits: np.ndarray, labels: np.ndarray, ignore_index: int | None) -> np.ndarray:
    """log_prob as the graph gets it: the forward SoftmaxCrossEntropyLoss's second output."""
    attrs = {"reduction": "none"} | ({} if ignore_index is None else {"ignore_index": ignore_index})
    return _run_op("SoftmaxCrossEntropyLoss", {"scores": logits, "labels": labels}, 2, domain="", **attrs)[1]


@builder(MS, "SoftmaxCrossEntropyLossGrad")
def _softmax_cross_entropy_loss_grad(rng):
    def case(shape, reduction, ignore_index=None, weight=False, ignored=(), dtype=np.int64):
        n, c, *rest = shape
        labels = rng.integers(0, c, size=(n, *rest)).astype(dtype)
        for position in ignored:
            labels.flat[position] = -1 if ignore_index is None else ignore_index
        feeds = {
            "dY": _floats(rng, n, *rest) if reduction == "none" else np.array(1.7, dtype=np.float32),
            "log_prob": _log_prob(_floats(rng, *shape, scale=2), labels, -1 if ignore_index is None else ignore_index),
            "label": labels,
        }
        if weight:
            feeds["weight"] = rng.uniform(0.2, 2.0, size=c).astype(np.float32)
        attrs = {"reduction": reduction} | ({} if ignore_index is None else {"ignore_index": ignore_index})
        return Case(_node("SoftmaxCrossEntropyLossGrad", list(feeds), ["d_logits"], **attrs), feeds)

    return [
        case((4, 5), "mean"),
        case((3, 4, 6), "mean"),
        case((2, 3, 2, 3), "mean"),
        case((4, 5), "sum"),
        case((3, 4, 6), "none"),
        case((6, 5), "mean", ignore_index=-100, ignored=(1, 4)),
        case((3, 4, 5), "mean", ignore_index=2, ignored=(0, 7)),
        case((6, 5), "none", ignore_index=-100, ignored=(2,)),
        case((6, 5), "mean", weight=True),
        case((3, 4, 5), "mean", ignore_index=-100, weight=True, ignored=(3, 5)),
        case((6, 5), "sum", ignore_index=-100, weight=True, ignored=(0,)),
        case((3, 4, 5), "none", weight=True),
        case((5, 3), "mean", ignore_index=-100, ignored=(0, 1, 2, 3, 4)),  # nothing left: zero gradient
        case((6, 5), "mean", dtype=np.int32),
        # The kernel ignores label -1 when the attribute is absent.
        case((6, 5), "mean", ignored=(1, 2)),
    ]


@builder(MS, "GatherGrad")
def _gather_grad(rng):
    def case(data_shape, indices, axis):
        indices = np.asarray(indices)
        axis_n = axis % len(data_shape)
        dy_shape = (*data_shape[:axis_n], *indices.shape, *data_shape[axis_n + 1 :])
        feeds = {"shape": np.array(data_shape, dtype=np.int64), "indices": indices, "dY": _floats(rng, *dy_shape)}
        return Case(_node("GatherGrad", ["shape", "indices", "dY"], ["dX"], axis=axis), feeds)

    return [
        # Repeated (0 twice, 3 and -2 alias on 5 rows) and negative indices accumulate.
        case((5, 4), [[0, 3, -1], [0, -2, 2]], 0),
        case((7,), [1, 1, -7, 6], 0),
        case((2, 5, 3), [4, -1, 0, 0], 1),
        case((2, 3, 6), np.array([[5, 5], [-6, 1]], dtype=np.int32), -1),
        case((4, 3), np.array(2), 0),  # scalar index
        case((3, 4, 2), [[[1, 2]], [[-1, 1]]], 1),
    ]


def _layer_norm_forward(x, scale, bias, axis, epsilon=1e-5):
    inputs = {"X": x, "scale": scale, "B": bias}
    return _run_op("LayerNormalization", inputs, 3, domain="", axis=axis, epsilon=epsilon)


@builder("", "LayerNormalization")
def _layer_normalization(rng):
    def case(shape, axis, bias=True, outputs=("Y", "mean", "inv_std"), **attrs):
        norm_shape = shape[axis:] if axis >= 0 else shape[len(shape) + axis :]
        feeds = {"X": _floats(rng, *shape, scale=2) + 1, "scale": _floats(rng, *norm_shape)}
        if bias:
            feeds["B"] = _floats(rng, *norm_shape)
        node = _node("LayerNormalization", list(feeds), list(outputs), domain="", axis=axis, **attrs)
        return Case(node, feeds)

    return [
        case((3, 8), -1),
        case((2, 3, 4), -1, epsilon=1e-3, stash_type=1),
        case((2, 3, 4), 1),
        case((2, 3, 4), -2, bias=False),
        case((2, 3, 4), 2, outputs=("Y",)),
        case((2, 5, 4), -1, outputs=("Y", "", "inv_std")),
    ]


@builder(MS, "LayerNormalizationGrad")
def _layer_normalization_grad(rng):
    def case(shape, axis, outputs=("dX", "dscale", "dbias")):  # the kernel insists on all three outputs
        norm_shape = shape[axis:] if axis >= 0 else shape[len(shape) + axis :]
        x, scale = _floats(rng, *shape, scale=2) + 0.5, _floats(rng, *norm_shape)
        _, mean, inv_std = _layer_norm_forward(x, scale, _floats(rng, *norm_shape), axis)
        feeds = {"dY": _floats(rng, *shape), "X": x, "scale": scale, "mean": mean, "inv_std": inv_std}
        node = _node("LayerNormalizationGrad", list(feeds), list(outputs), axis=axis, epsilon=1e-5, stash_type=1)
        return Case(node, feeds)

    return [case((3, 8), -1), case((2, 3, 4), -1), case((2, 3, 4), 1), case((2, 3, 4), 0), case((4, 6), 1)]


@builder("", "SimplifiedLayerNormalization")
def _simplified_layer_normalization(rng):
    def case(shape, axis, outputs=("Y", "inv_std")):
        norm_shape = shape[axis:] if axis >= 0 else shape[len(shape) + axis :]
        feeds = {"X": _floats(rng, *shape, scale=2), "scale": _floats(rng, *norm_shape)}
        return Case(_node("SimplifiedLayerNormalization", ["X", "scale"], list(outputs), domain="", axis=axis), feeds)

    return [case((3, 8), -1), case((2, 3, 4), -1), case((2, 3, 4), 1), case((2, 3, 4), -1, ("Y",))]


@builder(MS, "SimplifiedLayerNormalizationGrad")
def _simplified_layer_normalization_grad(rng):
    def case(shape, axis):
        norm_shape = shape[axis:] if axis >= 0 else shape[len(shape) + axis :]
        x, scale = _floats(rng, *shape, scale=2), _floats(rng, *norm_shape)
        _, inv_std = _run_op("SimplifiedLayerNormalization", {"X": x, "scale": scale}, 2, domain="", axis=axis)
        feeds = {"dY": _floats(rng, *shape), "X": x, "scale": scale, "inv_std": inv_std}
        return Case(_node("SimplifiedLayerNormalizationGrad", list(feeds), ["dX", "dscale"], axis=axis), feeds)

    return [case((3, 8), -1), case((2, 3, 4), -1), case((2, 3, 4), 1)]


@builder(MS, "ConcatTraining")
def _concat_training(rng):
    return [
        Case(
            _node("ConcatTraining", ["a", "b"], ["y", "lengths"], axis=-1),
            {"a": _floats(rng, 3, 2), "b": _floats(rng, 3, 5)},
        ),
        Case(
            _node("ConcatTraining", ["a", "b", "c"], ["y", "lengths"], axis=1),
            {"a": _floats(rng, 2, 1, 4), "b": _floats(rng, 2, 3, 4), "c": _floats(rng, 2, 2, 4)},
        ),
        Case(_node("ConcatTraining", ["a", "b"], ["y"], axis=0), {"a": _floats(rng, 2, 3), "b": _floats(rng, 1, 3)}),
    ]


@builder(MS, "SplitTraining")
def _split_training(rng):
    return [
        Case(
            _node("SplitTraining", ["x", "split"], ["a", "b"], axis=-1),
            {"x": _floats(rng, 3, 7), "split": np.array([2, 5])},
        ),
        Case(
            _node("SplitTraining", ["x", "split"], ["a", "b", "c"], axis=1),
            {"x": _floats(rng, 2, 6, 4), "split": np.array([1, 3, 2])},
        ),
    ]


@builder(MS, "SliceGrad")
def _slice_grad(rng):
    def case(shape, starts, ends, axes=None, steps=None):
        x = np.zeros(shape, dtype=np.float32)
        index = [slice(None)] * len(shape)
        axes_or_all = axes or list(range(len(starts)))
        for axis, start, end, step in zip(axes_or_all, starts, ends, steps or [1] * len(starts), strict=True):
            index[axis] = slice(start, end, step)
        feeds = {
            "dY": _floats(rng, *x[tuple(index)].shape),
            "shape": np.array(shape, dtype=np.int64),
            "starts": np.array(starts),
            "ends": np.array(ends),
        }
        if axes is not None:
            feeds["axes"] = np.array(axes)
        if steps is not None:
            feeds["steps"] = np.array(steps)
        return Case(_node("SliceGrad", list(feeds), ["dX"]), feeds)

    return [
        case((6,), [1], [4]),
        case((3, 5), [0, 1], [100, -1], [0, 1]),
        case((2, 3, 4), [1, 0], [3, 100], [1, 2], [1, 2]),
        case((2, 3, 4), [2, -3], [-1, 5], [0, -1], [1, 3]),
    ]


@builder(MS, "BroadcastGradientArgs")
def _broadcast_gradient_args(rng):
    pairs = [([2, 1, 4], [3, 1]), ([5, 2, 1, 4], [5, 1, 3, 4]), ([1, 1], [1]), ([4], [2, 1, 4]), ([2, 3], [2, 3])]
    return [
        Case(
            _node("BroadcastGradientArgs", ["a", "b"], ["a_axes", "b_axes"]),
            {"a": np.array(a, dtype=np.int64), "b": np.array(b, dtype=np.int64)},
        )
        for a, b in pairs
    ] + [
        Case(
            _node("BroadcastGradientArgs", ["a", "b"], ["", "b_axes"]),
            {"a": np.array([3, 4], dtype=np.int64), "b": np.array([4], dtype=np.int64)},
        )
    ]


# ------------------------------------------------------------------------------------------------ tests


def test_every_lowering_has_a_test() -> None:
    assert set(BUILDERS) == set(LOWERINGS)


@pytest.mark.parametrize("key", sorted(BUILDERS), ids=lambda key: key[1])
def test_lowering_matches_ort_kernel(key: tuple[str, str]) -> None:
    cases = BUILDERS[key](np.random.default_rng(1234))
    # BroadcastGradientArgs works on shape vectors: its 3-D cases are 3-element shapes.
    ndims = [len(v) if key[1] == "BroadcastGradientArgs" else v.ndim for c in cases for v in c.feeds.values()]
    assert 3 in ndims, "every lowering needs a 3-D case"
    for case in cases:
        _check_case(case)


def test_gather_grad_output_dtype_follows_dy() -> None:
    dy = np.ones((3, 2), dtype=np.float32)
    out = _run_op("GatherGrad", {"shape": np.array([4, 2]), "indices": np.array([1, 1, -1]), "dY": dy}, axis=0)[0]
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[0, 0], [2, 2], [0, 0], [1, 1]])


def test_unsupported_ops_lists_unknown_contrib_ops_once() -> None:
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Gelu", ["r"], ["g"], domain=MS),
        helper.make_node("FooBarGrad", ["g"], ["f"], domain=MS),
        helper.make_node("FooBarGrad", ["f"], ["f2"], domain=MS),
        helper.make_node("LayerNormalization", ["f2", "s"], ["y"]),  # ORT's onnx-domain op before opset 17
        helper.make_node("InPlaceAccumulatorV2", ["buf", "y"], ["acc"], domain=MS),
        helper.make_node("NotAnOnnxOp", ["y"], ["z"]),
    ]
    graph = helper.make_graph(nodes, "g", [], [])
    assert unsupported_ops(graph) == [
        "com.microsoft:FooBarGrad",
        "com.microsoft:InPlaceAccumulatorV2",
        "ai.onnx:NotAnOnnxOp",
    ]
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)])
    assert "ai.onnx:NotAnOnnxOp" in unsupported_ops(model)
    # Gelu is standard only from opset 20, and then in the onnx domain: the contrib one stays lowered.
    assert unsupported_ops(helper.make_graph([helper.make_node("Gelu", ["x"], ["y"])], "g", [], []), opset=14) == [
        "ai.onnx:Gelu"
    ]


def test_lower_node_returns_false_without_a_lowering() -> None:
    context = LoweringContext(lambda _name: None)
    assert not lower_node(helper.make_node("FooBarGrad", ["x"], ["y"], domain=MS), context)
    assert context.nodes == []


def test_context_names_are_unique_and_constants_are_nodes() -> None:
    context = LoweringContext(lambda _name: None, prefix="p")
    names = {context.name("x") for _ in range(50)}
    assert len(names) == 50
    scalar = context.const(0.5, "half")
    ints = context.const([1, 2], "ints")
    (out,) = context.node("Add", [scalar, scalar])
    assert [node.op_type for node in context.nodes] == ["Constant", "Constant", "Add"]
    values = [onnx.numpy_helper.to_array(node.attribute[0].t) for node in context.nodes[:2]]
    assert values[0].dtype == np.float32 and values[1].dtype == np.int64
    assert context.nodes[2].output == [out] and ints != scalar


def test_fused_matmul_with_batch_transpose_is_refused() -> None:
    node = _node("FusedMatMul", ["A", "B"], ["Y"], transA=1, transBatchA=1)
    with pytest.raises(ExportError, match=r"FusedMatMul.*transBatchA=1"):
        lower_node(node, LoweringContext(lambda _name: 3))


def test_unknown_rank_is_refused() -> None:
    node = _node("GatherGrad", ["shape", "indices", "dY"], ["dX"], axis=0)
    with pytest.raises(ExportError, match=r"GatherGrad.*rank of indices is unknown"):
        lower_node(node, LoweringContext(lambda _name: None))


def test_mixed_precision_layer_norm_grad_is_refused() -> None:
    node = _node("LayerNormalizationGrad", ["dY", "X", "s", "m", "v"], ["dX"], axis=-1)
    context = LoweringContext(lambda _name: 3, elem_type_of=lambda name: TensorProto.FLOAT16 if name == "X" else None)
    with pytest.raises(ExportError, match="mixed-precision"):
        lower_node(node, context)


def test_lowering_follows_float64_inputs() -> None:
    # ORT's FastGelu kernel is float-only, so the double graph is checked against the formula itself.
    x = np.random.default_rng(0).standard_normal((2, 3, 4))
    expected = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    context = LoweringContext(lambda _name: 3, elem_type_of=lambda _name: TensorProto.DOUBLE)
    assert lower_node(_node("FastGelu", ["X"], ["Y"]), context)
    lowered = _model(context.nodes, {"X": x}, [_value_info("Y", expected)], PORTABLE_OPSETS)
    onnx.checker.check_model(lowered, full_check=True)
    np.testing.assert_allclose(ReferenceEvaluator(lowered).run(None, {"X": x})[0], expected, rtol=1e-12, atol=1e-12)


def _tiny_transformer() -> onnx.ModelProto:
    """An opset-14 graph whose training graph uses most lowered ops (LayerNorm and GELU get fused by ORT)."""
    rng = np.random.default_rng(7)

    def init(name, value):
        return onnx.numpy_helper.from_array(np.asarray(value), name)

    initializers = [
        init("emb", _floats(rng, 10, 8)),
        init("w", _floats(rng, 8, 8, scale=0.5)),
        init("g", 1 + _floats(rng, 8, scale=0.1)),
        init("b", _floats(rng, 8, scale=0.1)),
        init("w2", _floats(rng, 12, 3)),
        init("eps", np.float32(1e-5)),
        init("two", np.float32(2.0)),
        init("sqrt2", np.float32(np.sqrt(2.0))),
        init("one", np.float32(1.0)),
        init("half", np.float32(0.5)),
        init("heads", np.array([0, 0, 2, 4], dtype=np.int64)),
        init("merged", np.array([0, 0, 8], dtype=np.int64)),
        init("scale", np.float32(0.5)),
        init("starts", np.array([1], dtype=np.int64)),
        init("ends", np.array([13], dtype=np.int64)),
        init("slice_axes", np.array([2], dtype=np.int64)),
    ]
    n = helper.make_node
    nodes = [
        n("Gather", ["emb", "ids"], ["e"]),
        n("ReduceMean", ["e"], ["mu"], axes=[-1]),
        n("Sub", ["e", "mu"], ["d"]),
        n("Pow", ["d", "two"], ["d2"]),
        n("ReduceMean", ["d2"], ["var"], axes=[-1]),
        n("Add", ["var", "eps"], ["var_eps"]),
        n("Sqrt", ["var_eps"], ["std"]),
        n("Div", ["d", "std"], ["normed"]),
        n("Mul", ["normed", "g"], ["scaled"]),
        n("Add", ["scaled", "b"], ["ln"]),
        n("MatMul", ["ln", "w"], ["m"]),
        n("Div", ["m", "sqrt2"], ["m1"]),
        n("Erf", ["m1"], ["m2"]),
        n("Add", ["m2", "one"], ["m3"]),
        n("Mul", ["m", "m3"], ["m4"]),
        n("Mul", ["m4", "half"], ["gelu"]),
        n("Reshape", ["gelu", "heads"], ["split_heads"]),
        n("Transpose", ["split_heads"], ["q"], perm=[0, 2, 1, 3]),
        n("Transpose", ["q"], ["k"], perm=[0, 1, 3, 2]),
        n("MatMul", ["q", "k"], ["att"]),
        n("Mul", ["att", "scale"], ["att_scaled"]),
        n("Softmax", ["att_scaled"], ["probs"], axis=-1),
        n("MatMul", ["probs", "q"], ["ctx"]),
        n("Transpose", ["ctx"], ["ctx_t"], perm=[0, 2, 1, 3]),
        n("Reshape", ["ctx_t", "merged"], ["merged_ctx"]),
        n("Tanh", ["merged_ctx"], ["t"]),
        n("Sigmoid", ["t"], ["s"]),
        n("Relu", ["m"], ["r"]),
        n("Concat", ["s", "r"], ["c"], axis=-1),
        n("Slice", ["c", "starts", "ends", "slice_axes"], ["c2"]),
        n("ReduceMean", ["c2"], ["pooled"], axes=[1], keepdims=0),
        n("MatMul", ["pooled", "w2"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", "S"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", 3])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model


def test_real_training_graph_lowers_to_the_same_gradients(tmp_path) -> None:
    """generate_artifacts' training graph, every node lowered in place, gives ORT's loss and gradients."""
    from onnxruntime.training import artifacts

    params = ["emb", "w", "g", "b", "w2"]
    model = _tiny_transformer()
    artifacts.generate_artifacts(
        model,
        requires_grad=params,
        loss=artifacts.LossType.CrossEntropyLoss,
        optimizer=artifacts.OptimType.AdamW,
        artifact_directory=tmp_path,
    )
    training = onnx.load(tmp_path / "training_model.onnx")
    assert unsupported_ops(training) == ["com.microsoft:InPlaceAccumulatorV2"]  # the assembler's job, not ours
    contrib = {node.op_type for node in training.graph.node if node.domain == MS}
    assert {"Gelu", "GeluGrad", "FusedMatMul", "SoftmaxCrossEntropyLossGrad", "GatherGrad"} <= contrib
    assert {"LayerNormalizationGrad", "ConcatTraining", "SplitTraining", "SliceGrad", "Scale"} <= contrib

    # Replace the gradient accumulators by plain gradient outputs.
    accumulators = [node for node in training.graph.node if node.op_type == "InPlaceAccumulatorV2"]
    gradients = [node.input[1] for node in accumulators]
    nodes = [node for node in training.graph.node if node.op_type != "InPlaceAccumulatorV2"]
    rng = np.random.default_rng(3)
    feeds = {"ids": rng.integers(0, 10, size=(2, 5)), "labels": rng.integers(0, 3, size=2)}
    feeds |= {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer if i.name in params}
    values = [value for node in nodes for value in node.output if value]
    original = _model(nodes, feeds, [onnx.ValueInfoProto(name=v) for v in values], training.opset_import)
    original.graph.initializer.extend(training.graph.initializer)
    everything = dict(zip(values, _session(original).run(values, feeds), strict=True))
    everything |= feeds | {i.name: onnx.numpy_helper.to_array(i) for i in training.graph.initializer}

    context = LoweringContext(lambda name: everything[name].ndim if name in everything else None, prefix="low")
    lowered_nodes = []
    for node in nodes:
        context.nodes = []
        lowered_nodes.extend(context.nodes if lower_node(node, context) else [node])
    assert {node.domain for node in lowered_nodes} <= {""}
    wanted = [training.graph.output[0].name, *gradients]
    outputs = [_value_info(name, everything[name]) for name in wanted]
    lowered = _model(lowered_nodes, feeds, outputs, PORTABLE_OPSETS)
    lowered.graph.initializer.extend(training.graph.initializer)
    onnx.checker.check_model(lowered, full_check=True)

    for got in (_session(lowered, optimize=False).run(wanted, feeds), ReferenceEvaluator(lowered).run(wanted, feeds)):
        for name, value in zip(wanted, got, strict=True):
            # Errors compound through a whole graph: a looser bound than the per-op 1e-5.
            np.testing.assert_allclose(value, everything[name], rtol=1e-4, atol=1e-5, err_msg=name)
