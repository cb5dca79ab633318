"""The `ort-training` backend: ONNX Runtime's on-device training API over the bundle's four artifacts.

`onnxruntime.training.api` imports torch, so the same classes are used through the compiled module,
which the training build ships and which needs nothing but numpy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_sdk.bundle.store import Bundle
from edge_sdk.device.ort_errors import ort_errors
from edge_sdk.errors import DependencyError
from edge_sdk.profiles import profile_from_dict

_STATE_FILE = "ort-training.ckpt"


def _training_module():
    from onnxruntime.capi import _pybind_state as capi

    if not all(hasattr(capi, name) for name in ("Module", "Optimizer", "load_checkpoint")):
        raise DependencyError(
            "the ort-training backend needs the ONNX Runtime training build; install it with "
            "`pip install edge-sdk[device-training]` (onnxruntime-training-cpu, Python <= 3.11, x86_64)"
        )
    return capi


class OrtTrainingBackend:
    name = "ort-training"

    def __init__(self, bundle: Bundle, threads: int | None = None) -> None:
        files = bundle.manifest.ort_training_files
        self._setup({key: str(bundle.path(path)) for key, path in files.items()}, bundle.manifest.profile,
                    [spec.name for spec in bundle.manifest.trainable], threads)

    @classmethod
    def from_files(cls, paths: dict[str, str], profile: dict, trainable: list[str],
                   threads: int | None = None) -> OrtTrainingBackend:
        """A backend over artifacts that are not (yet) in a bundle: the build checks against them this way."""
        backend = cls.__new__(cls)
        backend._setup(paths, profile, trainable, threads)
        return backend

    def _setup(self, paths: dict[str, str], profile: dict, trainable: list[str], threads: int | None) -> None:
        self._capi = capi = _training_module()
        self._paths = paths
        self._options = profile_from_dict(profile).session_options(threads)
        self._device = capi.OrtDevice(capi.OrtDevice.cpu(), capi.OrtDevice.default_memory(), 0)
        self._trainable = list(trainable)
        self._input_order: list[str] = []
        self._optimizer = self._module = self._state = None
        self._open(None)

    def _open(self, weights: dict[str, np.ndarray] | None, checkpoint: str | None = None) -> None:
        """Load a checkpoint (the bundle's by default), optionally overwrite its trainable values, and
        attach an optimizer (fresh, unless the checkpoint carries optimizer state)."""
        capi = self._capi
        self._release()
        # Each artifact is loaded under its own name, so a damaged one is named in the error.
        checkpoint = checkpoint or self._paths["checkpoint"]
        with ort_errors(checkpoint, "load"):
            self._state = state = capi.load_checkpoint(checkpoint)
        # The module must exist before parameters are written: it gives the state its data-transfer
        # manager (writing earlier crashes), and the optimizer created after it starts with zero moments.
        with ort_errors(f"{self._paths['training_model']} or {self._paths['eval_model']}", "load"):
            self._module = capi.Module(self._paths["training_model"], state, self._paths["eval_model"],
                                       self._device, self._options)
        with ort_errors(checkpoint, "run"):
            for name, value in (weights or {}).items():
                array = np.ascontiguousarray(value, dtype=np.float32)
                state.copy_parameter_from(name, capi.OrtValue.ortvalue_from_numpy(array, self._device))
        with ort_errors(self._paths["optimizer_model"], "load"):
            self._optimizer = capi.Optimizer(self._paths["optimizer_model"], state, self._device, self._options)
        self._input_order = list(self._module.input_names(True))

    def _release(self) -> None:
        # The optimizer and module hold raw pointers into the checkpoint state: free them first, in
        # that order. Replacing the state while they live corrupts the heap (seen as aborts at exit).
        self._optimizer = None
        self._module = None
        self._state = None

    def close(self) -> None:
        """Free the ONNX Runtime objects now, in a safe order (also done when the backend is collected)."""
        self._release()

    def __del__(self) -> None:
        self._release()

    def save_state(self, folder: Path) -> None:
        """Parameters and AdamW state, in ONNX Runtime's checkpoint format."""
        with ort_errors(folder / _STATE_FILE, "run"):
            self._capi.save_checkpoint(self._state, str(folder / _STATE_FILE), True)

    def load_state(self, folder: Path) -> None:
        self._open(None, checkpoint=str(folder / _STATE_FILE))

    def load_weights(self, weights: dict[str, np.ndarray]) -> None:
        self._open({name: weights[name] for name in self._trainable})

    def train_step(self, feeds: dict[str, np.ndarray], learning_rate: float) -> float:
        fetches = self._capi.OrtValueVector()
        self._optimizer.set_learning_rate(float(learning_rate))
        with ort_errors(self._paths["training_model"], "run"):
            self._module.train_step([feeds[name] for name in self._input_order], fetches)
        with ort_errors(self._paths["optimizer_model"], "run"):
            self._optimizer.optimizer_step()
        self._module.lazy_reset_grad()
        return float(fetches[0].numpy())

    def weights(self) -> dict[str, np.ndarray]:
        return {name: self._state.get_parameter(name).data.numpy().copy() for name in self._trainable}
