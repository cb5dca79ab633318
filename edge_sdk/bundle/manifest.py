"""The bundle manifest: what a bundle holds and how its graphs are called.

The manifest is the contract between the host that builds a bundle and the device that runs it, so it
is versioned: a device refuses a manifest whose schema is newer than the one it was written for.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from edge_sdk.bundle.paths import check_listed_paths, check_relative_path
from edge_sdk.errors import BundleError, BundleVersionError, EdgeSdkError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
# A manifest without a ``version`` predates bundle versions: it ranks below every versioned build (>= 1), so
# a device that accepted a versioned bundle refuses an old unversioned one of the same id.
UNVERSIONED = 0
# A manifest's file policy (``unlisted_files``): whether a full check tolerates files it does not list.
UNLISTED_FILES = ("allow", "refuse")
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


_REBUILD = "the bundle is damaged or was edited; copy it again or rebuild it with `edge-sdk build`"
_JSON_NAMES = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "a boolean", type(None): "null"}


def _found(value: Any) -> str:
    shown = repr(value)
    return f"{_JSON_NAMES.get(type(value), type(value).__name__)} {shown[:60] + '…' if len(shown) > 60 else shown}"


def _malformed(source: str, where: str, expected: str, value: Any) -> BundleError:
    return BundleError(f"{source}: field {where} must be {expected}, found {_found(value)}; {_REBUILD}")


def _is_int(value: Any) -> bool:
    # bool is an int subclass, but `true` is no count or size.
    return isinstance(value, int) and not isinstance(value, bool)


def _object(value: Any, source: str, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _malformed(source, where, "a JSON object", value)
    return value


def _required(data: dict[str, Any], key: str, source: str, where: str) -> Any:
    if key not in data:
        raise BundleError(f"{source}: field {where}.{key} is missing; {_REBUILD}" if where else
                          f"{source}: field {key} is missing; {_REBUILD}")
    return data[key]


def _string(value: Any, source: str, where: str, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise _malformed(source, where, "a string" + (" or null" if optional else ""), value)
    return value


def _integer(value: Any, source: str, where: str, minimum: int | None = None, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if not _is_int(value) or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise _malformed(source, where, f"an integer{bound}" + (" or null" if optional else ""), value)
    return value


def _strings(value: Any, source: str, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _malformed(source, where, "an array of strings", value)
    return list(value)


def _tensor_specs(value: Any, source: str, where: str) -> list[TensorSpec]:
    if not isinstance(value, list):
        raise _malformed(source, where, "an array of {name, dtype, shape} objects", value)
    specs = []
    for index, item in enumerate(value):
        at = f"{where}[{index}]"
        item = _object(item, source, at)
        shape = _required(item, "shape", source, at)
        if not isinstance(shape, list) or not all(_is_int(dim) or isinstance(dim, str) for dim in shape):
            raise _malformed(source, f"{at}.shape", "an array of integers and dimension names", shape)
        specs.append(TensorSpec(name=_string(_required(item, "name", source, at), source, f"{at}.name"),
                                dtype=_string(_required(item, "dtype", source, at), source, f"{at}.dtype"),
                                shape=list(shape)))
    return specs


def _writable_paths(value: Any, source: str) -> list[str]:
    """``writable_paths``: safe relative folder names, each ending in "/" (so ".cache/" never matches ".cachex")."""
    paths = _strings(value, source, "writable_paths")
    for number, path in enumerate(paths):
        if not path.endswith("/") or len(path) < 2:
            raise _malformed(source, f"writable_paths[{number}]", "a folder path ending in '/' (e.g. '.cache/')",
                             path)
        check_relative_path(path[:-1], f"{source}, writable_paths[{number}]")
    return paths


def _check_files(value: Any, source: str) -> None:
    """Types of the file list (FileEntry.from_dict checks the paths themselves)."""
    if not isinstance(value, list):
        raise _malformed(source, "files", "an array of {path, sha256, size} objects", value)
    for index, item in enumerate(value):
        at = f"files[{index}]"
        item = _object(item, source, at)
        _string(_required(item, "path", source, at), source, f"{at}.path")
        _string(_required(item, "sha256", source, at), source, f"{at}.sha256")
        _integer(_required(item, "size", source, at), source, f"{at}.size", minimum=0)


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
    # The accelerator's target graph of an int8-qdq profile (``targets/<profile>/``); absent before such profiles.
    target: dict[str, Any] | None = None
    # File policy: "refuse" makes a full check refuse any file the manifest does not list, except under
    # ``writable_paths`` (folders ending in "/" the device writes into: compile caches, the adapter store) and
    # the manifest and its signature. "allow", the default, is what bundles before this field meant.
    unlisted_files: str = "allow"
    writable_paths: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.bundle_id:
            self.bundle_id = default_bundle_id(str(self.model.get("source", "")), self.task)

    # Where the manifest was read from, named by every error about its content. A class attribute, not a
    # field: it is not part of the manifest and is not written by to_json.
    source: ClassVar[str] = MANIFEST_NAME

    def to_json(self) -> str:
        data = asdict(self)
        if data["target"] is None:  # bundles without a target graph keep the manifest they always had
            del data["target"]
        if data["unlisted_files"] == "allow" and not data["writable_paths"]:  # likewise without a file policy
            del data["unlisted_files"], data["writable_paths"]
        return json.dumps(data, indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = MANIFEST_NAME) -> Manifest:
        """Parse and type-check a manifest; anything wrong is a BundleError naming ``source`` and the field."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BundleError(f"{source} is not valid JSON ({exc}); {_REBUILD}") from exc
        except (ValueError, RecursionError) as exc:
            # ValueError: an integer literal longer than Python converts; RecursionError: arrays nested
            # thousands deep. Neither is something an SDK wrote.
            raise BundleError(f"{source} cannot be read as a manifest ({type(exc).__name__}: {exc}); "
                              f"{_REBUILD}") from exc
        if not isinstance(data, dict):
            raise BundleError(f"{source} must hold a JSON object, found {_found(data)}; {_REBUILD}")
        schema = data.get("schema_version")
        if not _is_int(schema) or schema < 1:
            raise BundleError(f"{source} has no integer schema_version >= 1 (found {_found(schema)}); {_REBUILD}")
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
        sections = {name: _object(_required(data, name, source, ""), source, name)
                    for name in ("model", "tokenizer", "peft", "training", "inference", "profile", "build")}
        target = data.get("target")
        if target is not None:
            TargetSpec.from_dict(_object(target, source, "target"), source)
        files = _required(data, "files", source, "")
        _check_files(files, source)
        unlisted_files = data.get("unlisted_files", "allow")
        if unlisted_files not in UNLISTED_FILES:
            raise _malformed(source, "unlisted_files", "'allow' or 'refuse'", unlisted_files)
        writable_paths = _writable_paths(data.get("writable_paths", []), source)
        sdk_version = _required(data, "sdk_version", source, "")
        if not isinstance(sdk_version, (str, int, float)) or isinstance(sdk_version, bool):
            raise _malformed(source, "sdk_version", "a version string", sdk_version)
        try:
            manifest = cls(
                task=_string(_required(data, "task", source, ""), source, "task"),
                labels=_strings(_required(data, "labels", source, ""), source, "labels"),
                max_length=_integer(_required(data, "max_length", source, ""), source, "max_length", minimum=1),
                inputs=_tensor_specs(_required(data, "inputs", source, ""), source, "inputs"),
                outputs=_tensor_specs(_required(data, "outputs", source, ""), source, "outputs"),
                trainable=_tensor_specs(_required(data, "trainable", source, ""), source, "trainable"),
                sdk_version=str(sdk_version),
                schema_version=schema,
                files=[FileEntry.from_dict(item) for item in files],
                bundle_id=bundle_id or "",
                version=version,
                target=dict(target) if target is not None else None,
                unlisted_files=unlisted_files,
                writable_paths=writable_paths,
                **{name: dict(section) for name, section in sections.items()},
            )
        except BundleError as exc:
            if source in str(exc):
                raise
            raise BundleError(f"{source}: {exc}") from exc
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{source} is missing or has a malformed field ({exc!r}); {_REBUILD}") from exc
        _check_file_entries(manifest.files, source)
        manifest.source = source
        return manifest

    @contextmanager
    def reading(self, where: str) -> Iterator[None]:
        """Turn a lookup in a section that has the wrong shape into a BundleError naming this manifest and
        ``where`` (the field); for code that reads parts of a section no typed property covers."""
        try:
            yield
        except BundleError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise BundleError(f"{self.source}: field {where} is missing or malformed ({type(exc).__name__}: "
                              f"{exc}); {_REBUILD}") from exc

    # --- typed reads of the sections (bundles of older SDKs included) ------------------------------------
    # Readers use these instead of string keys: a renamed or moved key then changes here only.

    @property
    def peft_spec(self) -> PeftSpec:
        with self.reading("peft"):
            return PeftSpec.from_manifest(self)

    @property
    def tokenizer_spec(self) -> TokenizerSpec:
        with self.reading("tokenizer"):
            return TokenizerSpec.from_dict(self.tokenizer, self.source)

    @property
    def inference_spec(self) -> InferenceSpec:
        with self.reading("inference"):
            return InferenceSpec.from_dict(self.inference, self.source)

    @property
    def portable_step(self) -> PortableStepSpec:
        with self.reading("training.portable"):
            return PortableStepSpec.from_dict(_required(self.training, "portable", self.source, "training"),
                                              self.source)

    @property
    def ort_training_files(self) -> dict[str, str]:
        """ONNX Runtime's training artifacts by key (training_model, eval_model, optimizer_model, checkpoint)."""
        files = _object(self.training.get("ort-training", {}), self.source, "training.ort-training")
        for key, value in files.items():
            _string(value, self.source, f"training.ort-training.{key}")
        return dict(files)

    @property
    def target_spec(self) -> TargetSpec | None:
        """The target graph of an int8-qdq profile (None: the bundle has none)."""
        if self.target is None:
            return None
        with self.reading("target"):
            return TargetSpec.from_dict(self.target, self.source)

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
        return _strings(self.training.get("backends", []), self.source, "training.backends")

    @property
    def max_batch_size(self) -> int | None:
        return _integer(self.training.get("max_batch_size"), self.source, "training.max_batch_size", minimum=1,
                        optional=True)

    @property
    def generation(self) -> dict[str, Any] | None:
        return self.inference_spec.generation

    def file(self, path: str) -> FileEntry:
        for entry in self.files:
            if entry.path == path:
                return entry
        raise BundleError(f"{self.source} lists no file {path!r}; {_REBUILD}")


_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _check_file_entries(files: list[FileEntry], source: str) -> None:
    """Refuse, naming the entry, a listed path that could leave the bundle folder (absolute, ``..``, ...), a
    duplicate or a malformed hash (the types were checked before): every reader then gets only safe paths."""
    check_listed_paths((entry.path for entry in files), source)
    for number, entry in enumerate(files):
        if not isinstance(entry.sha256, str) or not _SHA256.match(entry.sha256):
            raise BundleError(f"{source}, files[{number}] ({entry.path}): sha256 {entry.sha256!r} is not 64 "
                              "lowercase hex digits; rebuild the bundle")


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
    # FFA-LoRA (--freeze-lora-a): every LoRA A is frozen at the values in ``frozen_lora_a_file`` (bundle path),
    # whose digest (edge_sdk.bundle.frozen_lora.lora_a_digest) is ``frozen_lora_a_sha256``; the adapter is B and
    # the head. Bundles without the key train A.
    freeze_lora_a: bool = False
    frozen_lora_a_file: str | None = None
    frozen_lora_a_sha256: str | None = None

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> PeftSpec:
        peft, source = manifest.peft, manifest.source
        # Bundles before the two axes named both in one "method" string (and int8 compute in inference).
        method = peft.get("method")
        base = peft.get("base") or ("int8-compute" if manifest.inference.get("precision") == "int8"
                                    else "int8-storage" if method == "qlora" else "float32")
        adapter = peft.get("adapter") or ("dora" if method == "dora" else "lora")
        alpha = _required(peft, "alpha", source, "peft")
        if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha):
            raise _malformed(source, "peft.alpha", "a finite number", alpha)
        return cls(adapter=_string(adapter, source, "peft.adapter"), base=_string(base, source, "peft.base"),
                   rank=_integer(_required(peft, "rank", source, "peft"), source, "peft.rank", minimum=1),
                   alpha=float(alpha),
                   target_modules=_strings(_required(peft, "target_modules", source, "peft"), source,
                                           "peft.target_modules"),
                   modules_to_save=_strings(peft.get("modules_to_save") or [], source, "peft.modules_to_save"),
                   trainable_parameters=_integer(peft.get("trainable_parameters", 0), source,
                                                 "peft.trainable_parameters", minimum=0),
                   **_frozen_lora_a(peft, manifest, adapter))


def _frozen_lora_a(peft: dict[str, Any], manifest: Manifest, adapter: Any) -> dict[str, Any]:
    """PeftSpec's FFA-LoRA fields from ``peft.freeze_lora_a`` and ``peft.frozen_lora_a``, checked."""
    source = manifest.source
    freeze = peft.get("freeze_lora_a", False)
    if not isinstance(freeze, bool):
        raise _malformed(source, "peft.freeze_lora_a", "a boolean", freeze)
    record = peft.get("frozen_lora_a")
    if not freeze:
        if record is not None:
            raise BundleError(f"{source}: field peft.frozen_lora_a is set but peft.freeze_lora_a is not true; "
                              f"{_REBUILD}")
        return {}
    if adapter != "lora":
        raise BundleError(f"{source}: peft.freeze_lora_a is true with adapter {adapter!r}; only LoRA adapters "
                          f"freeze A; {_REBUILD}")
    record = _object(_required(peft, "frozen_lora_a", source, "peft"), source, "peft.frozen_lora_a")
    file = _string(_required(record, "file", source, "peft.frozen_lora_a"), source, "peft.frozen_lora_a.file")
    manifest.file(file)  # listed (so hashed and checked to stay inside the bundle) like every file
    digest = _required(record, "sha256", source, "peft.frozen_lora_a")
    if not isinstance(digest, str) or not _SHA256.match(digest):
        raise _malformed(source, "peft.frozen_lora_a.sha256", "64 lowercase hex digits", digest)
    return {"freeze_lora_a": True, "frozen_lora_a_file": file, "frozen_lora_a_sha256": digest}


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
    def from_dict(cls, data: dict[str, Any], source: str = MANIFEST_NAME) -> TokenizerSpec:
        data = _object(data, source, "tokenizer")
        padding_side = data.get("padding_side", "right")
        if padding_side not in ("left", "right"):
            raise _malformed(source, "tokenizer.padding_side", "'left' or 'right'", padding_side)
        adds_bos = data.get("adds_bos", False)
        if not isinstance(adds_bos, bool):
            raise _malformed(source, "tokenizer.adds_bos", "true or false", adds_bos)
        return cls(file=_string(_required(data, "file", source, "tokenizer"), source, "tokenizer.file"),
                   pad_token_id=_integer(_required(data, "pad_token_id", source, "tokenizer"), source,
                                         "tokenizer.pad_token_id", minimum=0),
                   padding_side=padding_side,
                   bos_token=_string(data.get("bos_token"), source, "tokenizer.bos_token", optional=True),
                   bos_token_id=_integer(data.get("bos_token_id"), source, "tokenizer.bos_token_id", minimum=0,
                                         optional=True),
                   adds_bos=adds_bos,
                   eos_token=_string(data.get("eos_token"), source, "tokenizer.eos_token", optional=True),
                   eos_token_id=_integer(data.get("eos_token_id"), source, "tokenizer.eos_token_id", minimum=0,
                                         optional=True),
                   chat_template=_string(data.get("chat_template"), source, "tokenizer.chat_template",
                                         optional=True))


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
    def from_dict(cls, data: dict[str, Any], source: str = MANIFEST_NAME) -> InferenceSpec:
        data = _object(data, source, "inference")
        generation = data.get("generation")
        if generation is not None:
            _object(generation, source, "inference.generation")
        return cls(model=_string(_required(data, "model", source, "inference"), source, "inference.model"),
                   weights=_string(data.get("weights"), source, "inference.weights", optional=True),
                   initial_adapter=_string(_required(data, "initial_adapter", source, "inference"), source,
                                           "inference.initial_adapter"),
                   precision=_string(data.get("precision", "fp32"), source, "inference.precision"),
                   int8_max_pair_sum=data.get("int8_max_pair_sum"), generation=generation)


@dataclass(frozen=True)
class PortableStepSpec:
    """The portable training step: its graph, weights, whether to prepack, and its state tensors' names."""

    model: str
    weights: str | None
    prepack_weights: bool
    names: dict[str, Any]

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = MANIFEST_NAME) -> PortableStepSpec:
        data = _object(data, source, "training.portable")
        prepack = data.get("prepack_weights", True)
        if not isinstance(prepack, bool):
            raise _malformed(source, "training.portable.prepack_weights", "true or false", prepack)
        return cls(model=_string(_required(data, "model", source, "training.portable"), source,
                                 "training.portable.model"),
                   weights=_string(data.get("weights"), source, "training.portable.weights", optional=True),
                   prepack_weights=prepack,
                   names=_object(_required(data, "names", source, "training.portable"), source,
                                 "training.portable.names"))


@dataclass(frozen=True)
class TargetSpec:
    """The static int8 graph an accelerator runs (the initial adapter merged in), and how it was made."""

    profile: str
    model: str                   # bundle path of the QDQ graph
    precision: str               # "int8-qdq"
    static_shapes: list[int]     # [batch, sequence]
    opset: int
    quantization: dict[str, Any]
    validation: dict[str, Any]   # against float32 on the CPU provider
    coverage: str | None         # bundle path of the operator-coverage report
    calibration: str | None      # bundle path of the stored calibration inputs (what `adapters deploy` reuses)
    provider_config: str | None  # bundle path of the provider's configuration file (vaip_config.json)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = MANIFEST_NAME) -> TargetSpec:
        data = _object(data, source, "target")
        shapes = _required(data, "static_shapes", source, "target")
        if not isinstance(shapes, list) or len(shapes) != 2 or not all(_is_int(dim) and dim >= 1 for dim in shapes):
            raise _malformed(source, "target.static_shapes", "[batch, sequence] (two integers >= 1)", shapes)
        return cls(profile=_string(_required(data, "profile", source, "target"), source, "target.profile"),
                   model=_string(_required(data, "model", source, "target"), source, "target.model"),
                   precision=_string(_required(data, "precision", source, "target"), source, "target.precision"),
                   static_shapes=list(shapes),
                   opset=_integer(_required(data, "opset", source, "target"), source, "target.opset", minimum=1),
                   quantization=_object(_required(data, "quantization", source, "target"), source,
                                        "target.quantization"),
                   validation=_object(_required(data, "validation", source, "target"), source, "target.validation"),
                   coverage=_string(data.get("coverage"), source, "target.coverage", optional=True),
                   calibration=_string(data.get("calibration"), source, "target.calibration", optional=True),
                   provider_config=_string(data.get("provider_config"), source, "target.provider_config",
                                           optional=True))
