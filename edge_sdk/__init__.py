"""edge-sdk: build adaptable ONNX bundles from Hugging Face models, personalize and run them on devices.

The device-side API is importable without torch; host-side building lives in ``edge_sdk.host``.
"""

from __future__ import annotations

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

__all__ = [
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
