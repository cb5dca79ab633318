"""One weights file for several graphs: the frozen base is written once and referenced by each graph
through ONNX external data, so the inference graph and the portable training step do not each carry
a copy. Graphs and weights file share one folder: ONNX Runtime refuses external data outside the
model's folder."""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx
from onnx import TensorProto, numpy_helper

from edge_sdk.errors import ExportError

# Small tensors (shape constants, biases of tiny layers) stay inside the graph: fewer file reads.
_MIN_EXTERNAL_BYTES = 1024
_ALIGNMENT = 64


def _set_external(tensor: TensorProto, location: str, offset: int, length: int) -> None:
    tensor.ClearField("raw_data")
    for field in ("float_data", "int32_data", "int64_data", "double_data"):
        tensor.ClearField(field)
    tensor.data_location = TensorProto.EXTERNAL
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def save_with_shared_weights(models: dict[Path, onnx.ModelProto], weights_path: Path) -> None:
    """Save ``models`` (path → model, all in ``weights_path``'s folder) with large initializers in one file.

    Initializers with the same name must hold the same values in every model; that is checked.
    """
    folder = weights_path.parent
    if any(path.parent != folder for path in models):
        raise ExportError("graphs that share a weights file must sit in the weights file's folder")
    placed: dict[str, tuple[int, int, str]] = {}
    with open(weights_path, "wb") as handle:
        for model in models.values():
            for tensor in model.graph.initializer:
                raw = numpy_helper.to_array(tensor).tobytes()
                digest = hashlib.sha256(raw).hexdigest()
                if len(raw) < _MIN_EXTERNAL_BYTES:
                    continue
                if tensor.name in placed:
                    offset, length, first_digest = placed[tensor.name]
                    if digest != first_digest:
                        raise ExportError(f"initializer {tensor.name!r} differs between graphs; cannot share it")
                else:
                    padding = (-handle.tell()) % _ALIGNMENT
                    handle.write(b"\0" * padding)
                    offset, length = handle.tell(), len(raw)
                    handle.write(raw)
                    placed[tensor.name] = (offset, length, digest)
                _set_external(tensor, weights_path.name, offset, length)
    for path, model in models.items():
        onnx.save(model, str(path))
