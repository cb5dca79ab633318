"""The bundle manifest: what a bundle holds and how its graphs are called.

The manifest is the contract between the host that builds a bundle and the device that runs it, so it
is versioned: a device refuses a manifest whose schema is newer than the one it was written for.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from edge_sdk.bundle.paths import check_listed_paths
from edge_sdk.errors import BundleError, BundleVersionError, EdgeSdkError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
# A manifest without a ``version`` predates bundle versions: it ranks below every versioned build (>= 1), so
# a device that accepted a versioned bundle refuses an old unversioned one of the same id.
UNVERSIONED = 0
_BUNDLE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_bundle_id(value: object, where: str, error: type[EdgeSdkError] = BundleError) -> str:
    """``value`` if it is a valid bundle id (1-128 letters, digits, ``.``, ``_``, ``-``; starting with a letter
    or digit), else ``error`` naming ``where`` (a flag, recipe key or manifest file)."""
    if not isinstance(value, str) or not _BUNDLE_ID.fullmatch(value):
        raise error(
            f"{where}: bundle id {value!r} is not valid; use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (e.g. 'minilm-topics')"
        )
    return value


def check_bundle_version(value: object, where: str, error: type[EdgeSdkError] = BundleError) -> int:
    """``value`` if it is a bundle version (an integer >= 1), else ``error`` naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise error(f"{where}: bundle version {value!r} is not valid; use an integer >= 1 (e.g. 1, 2, 3)")
    return value


def default_bundle_id(name: str, task: str) -> str:
    """A bundle id from a model or recipe name and the task: ``models/minilm-topics.toml`` and ``seq-cls`` give
    ``minilm-topics-seq-cls``. Deterministic, so rebuilding the same source keeps its id."""
    stem = re.split(r"[\\/]", name.rstrip("/\\"))[-1]
    for suffix in (".toml", ".gguf"):
        stem = stem.removesuffix(suffix)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._")
    return f"{slug}-{task}"[:128] if slug else task


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
    # What the device's rollback protection compares: bundles with one id form a release line whose
    # ``version`` only grows. An empty id is derived from the model source and the task.
    bundle_id: str = ""
    version: int = 1

    def __post_init__(self) -> None:
        if not self.bundle_id:
            self.bundle_id = default_bundle_id(str(self.model.get("source", "")), self.task)

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
        schema = data.get("schema_version")
        if not isinstance(schema, int):
            raise BundleError(f"{source} has no integer schema_version (found {schema!r}); rebuild the bundle")
        if schema > SCHEMA_VERSION:
            raise BundleVersionError(
                f"{source} uses bundle schema version {schema}, but this edge-sdk reads versions up to "
                f"{SCHEMA_VERSION}; upgrade edge-sdk on this device or rebuild the bundle with a matching SDK"
            )
        bundle_id = data.get("bundle_id")
        if bundle_id is not None:
            check_bundle_id(bundle_id, f"{source}, key 'bundle_id'")
        version = data.get("version", UNVERSIONED)
        if "version" in data:
            check_bundle_version(version, f"{source}, key 'version'")
        try:
            manifest = cls(
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
                schema_version=schema,
                files=[FileEntry.from_dict(item) for item in data["files"]],
                bundle_id=bundle_id or "",
                version=version,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{source} is missing or has a malformed field ({exc!r}); rebuild the bundle") from exc
        _check_files(manifest.files, source)
        return manifest

    # --- typed reads of the sections (bundles of older SDKs included) ------------------------------------
    # Readers use these instead of string keys: a renamed or moved key then changes here only.

    @property
    def peft_spec(self) -> PeftSpec:
        return PeftSpec.from_manifest(self)

    @property
    def tokenizer_spec(self) -> TokenizerSpec:
        return TokenizerSpec.from_dict(self.tokenizer)

    @property
    def inference_spec(self) -> InferenceSpec:
        return InferenceSpec.from_dict(self.inference)

    @property
    def portable_step(self) -> PortableStepSpec:
        return PortableStepSpec.from_dict(self.training["portable"])

    @property
    def ort_training_files(self) -> dict[str, str]:
        """ONNX Runtime's training artifacts by key (training_model, eval_model, optimizer_model, checkpoint)."""
        return dict(self.training.get("ort-training", {}))

    @property
    def adapter(self) -> str:
        return self.peft_spec.adapter

    @property
    def base(self) -> str:
        return self.peft_spec.base

    @property
    def compute_precision(self) -> str:
        return self.inference_spec.precision

    @property
    def training_backends(self) -> list[str]:
        return list(self.training.get("backends", []))

    @property
    def max_batch_size(self) -> int | None:
        return self.training.get("max_batch_size")

    @property
    def generation(self) -> dict[str, Any] | None:
        return self.inference_spec.generation

    def file(self, path: str) -> FileEntry:
        for entry in self.files:
            if entry.path == path:
                return entry
        raise BundleError(f"the manifest lists no file {path!r}; rebuild the bundle")


_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _check_files(files: list[FileEntry], source: str) -> None:
    """Refuse, naming the entry, a listed path that could leave the bundle folder (absolute, ``..``, ...), a
    duplicate, a malformed hash or a negative size: every reader of the manifest then gets only safe paths."""
    check_listed_paths((entry.path for entry in files), source)
    for number, entry in enumerate(files):
        if not isinstance(entry.sha256, str) or not _SHA256.match(entry.sha256):
            raise BundleError(f"{source}, files[{number}] ({entry.path}): sha256 {entry.sha256!r} is not 64 "
                              "lowercase hex digits; rebuild the bundle")
        if entry.size < 0:
            raise BundleError(f"{source}, files[{number}] ({entry.path}): negative size {entry.size}; "
                              "rebuild the bundle")


@dataclass(frozen=True)
class PeftSpec:
    """The adapter: its kind, the frozen base's storage, and LoRA's shape."""

    adapter: str                 # "lora" or "dora"
    base: str                    # "float32", "int8-storage" or "int8-compute"
    rank: int
    alpha: float
    target_modules: list[str]
    modules_to_save: list[str]   # modules trained whole (a new classifier head)
    trainable_parameters: int

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> PeftSpec:
        peft = manifest.peft
        # Bundles before the two axes named both in one "method" string (and int8 compute in inference).
        method = peft.get("method")
        base = peft.get("base") or ("int8-compute" if manifest.inference.get("precision") == "int8"
                                    else "int8-storage" if method == "qlora" else "float32")
        return cls(adapter=peft.get("adapter") or ("dora" if method == "dora" else "lora"), base=base,
                   rank=int(peft["rank"]), alpha=float(peft["alpha"]), target_modules=list(peft["target_modules"]),
                   modules_to_save=list(peft.get("modules_to_save") or []),
                   trainable_parameters=int(peft.get("trainable_parameters", 0)))


@dataclass(frozen=True)
class TokenizerSpec:
    """What the device tokenizer needs beyond tokenizer.json."""

    file: str
    pad_token_id: int
    padding_side: str
    bos_token: str | None
    bos_token_id: int | None
    adds_bos: bool               # plain text starts with the begin-of-text token
    eos_token: str | None
    eos_token_id: int | None
    chat_template: str | None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenizerSpec:
        return cls(file=data["file"], pad_token_id=int(data["pad_token_id"]),
                   padding_side=data.get("padding_side", "right"), bos_token=data.get("bos_token"),
                   bos_token_id=data.get("bos_token_id"), adds_bos=bool(data.get("adds_bos", False)),
                   eos_token=data.get("eos_token"), eos_token_id=data.get("eos_token_id"),
                   chat_template=data.get("chat_template"))


@dataclass(frozen=True)
class InferenceSpec:
    """The inference graph, its shared weights, the initial adapter and what the frozen layers compute in."""

    model: str
    weights: str | None
    initial_adapter: str
    precision: str               # "fp32" or "int8"
    int8_max_pair_sum: Any       # int8: the largest pair of integer products a stored matrix allows
    generation: dict[str, Any] | None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InferenceSpec:
        return cls(model=data["model"], weights=data.get("weights"), initial_adapter=data["initial_adapter"],
                   precision=data.get("precision", "fp32"), int8_max_pair_sum=data.get("int8_max_pair_sum"),
                   generation=data.get("generation"))


@dataclass(frozen=True)
class PortableStepSpec:
    """The portable training step: its graph, weights, whether to prepack, and its state tensors' names."""

    model: str
    weights: str | None
    prepack_weights: bool
    names: dict[str, Any]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PortableStepSpec:
        return cls(model=data["model"], weights=data.get("weights"),
                   prepack_weights=bool(data.get("prepack_weights", True)), names=data["names"])
