"""The bundle format: a versioned manifest plus files with their sha256, shared by host and device.

Pure Python and numpy: imported on both sides, never imports torch.
"""

from edge_sdk.bundle.archive import pack_bundle, unpack_bundle
from edge_sdk.bundle.manifest import SCHEMA_VERSION, FileEntry, Manifest, TensorSpec
from edge_sdk.bundle.store import BundleWriter, open_bundle, verify_bundle

__all__ = [
    "SCHEMA_VERSION",
    "BundleWriter",
    "FileEntry",
    "Manifest",
    "TensorSpec",
    "open_bundle",
    "pack_bundle",
    "unpack_bundle",
    "verify_bundle",
]
