"""Training backends behind one small interface (see :class:`TrainingBackend`)."""

from __future__ import annotations

from edge_sdk.bundle.store import Bundle
from edge_sdk.device.backends.base import TrainingBackend
from edge_sdk.errors import ConfigError

BACKEND_NAMES = ("auto", "ort-training")


def create_backend(name: str, bundle: Bundle, threads: int | None = None) -> TrainingBackend:
    """Instantiate the training backend ``name`` for ``bundle`` (``auto`` picks what is installed)."""
    supported = bundle.manifest.training.get("backends", [])
    if name not in BACKEND_NAMES:
        raise ConfigError(f"unknown training backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}")
    chosen = "ort-training" if name == "auto" else name
    if chosen not in supported:
        raise ConfigError(
            f"bundle {str(bundle.root)!r} has no artifacts for backend {chosen!r}; it supports "
            f"{', '.join(supported) or 'none'}; rebuild it with a newer edge-sdk"
        )
    from edge_sdk.device.backends.ort_training import OrtTrainingBackend

    return OrtTrainingBackend(bundle, threads=threads)


__all__ = ["BACKEND_NAMES", "TrainingBackend", "create_backend"]
