"""Static int8 QDQ of a float target graph with ONNX Runtime's quantization tools (no torch), as a profile's
``[quantization]`` table says; the XINT8 scheme then moves every scale to a power of two."""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge_sdk.errors import ConfigError

if TYPE_CHECKING:
    import onnx

    from edge_sdk.profiles import QuantizationSpec

_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


def quantize_qdq(model: onnx.ModelProto, feeds: Sequence[dict[str, np.ndarray]],
                 spec: QuantizationSpec) -> onnx.ModelProto:
    """``model`` (static shapes) quantized to int8 QDQ around ``spec.op_types``, calibrated on ``feeds``."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from edge_sdk.targets.static import IR_VERSION

    if not feeds:
        raise ConfigError("no calibration examples: the calibration data file holds no usable rows")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._rows = iter(feeds)

        def get_next(self):
            return next(self._rows, None)

    activation = QuantType.QInt8 if spec.activations == "int8" else QuantType.QUInt8
    extra = {
        "WeightSymmetric": True,                       # the accelerator's int8 weights have zero point 0
        "ActivationSymmetric": spec.activation_symmetric,
        # Quantize a tensor read by several wrapped ops once, and keep each Q/DQ pair whole for the provider.
        "DedicatedQDQPair": False,
        "ForceQuantizeNoInputCheck": False,
        "CalibMovingAverage": False,
    }
    with tempfile.TemporaryDirectory(prefix="edge-sdk-qdq.") as folder:
        source, target = Path(folder) / "float.onnx", Path(folder) / "qdq.onnx"
        saved = onnx.ModelProto()
        saved.CopyFrom(model)  # saving with external data rewrites the tensors it moves out: not the caller's
        onnx.save(saved, str(source), save_as_external_data=True, location="float.data", size_threshold=1024)
        # The calibrator also measures the excluded mask tensors, whose float32-minimum range overflows its
        # range arithmetic (harmless: they are not quantized).
        with np.errstate(over="ignore"), _quiet_root_logger():
            quantize_static(str(source), str(target), Reader(), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=list(spec.op_types), nodes_to_exclude=mask_nodes(model),
                            per_channel=spec.per_channel, activation_type=activation, weight_type=QuantType.QInt8,
                            calibrate_method=getattr(CalibrationMethod, _METHODS[spec.calibration_method]),
                            use_external_data_format=True, extra_options=extra)
        result = onnx.load(str(target))
    if spec.scheme == "xint8":
        power_of_two_scales(result)
    result.ir_version = min(result.ir_version, IR_VERSION)
    return result


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime.quantization advises pre-processing through the root logger on every call; the graph it gets
    is already shape-inferred and constant-folded (static.py), so the advice is noise on a user's terminal."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


def mask_nodes(model: onnx.ModelProto, sources: Sequence[str] = ("attention_mask",)) -> list[str]:
    """The nodes that turn the attention mask into the additive bias of the attention scores, the Adds that apply
    it and the Softmax after each. They stay float: the bias is 0 or the float32 minimum (Hugging Face's mask
    value), a range no int8 scale spans, so quantizing it (or the masked scores) gives every score the same value
    and the model one output for every input. On the accelerator that is an Add and a Softmax per layer on the
    CPU; the Softmax's output, in [0, 1], is quantized again for the MatMul that reads it."""
    constants = {init.name for init in model.graph.initializer}
    derived = {name for name in sources if any(value.name == name for value in model.graph.input)}
    excluded, masked = [], set()
    for node in model.graph.node:  # topological order
        if node.op_type == "Softmax" and node.input[0] in masked:
            excluded.append(node.name)
            continue
        inputs = [name for name in node.input if name]
        dynamic = [name for name in inputs if name not in constants]
        from_mask = [name for name in dynamic if name in derived]
        if node.op_type == "Constant" or not from_mask:
            if node.op_type == "Constant":
                constants.update(node.output)
            continue
        if len(from_mask) == len(dynamic):
            derived.update(node.output)  # computed from the mask alone
        else:
            masked.update(node.output)   # scores + mask bias
        excluded.append(node.name)
    unnamed = [name for name in excluded if not name]
    if unnamed:
        raise ConfigError("the target graph has unnamed nodes on its attention-mask path; cannot exclude them")
    return excluded


def power_of_two_scales(model: onnx.ModelProto) -> None:
    """Round every Q/DQ scale up to a power of two (AMD's XINT8: the accelerator rescales by shifting), in place,
    and re-quantize the constant tensors (weights, biases) that a changed scale dequantizes.

    Up, not to the nearest: a scale at most twice as large still represents the calibrated range
    (-127·s .. 127·s grows), so nothing calibrated is clipped; a smaller scale would clip the largest
    activations, which in a transformer are the few outliers the model depends on. The cost is at most one
    bit of resolution."""
    from onnx import numpy_helper

    initializers = {init.name: init for init in model.graph.initializer}
    scale_names = {node.input[1] for node in model.graph.node
                   if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 1}
    old_scales = {}
    for name in scale_names:
        if name not in initializers:
            raise ConfigError(f"the quantized graph computes its scale {name!r}; XINT8 needs constant scales")
        old = numpy_helper.to_array(initializers[name]).astype(np.float64)
        new = np.exp2(np.ceil(np.log2(np.maximum(old, np.finfo(np.float32).tiny)))).astype(np.float32)
        old_scales[name] = old
        initializers[name].CopyFrom(numpy_helper.from_array(new, name))
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in initializers:
            continue
        scale_name = node.input[1]
        values = numpy_helper.to_array(initializers[node.input[0]])
        zero = (numpy_helper.to_array(initializers[node.input[2]]).astype(np.int64)
                if len(node.input) > 2 and node.input[2] else np.zeros((), np.int64))
        axis = next((attr.i for attr in node.attribute if attr.name == "axis"), 1)
        old, new = old_scales[scale_name], numpy_helper.to_array(initializers[scale_name]).astype(np.float64)
        if old.ndim == 1 and values.ndim > 1:  # per channel: the scale runs along ``axis``
            shape = [1] * values.ndim
            shape[axis] = -1
            old, new, zero = old.reshape(shape), new.reshape(shape), zero.reshape(shape) if zero.ndim else zero
        real = (values.astype(np.int64) - zero) * old
        info = np.iinfo(values.dtype)
        requantized = np.clip(np.round(real / new) + zero, info.min, info.max).astype(values.dtype)
        initializers[node.input[0]].CopyFrom(numpy_helper.from_array(requantized, node.input[0]))


def is_power_of_two(value: float) -> bool:
    mantissa, _ = math.frexp(float(value))
    return value > 0 and mantissa == 0.5


def qdq_report(model: onnx.ModelProto, op_types: Sequence[str] = ("MatMul", "Gemm")) -> dict[str, object]:
    """What a QDQ graph holds: how many ops of ``op_types`` there are and how many read every float input through a
    DequantizeLinear, the scales, and whether all of them are powers of two."""
    from onnx import numpy_helper

    producers = {output: node for node in model.graph.node for output in node.output}
    initializers = {init.name: init for init in model.graph.initializer}
    wrapped = total = 0
    unwrapped = []
    for node in model.graph.node:
        if node.op_type not in op_types:
            continue
        total += 1
        data_inputs = [name for name in node.input[:2] if name]
        if all(producers.get(name) is not None and producers[name].op_type == "DequantizeLinear"
               for name in data_inputs):
            wrapped += 1
        else:
            unwrapped.append(node.name or node.output[0])
    scales = [float(value) for node in model.graph.node if node.op_type in ("QuantizeLinear", "DequantizeLinear")
              for value in np.ravel(numpy_helper.to_array(initializers[node.input[1]]))
              if node.input[1] in initializers]
    return {"matmul_gemm": total, "qdq_wrapped": wrapped, "unwrapped": unwrapped[:5],
            "quantize_nodes": sum(node.op_type == "QuantizeLinear" for node in model.graph.node),
            "dequantize_nodes": sum(node.op_type == "DequantizeLinear" for node in model.graph.node),
            "scales": len(scales), "power_of_two_scales": all(is_power_of_two(s) for s in scales) if scales else False}
