"""edge-sdk: build adaptable ONNX bundles from Hugging Face models, personalize and run them on devices.

The device-side API is importable without torch; host-side building lives in ``edge_sdk.host``.
"""

from __future__ import annotations

import logging

from edge_sdk.errors import (
    AdapterError,
    BundleError,
    BundleIntegrityError,
    BundleVersionError,
    ConfigError,
    DataError,
    DependencyError,
    EdgeSdkError,
    ExportError,
    ModelSourceError,
    TargetModuleError,
)

__version__ = "0.1.0"

# With the `quantized` extra installed, `import peft` imports bitsandbytes, whose CPU backend warns on every start
# on CPUs with AVX-512 BF16 that the optional `kernels` package (a bf16 inference kernel) is missing. That is the
# only message of that logger, and the SDK never uses the kernel (edge_sdk.finetune.quantized_base turns it off).
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

# Lazy re-exports: `import edge_sdk` must not load ONNX Runtime, and the host names must not load torch
# on a device that only ever touches the device runtime.
_LAZY = {
    "DeviceBundle": "edge_sdk.device.runtime",
    "TrainingSettings": "edge_sdk.device.personalize",
    "open_bundle": "edge_sdk.bundle.store",
    "verify_bundle": "edge_sdk.bundle.store",
    "build_bundle": "edge_sdk.host.build",
    "BuildConfig": "edge_sdk.host.config",
    "load_recipe": "edge_sdk.host.config",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edge_sdk' has no attribute {name!r}")

__all__ = [
    "BuildConfig",
    "DeviceBundle",
    "TrainingSettings",
    "build_bundle",
    "load_recipe",
    "open_bundle",
    "verify_bundle",
    "AdapterError",
    "BundleError",
    "BundleIntegrityError",
    "BundleVersionError",
    "ConfigError",
    "DataError",
    "DependencyError",
    "EdgeSdkError",
    "ExportError",
    "ModelSourceError",
    "TargetModuleError",
    "__version__",
]
