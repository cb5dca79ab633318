"""The `portable` backend: one standard-ONNX graph per optimizer step, run by any stock onnxruntime.

Parameters and AdamW moments stay ONNX Runtime values between steps. Two preallocated sets of buffers
alternate as inputs and outputs (a step reads one and writes the other), bound with IO binding, so
the state never round-trips through numpy during training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from edge_sdk.bundle.store import Bundle
from edge_sdk.device.ort_errors import open_session, ort_errors
from edge_sdk.profiles import CPU, profile_from_dict

_STATE_FILE = "portable-state.safetensors"


def step_session_options(prepack_weights: bool, profile: dict, threads: int | None = None):
    """Session options of the training step: the profile's, without prepacking where the bundle says so."""
    options = profile_from_dict(profile).session_options(threads)
    if not prepack_weights:
        # Prepacking keeps a packed copy of a weight per product reading it (the forward pass reads it
        # transposed, the backward as stored): SmolLM2-135M's step 1,873 -> 1,256 MiB without, about 4% slower.
        options.add_session_config_entry("session.disable_prepacking", "1")
    return options


class PortableBackend:
    name = "portable"

    def __init__(self, bundle: Bundle, threads: int | None = None) -> None:
        manifest = bundle.manifest
        step = manifest.portable_step
        graph = bundle.path(step.model)
        options = step_session_options(step.prepack_weights, manifest.profile, threads)
        # Training stays on ONNX Runtime's CPU provider whatever the profile's accelerator (gradients are not
        # accelerated); the profile's session settings still apply.
        self._setup(open_session(graph, options, (CPU,)), graph, step.names,
                    manifest.trainable, load_file(str(bundle.path(manifest.inference_spec.initial_adapter))))

    @classmethod
    def from_session(cls, session, graph: Path | str, names: dict, trainable: list,
                     initial: dict[str, np.ndarray]) -> PortableBackend:
        """A backend over a step session made elsewhere (``graph`` names it in errors): the build checks its
        in-memory step this way."""
        backend = cls.__new__(cls)
        backend._setup(session, graph, names, trainable, initial)
        return backend

    def _setup(self, session, graph: Path | str, names: dict, trainable: list, initial: dict[str, np.ndarray]) -> None:
        import onnxruntime

        self._ort = onnxruntime
        self._session = session
        self._graph = graph
        self._names = names
        self._trainable = [tensor.name for tensor in trainable]
        self._shapes = {tensor.name: [int(d) for d in tensor.shape] for tensor in trainable}
        # Each state tensor (a parameter and its two moments, all of the parameter's shape):
        # (input name, output name, shape).
        self._state_names = [
            (state, self._names["updated"][state], self._shapes[name])
            for name in self._trainable
            for state in (name, self._names["first_moment"][name], self._names["second_moment"][name])
        ]
        self._buffers = [self._allocate(), self._allocate()]
        self._current = 0
        self._step = 0
        self.load_weights(initial)

    def _allocate(self) -> dict[str, object]:
        return {name: self._ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float32, "cpu", 0)
                for name, _, shape in self._state_names}

    def load_weights(self, weights: dict[str, np.ndarray]) -> None:
        """Set the parameters, zero both AdamW moments and the step count (a fresh optimizer)."""
        current = self._buffers[self._current]
        for name in self._trainable:
            current[name].update_inplace(np.ascontiguousarray(weights[name], dtype=np.float32))
            for moment in ("first_moment", "second_moment"):
                current[self._names[moment][name]].update_inplace(np.zeros(self._shapes[name], np.float32))
        self._step = 0

    def save_state(self, folder: Path) -> None:
        """Parameters, AdamW moments and the step count, as one safetensors file."""
        current = self._buffers[self._current]
        save_file({name: current[name].numpy() for name, _, _ in self._state_names}, str(folder / _STATE_FILE),
                  metadata={"step": str(self._step)})

    def load_state(self, folder: Path) -> None:
        path = str(folder / _STATE_FILE)
        values = load_file(path)
        current = self._buffers[self._current]
        for name, _, _ in self._state_names:
            current[name].update_inplace(np.ascontiguousarray(values[name]))
        with safe_open(path, framework="numpy") as handle:
            self._step = int(handle.metadata()["step"])

    def train_step(self, feeds: dict[str, np.ndarray], learning_rate: float) -> float:
        with ort_errors(self._graph):  # binding checks names and types too, before the run
            return self._train_step(feeds, learning_rate)

    def _train_step(self, feeds: dict[str, np.ndarray], learning_rate: float) -> float:
        source, target = self._buffers[self._current], self._buffers[1 - self._current]
        binding = self._session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        binding.bind_cpu_input(self._names["step"], np.asarray(self._step, dtype=np.int64))
        binding.bind_cpu_input(self._names["learning_rate"], np.asarray(learning_rate, dtype=np.float32))
        for input_name, output_name, _ in self._state_names:
            binding.bind_ortvalue_input(input_name, source[input_name])
            binding.bind_ortvalue_output(output_name, target[input_name])
        binding.bind_output(self._names["loss"], "cpu")
        self._session.run_with_iobinding(binding)
        self._current = 1 - self._current
        self._step += 1
        return float(binding.get_outputs()[-1].numpy())

    def weights(self) -> dict[str, np.ndarray]:
        current = self._buffers[self._current]
        return {name: current[name].numpy().copy() for name in self._trainable}

    def close(self) -> None:
        self._buffers = []
        self._session = None
