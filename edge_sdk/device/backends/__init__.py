"""Training backends behind one small interface (see :class:`TrainingBackend`)."""

from __future__ import annotations

from edge_sdk.bundle.store import Bundle
from edge_sdk.device.backends.base import TrainingBackend
from edge_sdk.errors import ConfigError

BACKEND_NAMES = ("auto", "ort-training", "portable")


def create_backend(name: str, bundle: Bundle, threads: int | None = None) -> TrainingBackend:
    """Instantiate the training backend ``name`` for ``bundle`` (``auto`` picks what is installed)."""
    supported = bundle.manifest.training_backends
    chosen = resolve_backend_name(name, supported)
    precision = bundle.manifest.compute_precision
    if chosen not in supported and precision != "fp32":
        raise ConfigError(f"bundle {str(bundle.root)!r} is an {precision} build, which trains with the "
                          f"{', '.join(supported)} backend only (its frozen layers run in {precision}); use "
                          "--backend auto or portable")
    if chosen not in supported:
        raise ConfigError(
            f"bundle {str(bundle.root)!r} has no artifacts for backend {chosen!r}; it supports "
            f"{', '.join(supported) or 'none'}; rebuild it with a newer edge-sdk"
        )
    if chosen == "portable":
        from edge_sdk.device.backends.portable import PortableBackend

        return PortableBackend(bundle, threads=threads)
    from edge_sdk.device.backends.ort_training import OrtTrainingBackend

    return OrtTrainingBackend(bundle, threads=threads)


def resolve_backend_name(name: str, supported: list[str]) -> str:
    """The backend ``name`` stands for (``auto``: ort-training where installed and built, else portable)."""
    if name not in BACKEND_NAMES:
        raise ConfigError(f"unknown training backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}")
    if name == "auto":
        # The training build is ONNX Runtime's own path; stock builds (newer Python, ARM, NPU/FPGA
        # providers) take the portable step.
        return "ort-training" if training_build_installed() and "ort-training" in supported else "portable"
    return name


def training_build_installed() -> bool:
    """Whether the installed onnxruntime is the training build (it has the on-device training API)."""
    from onnxruntime.capi import _pybind_state as capi

    return hasattr(capi, "Module") and hasattr(capi, "load_checkpoint")


__all__ = ["BACKEND_NAMES", "TrainingBackend", "create_backend", "resolve_backend_name", "training_build_installed"]
