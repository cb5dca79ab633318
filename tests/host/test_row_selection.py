"""Moving a sequence-position gather above position-wise ops: same outputs, less work, and it stops where
positions mix."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_sdk.host.row_selection import select_rows_early

D, F = 6, 10


def _model(nodes, initializers, *, output_shape=("batch", D), extra_inputs=()) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "rows",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", D]), *extra_inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(output_shape))],
        [numpy_helper.from_array(value, name) for name, value in initializers.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w1": rng.standard_normal((D, F)).astype(np.float32),
        "b1": rng.standard_normal(F).astype(np.float32),
        "w2": rng.standard_normal((F, D)).astype(np.float32),
        "gamma": rng.standard_normal(D).astype(np.float32),
        "two": np.asarray(2.0, np.float32),
        "eps": np.asarray(1e-5, np.float32),
        "first": np.asarray(0, np.int64),
        "third": np.asarray(2, np.int64),
    }


def _block(select: str = "first") -> list[onnx.NodeProto]:
    """A feed-forward block with a residual and a decomposed layer norm (a diamond), then ``y = h[:, k]``."""
    return [
        helper.make_node("MatMul", ["x", "w1"], ["h1"]),
        helper.make_node("Add", ["h1", "b1"], ["h2"]),
        helper.make_node("Erf", ["h2"], ["h3"]),
        helper.make_node("MatMul", ["h3", "w2"], ["h4"]),
        helper.make_node("Add", ["h4", "x"], ["r"]),
        helper.make_node("ReduceMean", ["r"], ["mean"], axes=[-1]),
        helper.make_node("Sub", ["r", "mean"], ["centered"]),
        helper.make_node("Pow", ["centered", "two"], ["squared"]),
        helper.make_node("ReduceMean", ["squared"], ["variance"], axes=[-1]),
        helper.make_node("Add", ["variance", "eps"], ["shifted"]),
        helper.make_node("Sqrt", ["shifted"], ["std"]),
        helper.make_node("Div", ["centered", "std"], ["normed"]),
        helper.make_node("Mul", ["normed", "gamma"], ["out"]),
        helper.make_node("Gather", ["out", select], ["y"], axis=1),
    ]


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(["y"], feeds)[0]


def _input_rows(model: onnx.ModelProto, op_type: str) -> list[str]:
    """The names feeding the data input of every ``op_type`` node."""
    return [node.input[0] for node in model.graph.node if node.op_type == op_type]


@pytest.mark.parametrize("select", ["first", "third"])
def test_gather_moves_above_the_position_wise_block_and_outputs_do_not_change(select):
    model = _model(_block(select), _weights())
    x = np.random.default_rng(1).standard_normal((3, 5, D)).astype(np.float32)
    before = _run(model, {"x": x})

    moved = select_rows_early(model)

    onnx.checker.check_model(model, full_check=True)
    assert moved >= 10
    # The first matrix product now reads one selected position of x, not x itself.
    producers = {out: node for node in model.graph.node for out in node.output}
    first_matmul = next(node for node in model.graph.node if node.op_type == "MatMul" and node.input[1] == "w1")
    assert producers[first_matmul.input[0]].op_type == "Gather"
    assert producers[first_matmul.input[0]].input[0] == "x"
    np.testing.assert_allclose(_run(model, {"x": x}), before, rtol=1e-5, atol=1e-5)
    assert _run(model, {"x": x}).shape == (3, D)


def test_a_one_element_index_keeps_the_axis_and_leaves_no_identity():
    weights = _weights() | {"first": np.asarray([0], np.int64)}
    model = _model(_block(), weights, output_shape=("batch", 1, D))
    x = np.random.default_rng(2).standard_normal((2, 4, D)).astype(np.float32)
    before = _run(model, {"x": x})
    assert select_rows_early(model) > 0
    assert not [node for node in model.graph.node if node.op_type == "Identity"]
    np.testing.assert_allclose(_run(model, {"x": x}), before, rtol=1e-5, atol=1e-5)


def test_a_rank_two_input_broadcast_over_batch_is_gathered_on_its_own_axis():
    # position embeddings [S, D] added to [B, S, D]: their positions are axis 0, not 1
    nodes = [helper.make_node("Add", ["x", "positions"], ["sum"]),
             helper.make_node("Tanh", ["sum"], ["out"]),
             helper.make_node("Gather", ["out", "third"], ["y"], axis=1)]
    positions = helper.make_tensor_value_info("positions", TensorProto.FLOAT, ["sequence", D])
    model = _model(nodes, {"third": np.asarray(2, np.int64)}, extra_inputs=[positions])
    rng = np.random.default_rng(3)
    feeds = {"x": rng.standard_normal((2, 5, D)).astype(np.float32),
             "positions": rng.standard_normal((5, D)).astype(np.float32)}
    before = _run(model, feeds)
    assert select_rows_early(model) == 2
    np.testing.assert_allclose(_run(model, feeds), before, rtol=1e-6)


def test_ops_that_mix_positions_stop_the_move():
    # softmax over the sequence axis, and a batched product whose right side is an activation
    nodes = [helper.make_node("Softmax", ["x"], ["p"], axis=1),
             helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["xt", "x"], ["gram"]),  # [B, D, D]
             helper.make_node("MatMul", ["p", "gram"], ["out"]),
             helper.make_node("Gather", ["out", "first"], ["y"], axis=1)]
    model = _model(nodes, {"first": np.asarray(0, np.int64)})
    x = np.random.default_rng(4).standard_normal((2, 5, D)).astype(np.float32)
    before = _run(model, {"x": x})
    assert select_rows_early(model) == 0
    assert _input_rows(model, "Softmax") == ["x"]
    np.testing.assert_allclose(_run(model, {"x": x}), before)


def test_a_tensor_another_node_reads_in_full_is_not_cut():
    nodes = [helper.make_node("Tanh", ["x"], ["t"]),
             helper.make_node("ReduceMean", ["t"], ["total"], axes=[1], keepdims=0),  # reads every position
             helper.make_node("Gather", ["t", "first"], ["row"], axis=1),
             helper.make_node("Add", ["row", "total"], ["y"])]
    model = _model(nodes, {"first": np.asarray(0, np.int64)})
    x = np.random.default_rng(5).standard_normal((2, 5, D)).astype(np.float32)
    before = _run(model, {"x": x})
    assert select_rows_early(model) == 0
    np.testing.assert_allclose(_run(model, {"x": x}), before)


def test_a_read_dropout_mask_and_a_non_constant_index_stop_the_move():
    nodes = [helper.make_node("Dropout", ["x"], ["d", "mask"]),
             helper.make_node("Cast", ["mask"], ["mask_float"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["d", "mask_float"], ["both"]),
             helper.make_node("Gather", ["both", "first"], ["picked"], axis=1),
             helper.make_node("Gather", ["picked", "where"], ["y"], axis=0)]
    where = helper.make_tensor_value_info("where", TensorProto.INT64, [])
    model = _model(nodes, {"first": np.asarray(0, np.int64)}, output_shape=(D,), extra_inputs=[where])
    # the Add and the Cast move; the Dropout, whose mask is read, does not
    assert select_rows_early(model) == 2
    assert [node.input[0] for node in model.graph.node if node.op_type == "Dropout"] == ["x"]


def test_an_unknown_length_axis_stops_a_middle_position():
    # "other" has an unknown second dimension: it may be 1 (broadcast) or the sequence; for position 2 of
    # a broadcast axis a gather would fail, so the move stops there
    nodes = [helper.make_node("Add", ["x", "other"], ["sum"]),
             helper.make_node("Gather", ["sum", "third"], ["y"], axis=1)]
    other = helper.make_tensor_value_info("other", TensorProto.FLOAT, ["batch", None, D])
    model = _model(nodes, {"third": np.asarray(2, np.int64)}, extra_inputs=[other])
    assert select_rows_early(model) == 0


def test_a_column_of_a_matrix_product_is_not_a_position():
    # on a rank-2 [batch, features] product, axis 1 is what the product sums into: no move
    nodes = [helper.make_node("ReduceMean", ["x"], ["pooled"], axes=[1], keepdims=0),
             helper.make_node("MatMul", ["pooled", "w1"], ["features"]),
             helper.make_node("Gather", ["features", "third"], ["y"], axis=1)]
    model = _model(nodes, _weights(), output_shape=("batch",))
    x = np.random.default_rng(6).standard_normal((2, 5, D)).astype(np.float32)
    before = _run(model, {"x": x})
    assert select_rows_early(model) == 0
    np.testing.assert_allclose(_run(model, {"x": x}), before)
