"""The portable step reads each frozen matrix as stored: same results, no transposed copies to fold."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper, numpy_helper

from edge_sdk.graph.prune import prune_unused
from edge_sdk.host.int8_matmul import quantize_frozen_matmuls
from edge_sdk.host.portable.frozen_weights import read_frozen_weights_in_place

K, N = 6, 4


def _graph() -> onnx.ModelProto:
    """What exports and the gradient builder write: x·Wᵀ through a Transpose, dy·W through two, a Gemm head
    by Wᵀ, and a trained matrix read through a Transpose too (it must stay as it is)."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Transpose", ["w"], ["w_t"], perm=[1, 0]),
        helper.make_node("MatMul", ["x", "w_t"], ["forward"]),                       # [B, S, K] x [K, N]
        helper.make_node("Transpose", ["w_t"], ["w_tt"], perm=[1, 0]),
        helper.make_node("Identity", ["w_tt"], ["w_again"]),
        helper.make_node("MatMul", ["dy", "w_again"], ["backward"]),                 # [B, S, N] x [N, K]
        helper.make_node("Gemm", ["row", "w_t", "bias"], ["head"], transB=1),        # [M, N] x (Wᵀ)ᵀ
        helper.make_node("Transpose", ["trained"], ["trained_t"], perm=[1, 0]),
        helper.make_node("MatMul", ["x", "trained_t"], ["adapted"]),
    ]
    graph = helper.make_graph(
        nodes, "step",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", K]),
         helper.make_tensor_value_info("dy", TensorProto.FLOAT, ["b", "s", N]),
         helper.make_tensor_value_info("row", TensorProto.FLOAT, ["m", N])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in
         (("forward", ["b", "s", N]), ("backward", ["b", "s", K]), ("head", ["m", K]), ("adapted", ["b", "s", N]))],
        [numpy_helper.from_array(rng.standard_normal((N, K)).astype(np.float32), "w"),
         numpy_helper.from_array(rng.standard_normal((N, K)).astype(np.float32), "trained"),
         numpy_helper.from_array(rng.standard_normal(K).astype(np.float32), "bias")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def _run(model: onnx.ModelProto) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    feeds = {"x": rng.standard_normal((2, 3, K)).astype(np.float32),
             "dy": rng.standard_normal((2, 3, N)).astype(np.float32),
             "row": rng.standard_normal((5, N)).astype(np.float32)}
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def test_products_read_the_frozen_weight_as_stored_and_compute_the_same():
    model = _graph()
    before = _run(model)

    assert read_frozen_weights_in_place(model, {"w", "bias"}) == 3
    prune_unused(model.graph)  # as the step's assembly does next: drops the Transposes nothing reads now

    onnx.checker.check_model(model)
    readers = [node for node in model.graph.node if "w" in node.input]
    assert sorted(node.op_type for node in readers) == ["Gemm", "Gemm", "MatMul"]
    # No Transpose of the frozen weight is left for ONNX Runtime to fold into a second copy; the trained
    # matrix (an adapter's, updated every step) keeps its Transpose.
    transposed = [node.input[0] for node in model.graph.node if node.op_type == "Transpose"]
    assert transposed == ["trained"]
    for got, want in zip(_run(model), before, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_the_head_gemm_flips_its_transpose_flag_instead_of_reading_a_copy():
    model = _graph()
    read_frozen_weights_in_place(model, {"w", "bias"})
    head = next(node for node in model.graph.node if node.output[0] == "head")
    assert head.input[1] == "w" and helper.get_attribute_value(head.attribute[-1]) == 0


def test_int8_quantizes_a_bias_free_gemm_by_a_frozen_weight_like_the_matmul_it_replaced():
    plain, rewired = _graph(), _graph()
    read_frozen_weights_in_place(rewired, {"w", "bias"})
    plain_summary = quantize_frozen_matmuls(plain, {"w"})
    rewired_summary = quantize_frozen_matmuls(rewired, {"w"})
    # forward (x·Wᵀ) and backward (dy·W): the same two int8 matrices either way; the head Gemm has a bias
    # and stays float in both
    assert plain_summary.matmuls == rewired_summary.matmuls == 2
    int8 = {name: numpy_helper.to_array(init) for name, init in
            ((init.name, init) for init in rewired.graph.initializer) if name.endswith(".int8mm")}
    reference = {init.name: numpy_helper.to_array(init) for init in plain.graph.initializer
                 if init.name.endswith(".int8mm")}
    assert sorted(int8) == sorted(reference)
    for name, values in int8.items():
        np.testing.assert_array_equal(values, reference[name])
    for got, want in zip(_run(rewired), _run(plain), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
