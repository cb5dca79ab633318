"""The bundle's adapter store: named adapters (one per user or skill) as single safetensors files.

Each file carries its own metadata (which bundle it belongs to, how it was trained), so an adapter
copied between devices is checked against the bundle it is loaded into. The base weights are never
written: personalization only ever adds or replaces files here.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from edge_sdk.bundle.atomic import atomic_path, atomic_write_text
from edge_sdk.bundle.manifest import Manifest
from edge_sdk.bundle.store import Bundle
from edge_sdk.errors import AdapterError

INITIAL = "initial"
ACTIVE_FILE = "active.json"  # which adapter serves when none is named (`edge-sdk adapters activate`)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_METADATA_KEY = "edge_sdk"


@dataclass(frozen=True)
class AdapterInfo:
    name: str
    path: Path
    metadata: dict[str, Any]


def check_adapter_name(name: str) -> str:
    if not _NAME.match(name):
        raise AdapterError(
            f"adapter name {name!r} is not allowed; use 1-64 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit"
        )
    return name


def base_id(manifest: Manifest) -> str:
    """Identity of the frozen base an adapter belongs to: the inference graph and its weights."""
    inference = manifest.inference_spec
    parts = [inference.model, inference.weights]
    digests = "".join(manifest.file(path).sha256 for path in parts if path)
    return hashlib.sha256(digests.encode()).hexdigest()


class AdapterStore:
    """Read and write the named adapters of one bundle."""

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self.folder = bundle.root / "adapters"
        manifest = bundle.manifest
        self.base_id = base_id(manifest)
        self._shapes = {spec.name: tuple(spec.shape) for spec in manifest.trainable}
        # Loaded adapters stay in memory (they are small), so switching between users or skills costs a dict
        # lookup; a file changed on disk (retrained, replaced) is read again.
        self._cache: dict[str, tuple[tuple[int, int], dict[str, np.ndarray]]] = {}

    # --- which adapter serves by default ------------------------------------------------------------------

    @property
    def _active_file(self) -> Path:
        return self.folder / ACTIVE_FILE

    def active(self) -> str | None:
        """The adapter `activate` chose (None when none was chosen or it has since been removed)."""
        try:
            name = json.loads(self._active_file.read_text(encoding="utf-8")).get("name")
        except (OSError, ValueError, AttributeError):
            return None
        return name if isinstance(name, str) and self.exists(name) else None

    def activate(self, name: str) -> None:
        """Make ``name`` the adapter that inference and evaluation use when none is named."""
        self.info(name)  # exists and is readable
        self.load(name)  # and belongs to this bundle
        atomic_write_text(self._active_file, json.dumps({"name": name}) + "\n")

    def remove(self, name: str) -> None:
        if name == INITIAL:
            raise AdapterError(f"{INITIAL!r} is part of the bundle and cannot be removed")
        path = self.info(name).path
        if self.active() == name:
            self._active_file.unlink(missing_ok=True)
        path.unlink()
        self._cache.pop(name, None)

    # --- files --------------------------------------------------------------------------------------------

    def path(self, name: str) -> Path:
        if name == INITIAL:
            return self.bundle.path(self.bundle.manifest.inference_spec.initial_adapter)
        return self.folder / f"{check_adapter_name(name)}.safetensors"

    def exists(self, name: str) -> bool:
        return self.path(name).is_file()

    def names(self) -> list[str]:
        user = sorted(p.name[: -len(".safetensors")] for p in self.folder.glob("*.safetensors")
                      if p.name != f"{INITIAL}.safetensors")
        return [INITIAL, *user]

    def info(self, name: str) -> AdapterInfo:
        path = self.path(name)
        if not path.is_file():
            raise AdapterError(
                f"no adapter named {name!r} in bundle {str(self.bundle.root)!r}; available: {', '.join(self.names())}"
            )
        try:
            with safe_open(str(path), framework="numpy") as handle:
                raw = (handle.metadata() or {}).get(_METADATA_KEY)
        except Exception as exc:  # safetensors raises its own error types for damaged headers
            raise AdapterError(f"adapter file {str(path)!r} is not a readable safetensors file: {exc}") from exc
        try:
            metadata = json.loads(raw) if raw else {}
        except (ValueError, RecursionError) as exc:
            raise AdapterError(f"adapter file {str(path)!r} has damaged metadata: its {_METADATA_KEY!r} entry is not "
                               f"JSON ({exc}); personalize again or remove the adapter") from exc
        if not isinstance(metadata, dict):
            raise AdapterError(f"adapter file {str(path)!r} has damaged metadata: its {_METADATA_KEY!r} entry is "
                               f"{type(metadata).__name__}, not a JSON object; personalize again or remove the adapter")
        return AdapterInfo(name=name, path=path, metadata=metadata)

    def load(self, name: str) -> dict[str, np.ndarray]:
        """The adapter's weights, checked to belong to this bundle and to match its parameters."""
        path = self.path(name)
        try:
            stat = path.stat()
            version = (stat.st_mtime_ns, stat.st_size)
        except OSError:
            version = None
        cached = self._cache.get(name)
        if cached is not None and cached[0] == version:
            return cached[1]
        weights = self._read(name)
        if version is not None:
            self._cache[name] = (version, weights)
        return weights

    def _read(self, name: str) -> dict[str, np.ndarray]:
        info = self.info(name)
        base = info.metadata.get("base_id")
        if name != INITIAL and base != self.base_id:
            raise AdapterError(
                f"adapter {name!r} ({str(info.path)!r}) was trained for another base model (base id "
                f"{str(base)[:12]}…, this bundle {self.base_id[:12]}…); personalize this bundle again instead of "
                "copying the adapter"
            )
        weights = {}
        try:
            with safe_open(str(info.path), framework="numpy") as handle:
                for key in handle.keys():
                    weights[key] = handle.get_tensor(key)
        except Exception as exc:  # safetensors' own errors: offsets outside the file, unknown dtypes, …
            raise AdapterError(f"adapter file {str(info.path)!r} holds a tensor that cannot be read: {exc}; "
                               "personalize again or remove the adapter") from exc
        dtypes = {spec.name: spec.dtype for spec in self.bundle.manifest.trainable}  # numpy's names: "float32"
        missing = sorted(set(self._shapes) - set(weights))
        extra = sorted(set(weights) - set(self._shapes))
        wrong = [k for k, shape in self._shapes.items() if k in weights and tuple(weights[k].shape) != shape]
        wrong_type = [f"{k} ({weights[k].dtype}, not {dtypes[k]})" for k in self._shapes
                      if k in weights and k in dtypes and str(weights[k].dtype) != dtypes[k]]
        if missing or extra or wrong or wrong_type:
            raise AdapterError(
                f"adapter {name!r} ({str(info.path)!r}) does not fit this bundle: missing {missing[:3]}, unexpected "
                f"{extra[:3]}, wrong shapes {wrong[:3]}, wrong element types {wrong_type[:3]}"
            )
        return weights

    def save(self, name: str, weights: dict[str, np.ndarray], training: dict[str, Any]) -> AdapterInfo:
        """Write an adapter atomically and durably (temp file, fsync, rename), replacing one of the same name."""
        if name == INITIAL:
            raise AdapterError(f"{INITIAL!r} is the bundle's built-in starting adapter; save under another name")
        path = self.path(name)
        manifest = self.bundle.manifest
        metadata = {
            "name": name,
            "base_id": self.base_id,
            "task": manifest.task,
            "adapter": manifest.adapter,
            "rank": manifest.peft_spec.rank,
            "target_modules": manifest.peft_spec.target_modules,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "sdk_version": manifest.sdk_version,
            "training": training,
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as temporary:
            save_file({key: np.ascontiguousarray(value, dtype=np.float32) for key, value in weights.items()},
                      str(temporary), metadata={_METADATA_KEY: json.dumps(metadata)})
        self._cache.pop(name, None)
        return AdapterInfo(name=name, path=path, metadata=metadata)

