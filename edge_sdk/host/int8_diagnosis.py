"""Why an int8 graph strays from float32: the integer kernel of this CPU, or the data.

When the build's int8 gate trips, the message should say what to suspect. Every integer product of the
graph (``DynamicQuantizeLinear -> MatMulInteger``) is run once more with its intermediate tensors exposed:
the float activations, their uint8 quantization, and the int32 result ONNX Runtime's kernel produced.
Against those, numpy gives the exact integer product (:mod:`edge_sdk.bundle.int8_arithmetic`):

- a kernel result that differs from it means this CPU's kernel does not compute what ONNX defines (the
  16-bit saturation of x86 CPUs without VNNI is the known case, and the weights' pair-sum bound says
  whether it could happen);
- otherwise the int8 error comes from quantizing activations with one scale per tensor, and the product
  whose relative error is largest names the layer and how far its input's outliers stretch that scale.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge_sdk.bundle.int8_arithmetic import (
    INT16_MAX,
    exact_matmul_integer,
    pair_sum_bound,
    saturating_matmul_integer,
)
from edge_sdk.graph import wiring

# Gaussian-like activations peak at about 4-5 RMS over thousands of values; ten times the RMS is the
# systematic outlier channel of transformer activations that a per-tensor scale spends its range on.
OUTLIER_PEAK_TO_RMS = 10.0


@dataclass(frozen=True)
class IntegerProduct:
    """Where one ``DynamicQuantizeLinear -> MatMulInteger`` pair of a graph reads and writes."""

    node: str                 # the MatMulInteger node's name (or its output's)
    activations: str          # float input of DynamicQuantizeLinear
    quantized: str            # its uint8 output
    scale: str
    zero_point: str
    weights: str              # int8 initializer, [K, N]
    weight_scale: str | None  # float [N] initializer multiplied with ``scale``; None if the graph has none
    result: str               # MatMulInteger's int32 output


@dataclass(frozen=True)
class CapturedProduct:
    """One integer product as a run of the graph computed it."""

    node: str
    activations: np.ndarray   # float32 [..., K]
    quantized: np.ndarray     # uint8 [..., K], as ONNX Runtime quantized them
    scale: float
    zero_point: int
    weights: np.ndarray       # int8 [K, N]
    weight_scale: np.ndarray | None
    result: np.ndarray        # int32 [..., N], as ONNX Runtime's kernel computed it

    def exact(self) -> np.ndarray:
        return exact_matmul_integer(self.quantized, self.zero_point, self.weights)


def integer_products(model: onnx.ModelProto) -> list[IntegerProduct]:
    """Every MatMulInteger whose left side a DynamicQuantizeLinear produced and whose right side is an
    int8 initializer, in graph order."""
    graph = model.graph
    producers = wiring.producers(graph.node)
    readers = wiring.consumers(graph.node)
    initializers = {init.name: init for init in graph.initializer}
    found = []
    for node in graph.node:
        if node.op_type != "MatMulInteger":
            continue
        quantize = producers.get(node.input[0])
        weights = initializers.get(node.input[1])
        if quantize is None or quantize.op_type != "DynamicQuantizeLinear" or weights is None \
                or weights.data_type != TensorProto.INT8 or len(weights.dims) != 2:
            continue
        scale = quantize.output[1]
        weight_scale = None
        for consumer in (reader for reader in readers[scale] if reader.op_type == "Mul"):
            other = consumer.input[1] if consumer.input[0] == scale else consumer.input[0]
            if other in initializers:
                weight_scale = other
                break
        found.append(IntegerProduct(node=node.name or node.output[0], activations=quantize.input[0],
                                    quantized=quantize.output[0], scale=scale, zero_point=quantize.output[2],
                                    weights=node.input[1], weight_scale=weight_scale, result=node.output[0]))
    return found


def capture_products(graph: str | Path | onnx.ModelProto, feeds: dict[str, np.ndarray]) -> Iterator[CapturedProduct]:
    """Run ``graph`` (a path, or a model with its weights loaded) on ``feeds`` with every integer product's
    tensors exposed as outputs.

    Exposing the intermediate tensors keeps ONNX Runtime from fusing the pattern, so the int32 results come
    from its MatMulInteger kernel (the same MLAS integer GEMM the fused operator calls)."""
    import onnxruntime

    if isinstance(graph, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(graph)  # outputs are added below; the caller's model stays as it was
    else:
        model = onnx.load(str(graph))  # with external data: the weights are read below
    products = integer_products(model)
    if not products:
        return
    graph = model.graph
    present = {value.name for value in graph.output} | {value.name for value in graph.input}
    types = {TensorProto.FLOAT: ("activations", "scale"), TensorProto.UINT8: ("quantized", "zero_point"),
             TensorProto.INT32: ("result",)}
    for product in products:
        for elem_type, fields in types.items():
            for name in (getattr(product, field) for field in fields):
                if name not in present:
                    graph.output.append(helper.make_tensor_value_info(name, elem_type, None))
                    present.add(name)
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    inputs = {value.name for value in session.get_inputs()}
    feeds = {name: value for name, value in feeds.items() if name in inputs}  # callers may pass a superset
    wanted = [value.name for value in graph.output]
    values = dict(zip(wanted, session.run(wanted, feeds), strict=True)) | feeds
    initializers = {init.name: init for init in graph.initializer}
    for product in products:
        yield CapturedProduct(
            node=product.node, activations=values[product.activations], quantized=values[product.quantized],
            scale=float(values[product.scale]), zero_point=int(values[product.zero_point]),
            weights=numpy_helper.to_array(initializers[product.weights]),
            weight_scale=(numpy_helper.to_array(initializers[product.weight_scale])
                          if product.weight_scale else None),
            result=values[product.result])


def diagnose(path: str | Path, feeds: dict[str, np.ndarray]) -> str:
    """One sentence naming the likely cause of an int8 graph's distance from float32 (see the module)."""
    return explain(capture_products(path, feeds))


def explain(products: Iterable[CapturedProduct]) -> str:
    """The diagnosis of :func:`diagnose` over products already captured."""
    worst_error, worst = -1.0, None
    for product in products:
        exact = product.exact()
        kernel_error = int(np.max(np.abs(product.result.astype(np.int64) - exact))) if exact.size else 0
        if kernel_error:
            return _kernel_cause(product, exact, kernel_error)
        if product.weight_scale is None or not exact.size:
            continue
        reference = product.activations.astype(np.float64) @ (product.weights * product.weight_scale.astype(
            np.float64))
        error = np.max(np.abs(exact * product.scale * product.weight_scale - reference))
        relative = float(error / max(np.max(np.abs(reference)), 1e-12))
        if relative > worst_error:
            worst_error, worst = relative, product
    if worst is None:
        return "the graph holds no integer product to examine"
    values = worst.activations.astype(np.float64)
    rms = float(np.sqrt(np.mean(values ** 2))) or 1e-12
    peak = float(np.max(np.abs(values)))
    where = (f"the integer kernel computed exact products, and the largest int8 error enters at {worst.node!r} "
             f"({worst_error:.1%} of its output)")
    if peak / rms >= OUTLIER_PEAK_TO_RMS:
        return (f"{where}: its input spans [{values.min():.3g}, {values.max():.3g}] with an RMS of {rms:.3g} (peak/RMS "
                f"{peak / rms:.0f}), so one uint8 step ({worst.scale:.3g}) is coarse for most of its values: "
                "activation outliers that one scale per tensor cannot resolve")
    return (f"{where}, whose input has no outliers (peak/RMS {peak / rms:.1f}): no single product is far off, the "
            "rounding of every layer adds up through the model's depth")


def _kernel_cause(product: CapturedProduct, exact: np.ndarray, kernel_error: int) -> str:
    bound = pair_sum_bound(product.weights)
    saturated = saturating_matmul_integer(product.quantized, product.zero_point, product.weights)
    matches = bool(np.array_equal(product.result.astype(np.int64), saturated))
    cause = (f"its weights let two products sum to {bound}, beyond a 16-bit lane ({INT16_MAX}), which x86 CPUs "
             "without AVX-512 VNNI saturate" if bound > INT16_MAX else
             f"its weights keep every pair of products within {bound} (a 16-bit lane holds {INT16_MAX}), so this "
             "is an ONNX Runtime kernel fault or an edge-sdk bug: report it with this CPU's flags")
    return (f"ONNX Runtime's integer kernel on this CPU did not compute exact products at {product.node!r} (off by "
            f"up to {kernel_error} of {int(np.max(np.abs(exact)))}"
            f"{'; the result equals 16-bit saturating arithmetic' if matches else ''}): {cause}")
