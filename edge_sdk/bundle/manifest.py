"""The bundle manifest: what a bundle holds and how its graphs are called.

The manifest is the contract between the host that builds a bundle and the device that runs it, so it
is versioned: a device refuses a manifest whose schema is newer than the one it was written for.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from edge_sdk.errors import BundleError, BundleVersionError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class TensorSpec:
    """Name, element type and shape of a graph input, output or parameter (str dims are symbolic)."""

    name: str
    dtype: str
    shape: list[int | str]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorSpec:
        return cls(name=data["name"], dtype=data["dtype"], shape=list(data["shape"]))


@dataclass(frozen=True)
class FileEntry:
    """One file of the bundle, relative to its root, with the hash recorded at build time."""

    path: str
    sha256: str
    size: int

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FileEntry:
        return cls(path=data["path"], sha256=data["sha256"], size=int(data["size"]))


@dataclass
class Manifest:
    """Everything a device needs to know about a bundle, serialised as ``manifest.json``."""

    task: str
    labels: list[str]
    model: dict[str, Any]
    tokenizer: dict[str, Any]
    max_length: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    trainable: list[TensorSpec]
    peft: dict[str, Any]
    training: dict[str, Any]
    inference: dict[str, Any]
    profile: dict[str, Any]
    build: dict[str, Any]
    sdk_version: str
    schema_version: int = SCHEMA_VERSION
    files: list[FileEntry] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = MANIFEST_NAME) -> Manifest:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BundleError(f"{source} is not valid JSON ({exc}); the bundle is damaged, rebuild it") from exc
        if not isinstance(data, dict):
            raise BundleError(f"{source} must hold a JSON object, found {type(data).__name__}; rebuild the bundle")
        version = data.get("schema_version")
        if not isinstance(version, int):
            raise BundleError(f"{source} has no integer schema_version (found {version!r}); rebuild the bundle")
        if version > SCHEMA_VERSION:
            raise BundleVersionError(
                f"{source} uses bundle schema version {version}, but this edge-sdk reads versions up to "
                f"{SCHEMA_VERSION}; upgrade edge-sdk on this device or rebuild the bundle with a matching SDK"
            )
        try:
            return cls(
                task=data["task"],
                labels=list(data["labels"]),
                model=dict(data["model"]),
                tokenizer=dict(data["tokenizer"]),
                max_length=int(data["max_length"]),
                inputs=[TensorSpec.from_dict(item) for item in data["inputs"]],
                outputs=[TensorSpec.from_dict(item) for item in data["outputs"]],
                trainable=[TensorSpec.from_dict(item) for item in data["trainable"]],
                peft=dict(data["peft"]),
                training=dict(data["training"]),
                inference=dict(data["inference"]),
                profile=dict(data["profile"]),
                build=dict(data["build"]),
                sdk_version=str(data["sdk_version"]),
                schema_version=version,
                files=[FileEntry.from_dict(item) for item in data["files"]],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{source} is missing or has a malformed field ({exc!r}); rebuild the bundle") from exc

    def file(self, path: str) -> FileEntry:
        for entry in self.files:
            if entry.path == path:
                return entry
        raise BundleError(f"the manifest lists no file {path!r}; rebuild the bundle")
