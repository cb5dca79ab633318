"""The graphs a build ships, held in memory until the bundle is written, sharing one pool of weights.

Every large initializer (the frozen base) lives once in the pool, by name; each graph refers to it as
ONNX external data, which is how the bundle stores it too (one weights file beside the graphs: ONNX
Runtime refuses external data outside the model's folder). A check that needs to run a graph gets an
ONNX Runtime session built from memory, the pool handed over as external initializers, so no stage
writes a graph to disk to test it and the bundle is written once, at the end.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from edge_sdk.errors import ExportError

# Small tensors (shape constants, biases of tiny layers) stay inside the graph: fewer file reads.
MIN_EXTERNAL_BYTES = 1024
_ALIGNMENT = 64
_PLACEHOLDER = "pool"


def _set_external(tensor: TensorProto, location: str, offset: int, length: int) -> None:
    tensor.ClearField("raw_data")
    for name in ("float_data", "int32_data", "int64_data", "double_data"):
        tensor.ClearField(name)
    tensor.data_location = TensorProto.EXTERNAL
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def _is_external(tensor: TensorProto) -> bool:
    return tensor.data_location == TensorProto.EXTERNAL


class GraphSet:
    """Bundle-relative path -> graph, with the graphs' large initializers in one shared pool."""

    def __init__(self) -> None:
        self._models: dict[str, onnx.ModelProto] = {}
        self._pool: dict[str, np.ndarray] = {}

    def __contains__(self, relative: str) -> bool:
        return relative in self._models

    def __iter__(self) -> Iterator[str]:
        return iter(self._models)

    def add(self, relative: str, model: onnx.ModelProto) -> None:
        """Take ``model`` (its data inline) into the set; an initializer whose name is already pooled must
        hold the same values (two graphs reading "the same" weight differently would be a silent bug)."""
        for tensor in model.graph.initializer:
            if _is_external(tensor):
                if tensor.name not in self._pool:
                    raise ExportError(f"{relative}: initializer {tensor.name!r} is external but not in the pool")
                continue
            array = numpy_helper.to_array(tensor)
            if array.nbytes < MIN_EXTERNAL_BYTES:
                continue
            pooled = self._pool.get(tensor.name)
            if pooled is None:
                self._pool[tensor.name] = array
            elif pooled.dtype != array.dtype or not np.array_equal(pooled, array):
                raise ExportError(f"initializer {tensor.name!r} differs between the bundle's graphs; cannot share it")
            _set_external(tensor, _PLACEHOLDER, 0, array.nbytes)
        self._models[relative] = model

    def replace(self, relative: str, model: onnx.ModelProto) -> None:
        """Put a rewritten ``model`` (its data inline) in place of the graph at ``relative``."""
        del self._models[relative]
        self._drop_unreferenced()
        self.add(relative, model)

    def pop(self, relative: str) -> onnx.ModelProto:
        """Take the graph at ``relative`` out of the set (as held); its pooled weights stay for the graph that
        replaces it."""
        return self._models.pop(relative)

    def model(self, relative: str) -> onnx.ModelProto:
        """The graph as held (large initializers external): for reading its structure."""
        return self._models[relative]

    def materialized(self, relative: str) -> onnx.ModelProto:
        """A copy of the graph with every initializer's data inline: for passes that rewrite weights."""
        model = onnx.ModelProto()
        model.CopyFrom(self._models[relative])
        for index, tensor in enumerate(model.graph.initializer):
            if _is_external(tensor):
                model.graph.initializer[index].CopyFrom(numpy_helper.from_array(self._pool[tensor.name], tensor.name))
        return model

    def weights(self) -> dict[str, np.ndarray]:
        """The pooled initializers by name (shared, not copied)."""
        return self._pool

    def session(self, relative: str, options=None, providers: Sequence[str] = ("CPUExecutionProvider",)):
        """An ONNX Runtime session of the graph at ``relative``, built from memory."""
        import onnxruntime

        model = self._models[relative]
        if options is None:
            options = onnxruntime.SessionOptions()
            options.log_severity_level = 3  # a check's session, not the device's: warnings would only be noise
        names = [tensor.name for tensor in model.graph.initializer if _is_external(tensor)]
        if names:
            options.add_external_initializers(
                names, [onnxruntime.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(self._pool[n])) for n in names])
        return onnxruntime.InferenceSession(model.SerializeToString(), options, providers=list(providers))

    def write(self, root: Path, weights_file: str) -> None:
        """Write every graph under ``root`` (at its relative path) and the pool to ``weights_file``, which
        must sit in the graphs' folder."""
        folder = (root / weights_file).parent
        if any((root / relative).parent != folder for relative in self._models):
            raise ExportError("graphs that share a weights file must sit in the weights file's folder")
        folder.mkdir(parents=True, exist_ok=True)
        placed: dict[str, tuple[int, int]] = {}
        with open(root / weights_file, "wb") as handle:
            for name in self._referenced():
                array = np.ascontiguousarray(self._pool[name])
                handle.write(b"\0" * ((-handle.tell()) % _ALIGNMENT))
                placed[name] = (handle.tell(), array.nbytes)
                handle.write(array.tobytes())
        location = Path(weights_file).name
        for relative, model in self._models.items():
            for tensor in model.graph.initializer:
                if _is_external(tensor):
                    _set_external(tensor, location, *placed[tensor.name])
            onnx.save(model, str(root / relative))

    def _referenced(self) -> list[str]:
        seen: dict[str, None] = {}
        for model in self._models.values():
            for tensor in model.graph.initializer:
                if _is_external(tensor):
                    seen.setdefault(tensor.name)
        return list(seen)

    def _drop_unreferenced(self) -> None:
        keep = set(self._referenced())
        for name in [name for name in self._pool if name not in keep]:
            del self._pool[name]
