"""`--base int8-compute`: the frozen linear layers compute in int8 (weights) x uint8 (activations).

Every MatMul whose right-hand side is a frozen float weight (directly, or through 2-D Transposes, as
exporters and ORT's gradient builder wire ``nn.Linear``), and every bias-free ``Gemm(A, W, transB)`` by one
(how the portable step reads a weight transposed), becomes the standard-ONNX dynamic quantization
pattern::

    DynamicQuantizeLinear(A) -> MatMulInteger(A_u8, B_s8) -> Cast(float) -> Mul(a_scale * b_scale)

B is quantized offline, symmetric, one scale per output column, to the values -64..64 rather than the full
-127..127; A is quantized per tensor at run time (uint8, 0..255). ONNX Runtime fuses the pattern into one
``DynamicQuantizeMatMul`` (its int8 GEMM, VNNI where the CPU has it), and any runtime that lacks the
fusion still runs the standard operators: the graph stays portable.

Why 7-bit weights: on x86 CPUs without VNNI (AVX2, AVX-512 core) ONNX Runtime's u8 x s8 kernel adds
neighbouring products in saturating 16-bit lanes; full-range weights overflow them (255 * 127 * 2 > 32767)
and those CPUs compute a different function than VNNI or ARM ones. With |B| <= 64 no pair can overflow
(255 * 64 * 2 = 32640), so every CPU computes the exact integer product and an int8 bundle means the same
thing everywhere (:mod:`edge_sdk.bundle.int8_arithmetic` has the arithmetic; each stored matrix's bound is
checked here). It costs one bit of weight resolution and nothing in speed: the same kernels run. The
alternatives were worse: uint8 weights take a widening kernel that is about 25% slower on AVX2 and cannot
use VNNI; 7-bit activations need a hand-made quantizer instead of ``DynamicQuantizeLinear`` and lose the
fusion.

Why a rewrite of our own rather than ``onnxruntime.quantization.quantize_dynamic``: that tool only
quantizes MatMuls whose weight is an initializer, while both our graphs read weights through Transposes
(and the training step reads each weight twice, transposed for the forward pass and as is for the
gradient of the activations); it also cannot tell frozen weights from the adapter's.

Embedding tables are stored as int8 rows (full -127..127, one scale per row) and dequantized right after
the lookup: no integer product reads them, so no kernel can saturate on them. What stays float: the
LoRA/DoRA matrices and heads (they are trained), attention's activation x activation products,
LayerNorms, and Gemm nodes with a bias (small heads and poolers).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge_sdk.bundle.int8_arithmetic import INT16_MAX, WEIGHT_MAX, pair_sum_bound
from edge_sdk.errors import ExportError
from edge_sdk.graph import wiring
from edge_sdk.graph.attributes import attribute
from edge_sdk.graph.frozen import frozen_source
from edge_sdk.graph.row_quantization import quantize_rows

SCHEME = (f"int8 weights in [-{WEIGHT_MAX}, {WEIGHT_MAX}] (symmetric, one scale per output column) x uint8 "
          "activations (dynamic, per tensor), so no pair of products overflows a 16-bit lane; embedding tables "
          "int8 with one scale per row")


@dataclass(frozen=True)
class Int8Summary:
    matmuls: int          # MatMul nodes rewritten
    weights: int          # distinct quantized matrices stored
    float_bytes: int      # what those matrices take as float32
    int8_bytes: int
    gathers: int = 0      # embedding lookups rewritten
    max_pair_sum: int = 0  # the largest |a_i*b_i + a_j*b_j| any stored matrix allows (int8_arithmetic)

    def to_dict(self) -> dict:
        return {"scheme": SCHEME, "matmuls": self.matmuls, "gathers": self.gathers, "weights": self.weights,
                "weight_max": WEIGHT_MAX, "max_pair_sum": self.max_pair_sum,
                "float_bytes": self.float_bytes, "int8_bytes": self.int8_bytes}


def _product_weight(node: onnx.NodeProto, producers: dict[str, onnx.NodeProto], frozen: dict[str, TensorProto]
                    ) -> tuple[str, bool] | None:
    """(weight, transposed?) for a MatMul by a frozen weight, or for a bias-free ``Gemm(A, W, transB)`` (how a
    portable step reads a weight transposed without a copy); None for anything else."""
    if node.op_type == "MatMul":
        return frozen_source(node.input[1], producers, frozen)
    if node.op_type != "Gemm" or (len(node.input) > 2 and node.input[2]):
        return None
    if attribute(node, "transA", 0) or attribute(node, "alpha", 1.0) != 1.0:
        return None
    source = frozen_source(node.input[1], producers, frozen)
    if source is None:
        return None
    weight, transposed = source
    return weight, transposed != bool(attribute(node, "transB", 0))


def quantize_frozen_matmuls(model: onnx.ModelProto, frozen: set[str]) -> Int8Summary:
    """Rewrite ``model`` in place (see the module docstring); ``frozen`` names the initializers that may be
    quantized (never the trainable ones). Initializer values must be loaded (not external)."""
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer if init.name in frozen}
    producers = wiring.producers(graph.node)
    quantized: dict[tuple[str, bool], tuple[str, str]] = {}  # (weight, transposed) -> (int8 B, scale)
    added: list[TensorProto] = []
    zero_point = "int8_matmul.zero_point"
    nodes: list[onnx.NodeProto] = []
    rewritten = float_bytes = int8_bytes = max_pair_sum = 0
    gathers = 0
    rows: dict[str, tuple[str, str]] = {}  # embedding table -> (int8 rows, row scales)
    for node in graph.node:
        if _is_table_lookup(node, initializers):
            table = node.input[0]
            if table not in rows:
                matrix = numpy_helper.to_array(initializers[table])
                q = quantize_rows(matrix)
                stem = f"{table}.int8rows"
                added += [numpy_helper.from_array(q.values, stem), numpy_helper.from_array(q.scale, stem + ".scale")]
                rows[table] = (stem, stem + ".scale")
                float_bytes += matrix.size * 4
                int8_bytes += q.values.nbytes + q.scale.nbytes
            nodes += _dequantized_lookup(node, *rows[table])
            gathers += 1
            continue
        source = _product_weight(node, producers, initializers)
        if source is None:
            nodes.append(node)
            continue
        if source not in quantized:
            weight, transposed = source
            matrix = numpy_helper.to_array(initializers[weight])
            b = matrix.T if transposed else matrix  # B as the MatMul reads it: [K, N]
            # a row of B.T is an output column of the MatMul
            q = quantize_rows(np.ascontiguousarray(b.T), max_level=WEIGHT_MAX)
            stored = np.ascontiguousarray(q.values.T)
            bound = pair_sum_bound(stored)
            if bound > INT16_MAX:  # cannot happen with WEIGHT_MAX; guards the scheme against later edits
                raise ExportError(f"int8 weight {weight!r} lets two products sum to {bound}, beyond a 16-bit lane "
                                  f"({INT16_MAX}): CPUs without VNNI would saturate; this is a bug in edge-sdk")
            max_pair_sum = max(max_pair_sum, bound)
            stem = f"{weight}{'.T' if transposed else ''}.int8mm"
            added += [numpy_helper.from_array(stored, stem),
                      numpy_helper.from_array(q.scale, stem + ".scale")]
            quantized[source] = (stem, stem + ".scale")
            float_bytes += b.size * 4
            int8_bytes += q.values.nbytes + q.scale.nbytes
        b_int8, b_scale = quantized[source]
        rewritten += 1
        stem = (node.name or node.output[0]) + ".int8"
        a, output = node.input[0], node.output[0]
        nodes += [
            helper.make_node("DynamicQuantizeLinear", [a], [f"{stem}.a", f"{stem}.a_scale", f"{stem}.a_zero_point"],
                             name=f"{stem}.quantize"),
            helper.make_node("MatMulInteger", [f"{stem}.a", b_int8, f"{stem}.a_zero_point", zero_point],
                             [f"{stem}.int32"], name=f"{stem}.matmul"),
            helper.make_node("Cast", [f"{stem}.int32"], [f"{stem}.float"], to=TensorProto.FLOAT, name=f"{stem}.cast"),
            helper.make_node("Mul", [f"{stem}.a_scale", b_scale], [f"{stem}.scale"], name=f"{stem}.scales"),
            helper.make_node("Mul", [f"{stem}.float", f"{stem}.scale"], [output], name=f"{stem}.rescale"),
        ]
    if rewritten or gathers:
        added.append(numpy_helper.from_array(np.zeros((), np.int8), zero_point))
        added.append(numpy_helper.from_array(np.asarray([-1], np.int64), _LAST_AXIS))
        graph.initializer.extend(added)
        del graph.node[:]
        graph.node.extend(nodes)
    return Int8Summary(matmuls=rewritten, weights=len(quantized) + len(rows), float_bytes=float_bytes,
                       int8_bytes=int8_bytes, gathers=gathers, max_pair_sum=max_pair_sum)


_LAST_AXIS = "int8_matmul.last_axis"


def _is_table_lookup(node: onnx.NodeProto, frozen: dict[str, TensorProto]) -> bool:
    """Gather of rows (axis 0) from a frozen 2-D float table: an embedding lookup."""
    if node.op_type != "Gather" or node.input[0] not in frozen:
        return False
    table = frozen[node.input[0]]
    axis = attribute(node, "axis", 0)
    return table.data_type == TensorProto.FLOAT and len(table.dims) == 2 and axis == 0


def _dequantized_lookup(node: onnx.NodeProto, values: str, scales: str) -> list[onnx.NodeProto]:
    """rows = float(int8 table[ids]) * scale[ids][..., None]: the lookup reads int8 rows and dequantizes
    only them, so the float table never exists (opset 13+ Unsqueeze, axes as an input)."""
    ids, output = node.input[1], node.output[0]
    stem = (node.name or output) + ".int8"
    return [
        helper.make_node("Gather", [values, ids], [f"{stem}.rows"], name=f"{stem}.gather", axis=0),
        helper.make_node("Gather", [scales, ids], [f"{stem}.row_scales"], name=f"{stem}.gather_scales", axis=0),
        helper.make_node("Unsqueeze", [f"{stem}.row_scales", _LAST_AXIS], [f"{stem}.row_scales_column"],
                         name=f"{stem}.unsqueeze"),
        helper.make_node("Cast", [f"{stem}.rows"], [f"{stem}.rows_float"], to=TensorProto.FLOAT, name=f"{stem}.cast"),
        helper.make_node("Mul", [f"{stem}.rows_float", f"{stem}.row_scales_column"], [output], name=f"{stem}.rescale"),
    ]
