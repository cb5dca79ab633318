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

    # --- typed reads of the sections (bundles of older SDKs included) ------------------------------------

    @property
    def adapter(self) -> str:
        """How the adapter is parametrised: "lora" or "dora" (older bundles named it in ``peft.method``)."""
        return self.peft.get("adapter") or ("dora" if self.peft.get("method") == "dora" else "lora")

    @property
    def base(self) -> str:
        """How the frozen base is stored and computes: "float32", "int8-storage" or "int8-compute"."""
        if "base" in self.peft:
            return self.peft["base"]
        if self.compute_precision == "int8":
            return "int8-compute"
        return "int8-storage" if self.peft.get("method") == "qlora" else "float32"

    @property
    def compute_precision(self) -> str:
        """What the frozen linear layers of the graphs compute in: "fp32" or "int8"."""
        return self.inference.get("precision", "fp32")

    @property
    def training_backends(self) -> list[str]:
        return list(self.training.get("backends", []))

    @property
    def max_batch_size(self) -> int | None:
        return self.training.get("max_batch_size")

    @property
    def generation(self) -> dict[str, Any] | None:
        """The generation graphs' spec of a text-generating bundle."""
        return self.inference.get("generation")

    def file(self, path: str) -> FileEntry:
        for entry in self.files:
            if entry.path == path:
                return entry
        raise BundleError(f"the manifest lists no file {path!r}; rebuild the bundle")
