"""What a build reads and which software shaped it: the inputs a reproducible build is a function of.

The same inputs give a byte-identical bundle (see docs/pipeline-builds.md). They are:

* the files the build reads, each hashed: the model's files (the ones transformers loads, not its README or
  another framework's weights), the recipe, a label file, a starting PEFT adapter, calibration data, a
  profile file and the signing key;
* the resolved settings (the recipe and flags after defaults);
* the versions of the SDK (and a hash of its own source, so a development checkout that changed counts as
  another SDK) and of every library that writes bytes into the bundle;
* ``SOURCE_DATE_EPOCH``, the only clock a build reads.

The manifest records the hashes and versions (``build.inputs``, ``build.versions``); the build cache keys on
all of it; ``--depfile`` lists the files for Make and Ninja.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import edge_sdk
from edge_sdk.bundle.verification import sha256_file
from edge_sdk.device.peft_format import CONFIG_FILE, WEIGHTS_FILE
from edge_sdk.errors import ConfigError

if TYPE_CHECKING:
    from edge_sdk.host.config import BuildConfig

# Distributions whose code writes bytes into a bundle: the exporter, PEFT's initialisation, the graph tools,
# ONNX Runtime's training-artifact generator and optimizer, the tokenizer serializer.
SHAPING_DISTRIBUTIONS = (
    "torch", "transformers", "peft", "onnx", "onnxscript", "onnxruntime-training-cpu", "onnxruntime",
    "numpy", "tokenizers", "safetensors", "gguf",
)
_SDK_SOURCE_SUFFIXES = (".py", ".toml", ".json")

# Files in a model folder that transformers never reads for a PyTorch model: documentation, images, and
# weights of other frameworks or formats. Everything else at the folder's top level counts as an input.
_IGNORED_MODEL_SUFFIXES = (".md", ".png", ".jpg", ".jpeg", ".gif", ".h5", ".msgpack", ".ot", ".onnx", ".tflite",
                           ".mlmodel", ".gguf", ".ckpt", ".lock")
_IGNORED_MODEL_PREFIXES = ("LICENSE", "LICENCE", "NOTICE", "README", "USE_POLICY")
_TORCH_WEIGHT_PREFIXES = ("pytorch_model", "model.pt", "consolidated")  # not read when safetensors are there


@dataclass(frozen=True)
class InputFile:
    """One file a build reads: its role, where it is, the stable name the manifest gives it, and its hash."""

    role: str       # model | recipe | labels | adapter | calibration | profile | signing-key
    path: Path      # absolute
    name: str       # the file's name (what the manifest records: no folder, so no machine's path)
    sha256: str
    size: int


def _file(role: str, path: Path) -> InputFile:
    try:
        size = path.stat().st_size
        digest = sha256_file(path)
    except OSError as exc:
        raise ConfigError(f"cannot read the build input {str(path)!r} ({role}): {exc.strerror or exc}") from exc
    return InputFile(role=role, path=path.resolve(), name=path.name, sha256=digest, size=size)


def model_files(folder: Path, gguf_file: str | None = None) -> list[Path]:
    """The files of a model folder a build reads: a GGUF model's file and its JSON side files; otherwise every
    top-level file but documentation and weights transformers would not load (see the lists above)."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if gguf_file is not None:
        return [p for p in files if p.name == gguf_file or p.suffix == ".json"]
    has_safetensors = any(p.suffix == ".safetensors" or p.name.endswith(".safetensors.index.json") for p in files)
    chosen = []
    for path in files:
        if path.suffix.lower() in _IGNORED_MODEL_SUFFIXES or path.name.upper().startswith(_IGNORED_MODEL_PREFIXES):
            continue
        if has_safetensors and path.name.startswith(_TORCH_WEIGHT_PREFIXES):
            continue
        chosen.append(path)
    return chosen


def collect_inputs(model_dir: Path, gguf_file: str | None = None, recipe: Path | None = None,
                   labels_file: Path | None = None, adapter_from: Path | None = None,
                   calibration_data: Path | None = None, profile_file: Path | None = None,
                   signing_key: Path | None = None) -> list[InputFile]:
    """Every file a build of these sources reads, hashed, in a stable order."""
    inputs = [_file("model", path) for path in model_files(model_dir, gguf_file)]
    if adapter_from is not None:
        # The two files the build reads; a fine-tuning run's record beside them (run.json, its plot) is no input.
        inputs += [_file("adapter", Path(adapter_from) / name) for name in (CONFIG_FILE, WEIGHTS_FILE)
                   if (Path(adapter_from) / name).is_file()]
    for role, path in (("recipe", recipe), ("labels", labels_file), ("calibration", calibration_data),
                       ("profile", profile_file), ("signing-key", signing_key)):
        if path is not None:
            inputs.append(_file(role, Path(path)))
    return inputs


def config_inputs(config: BuildConfig, labels_file: Path | None = None,
                  signing_key: Path | None = None) -> list[InputFile]:
    """The files a build of ``config`` reads (plus a label file and signing key the command line named)."""
    from edge_sdk.profiles import is_profile_path

    return collect_inputs(config.model_dir, config.gguf_file, recipe=config.recipe, labels_file=labels_file,
                          adapter_from=config.adapter_from, calibration_data=config.calibration_data,
                          profile_file=Path(config.profile) if is_profile_path(config.profile) else None,
                          signing_key=signing_key)


def manifest_record(inputs: Iterable[InputFile]) -> dict[str, dict[str, str]]:
    """``build.inputs``: role -> {name: sha256}. The signing key is left out (its id is in the signature file,
    and a private key's hash has no place in a file that ships); paths are left out so that the same inputs
    in another folder give the same manifest."""
    record: dict[str, dict[str, str]] = {}
    for item in inputs:
        if item.role != "signing-key":
            record.setdefault(item.role, {})[item.name] = item.sha256
    return record


@cache
def sdk_source_sha256() -> str:
    """A hash of the SDK's own code and data files: a changed development checkout is another SDK."""
    root = Path(edge_sdk.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.suffix in _SDK_SOURCE_SUFFIXES and "__pycache__" not in p.parts):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


@cache
def shaping_versions() -> dict[str, str]:
    """The SDK's version and source hash, Python's, and every installed library that writes bundle bytes."""
    versions = {"edge-sdk": edge_sdk.__version__, "edge-sdk-source": sdk_source_sha256()[:16],
                "python": platform.python_version()}
    for name in SHAPING_DISTRIBUTIONS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def portable_name(source: str) -> str:
    """A model or profile source as the manifest records it: an absolute path only by its last part, so the same
    inputs in another folder (another checkout, another build machine) give the same manifest."""
    return Path(source).name if Path(source).is_absolute() else source
