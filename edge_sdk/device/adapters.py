"""The bundle's adapter store: named adapters (one per user or skill) as single safetensors files.

Each file carries its own metadata (which bundle it belongs to, how it was trained), so an adapter
copied between devices is checked against the bundle it is loaded into. The base weights are never
written: personalization only ever adds or replaces files here.

Every adapter written under a name becomes a numbered generation (see ``adapter_history``): a personalized
one is written "on trial" and made current only if the gate accepts it, and ``rollback`` restores an earlier
one. Writers hold the store's lock (``store_lock``), so two processes never interleave their writes.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from edge_sdk.bundle.atomic import atomic_path, atomic_write_text
from edge_sdk.bundle.layout import ADAPTERS_DIR  # the store's folder inside the bundle
from edge_sdk.bundle.manifest import Manifest
from edge_sdk.bundle.store import Bundle, sha256_file
from edge_sdk.device.adapter_history import (
    ACCEPTED,
    DEFAULT_KEEP,
    REJECTED,
    ROLLED_BACK,
    Generation,
    Ledger,
)
from edge_sdk.device.store_lock import StoreLock
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


@dataclass(frozen=True)
class Candidate:
    """A generation written on trial: on disk and readable, not yet current."""

    name: str
    number: int
    path: Path
    sha256: str
    metadata: dict[str, Any]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


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

    def __init__(self, bundle: Bundle, keep: int = DEFAULT_KEEP) -> None:
        if not isinstance(keep, int) or keep < 1:
            raise AdapterError(f"the number of adapter generations to keep must be at least 1, got {keep!r}")
        self.bundle = bundle
        # Through the bundle's path check: an adapters folder that is a symlink out of the bundle is refused.
        self.folder = bundle.inside(ADAPTERS_DIR, "adapter folder")
        self.keep = keep
        self._lock = StoreLock(self.folder, str(bundle.root))
        manifest = bundle.manifest
        self.base_id = base_id(manifest)
        self._shapes = {spec.name: tuple(spec.shape) for spec in manifest.trainable}
        # Loaded adapters stay in memory (they are small), so switching between users or skills costs a dict
        # lookup; a file changed on disk (retrained, replaced) is read again.
        self._cache: dict[str, tuple[tuple[int, int], dict[str, np.ndarray]]] = {}

    # --- which adapter serves by default ------------------------------------------------------------------

    @property
    def _active_file(self) -> Path:
        return self.bundle.inside(f"{ADAPTERS_DIR}/{ACTIVE_FILE}", "active-adapter file")

    def active(self) -> str | None:
        """The adapter `activate` chose (None when none was chosen or it has since been removed)."""
        try:
            name = json.loads(self._active_file.read_text(encoding="utf-8")).get("name")
        except (OSError, ValueError, AttributeError):
            return None
        return name if isinstance(name, str) and self.exists(name) else None

    def activate(self, name: str, wait: float | None = 0.0) -> None:
        """Make ``name`` the adapter that inference and evaluation use when none is named."""
        with self.writing(wait):
            self.info(name)  # exists and is readable
            self.load(name)  # and belongs to this bundle
            atomic_write_text(self._active_file, json.dumps({"name": name}) + "\n")

    def remove(self, name: str, wait: float | None = 0.0) -> None:
        """Delete an adapter and its generations."""
        if name == INITIAL:
            raise AdapterError(f"{INITIAL!r} is part of the bundle and cannot be removed")
        with self.writing(wait):
            path = self.info(name).path
            if self.active() == name:
                self._active_file.unlink(missing_ok=True)
            path.unlink()
            shutil.rmtree(Ledger(self.folder, name).folder, ignore_errors=True)
            self._cache.pop(name, None)

    # --- one writer -------------------------------------------------------------------------------------

    @contextmanager
    def writing(self, wait: float | None = 0.0) -> Iterator[None]:
        """Hold the store's lock for a block of writes (reentrant: a holder's own writes do not wait).

        ``wait``: seconds to wait for another process that holds it (0 fails at once naming it; None waits)."""
        with self._lock.hold(wait):
            yield

    # --- files --------------------------------------------------------------------------------------------

    def path(self, name: str) -> Path:
        if name == INITIAL:
            return self.bundle.path(self.bundle.manifest.inference_spec.initial_adapter)
        return self.bundle.inside(f"{ADAPTERS_DIR}/{check_adapter_name(name)}.safetensors", f"adapter {name!r}")

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
        return AdapterInfo(name=name, path=path, metadata=_metadata(path))

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
        return self._read_file(name, self.info(name).path, check_base=name != INITIAL)

    def _read_file(self, name: str, path: Path, check_base: bool = True) -> dict[str, np.ndarray]:
        base = _metadata(path).get("base_id")
        if check_base and base != self.base_id:
            raise AdapterError(
                f"adapter {name!r} ({str(path)!r}) was trained for another base model (base id "
                f"{str(base)[:12]}…, this bundle {self.base_id[:12]}…); personalize this bundle again instead of "
                "copying the adapter"
            )
        weights = {}
        try:
            with safe_open(str(path), framework="numpy") as handle:
                for key in handle.keys():
                    weights[key] = handle.get_tensor(key)
        except Exception as exc:  # safetensors' own errors: offsets outside the file, unknown dtypes, …
            raise AdapterError(f"adapter file {str(path)!r} holds a tensor that cannot be read: {exc}; "
                               "personalize again or remove the adapter") from exc
        dtypes = {spec.name: spec.dtype for spec in self.bundle.manifest.trainable}  # numpy's names: "float32"
        missing = sorted(set(self._shapes) - set(weights))
        extra = sorted(set(weights) - set(self._shapes))
        wrong = [k for k, shape in self._shapes.items() if k in weights and tuple(weights[k].shape) != shape]
        wrong_type = [f"{k} ({weights[k].dtype}, not {dtypes[k]})" for k in self._shapes
                      if k in weights and k in dtypes and str(weights[k].dtype) != dtypes[k]]
        if missing or extra or wrong or wrong_type:
            raise AdapterError(
                f"adapter {name!r} ({str(path)!r}) does not fit this bundle: missing {missing[:3]}, unexpected "
                f"{extra[:3]}, wrong shapes {wrong[:3]}, wrong element types {wrong_type[:3]}"
            )
        return weights

    def save(self, name: str, weights: dict[str, np.ndarray], training: dict[str, Any],
             wait: float | None = 0.0) -> AdapterInfo:
        """Write ``weights`` as a new generation of ``name`` and make it current at once (no gate: an import)."""
        with self.writing(wait):
            candidate = self.propose(name, weights, training)
            self.decide(candidate, accepted=True, reason="written without a gate", source=training.get("source",
                                                                                                        "import"))
        return self.info(name)

    # --- generations ------------------------------------------------------------------------------------

    def propose(self, name: str, weights: dict[str, np.ndarray], training: dict[str, Any]) -> Candidate:
        """Write ``weights`` as the next generation of ``name``, on trial: durable and read back (so it is
        known to load and fit this bundle), but not current until :meth:`decide` accepts it."""
        if name == INITIAL:
            raise AdapterError(f"{INITIAL!r} is the bundle's built-in starting adapter; save under another name")
        check_adapter_name(name)
        with self.writing():
            ledger = Ledger(self.folder, name)
            records = self._reconciled(ledger)
            number = ledger.next_number(records)
            manifest = self.bundle.manifest
            metadata = {
                "name": name,
                "generation": number,
                "base_id": self.base_id,
                "task": manifest.task,
                "adapter": manifest.adapter,
                "rank": manifest.peft_spec.rank,
                "target_modules": manifest.peft_spec.target_modules,
                "created": _now(),
                "sdk_version": manifest.sdk_version,
                "training": training,
            }
            path = ledger.file(number)
            ledger.folder.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as temporary:
                save_file({key: np.ascontiguousarray(value, dtype=np.float32) for key, value in weights.items()},
                          str(temporary), metadata={_METADATA_KEY: json.dumps(metadata)})
            self._read_file(name, path)  # it loads, and fits this bundle
            return Candidate(name=name, number=number, path=path, sha256=sha256_file(path), metadata=metadata)

    def decide(self, candidate: Candidate, accepted: bool, reason: str, source: str = "personalize",
               metrics: dict[str, Any] | None = None) -> Generation:
        """Record the gate's verdict on a candidate; an accepted one becomes the name's current adapter."""
        with self.writing():
            ledger = Ledger(self.folder, candidate.name)
            records = ledger.read()
            record = Generation(number=candidate.number, sha256=candidate.sha256,
                                status=ACCEPTED if accepted else REJECTED, created=candidate.metadata["created"],
                                source=source, reason=reason, metrics=metrics)
            records.append(record)
            # The verdict is recorded before the adapter is switched: a failure at either write (a full disk)
            # leaves the previous adapter serving. The current generation is found by content, so a verdict
            # recorded for a switch that then failed does not make the history lie about what serves.
            current = candidate.number if accepted else self._current_number(candidate.name, records)
            ledger.prune(records, self.keep, current)
            ledger.write(records)
            if accepted:
                with atomic_path(self.path(candidate.name)) as temporary:
                    shutil.copyfile(candidate.path, temporary)
                self._cache.pop(candidate.name, None)
            return record

    def history(self, name: str) -> tuple[list[Generation], int | None]:
        """The generations of ``name`` (oldest first) and the number of the current one (None: the current
        adapter was written before generations were kept, or by a run killed before its record)."""
        if name == INITIAL:
            raise AdapterError(f"{INITIAL!r} is the bundle's built-in adapter; it has no generations")
        check_adapter_name(name)
        records = Ledger(self.folder, name).read()
        if not records and not self.exists(name):
            self.info(name)  # raises naming the adapters there are
        return records, self._current_number(name, records)

    def rollback(self, name: str, to: int | None = None, wait: float | None = 0.0) -> Generation:
        """Make an earlier generation of ``name`` current again: ``to``, or the accepted one before the current."""
        with self.writing(wait):
            ledger = Ledger(self.folder, name)
            records = self._reconciled(ledger)
            current = self._current_number(name, records)
            by_number = {record.number: record for record in records}
            if to is not None:
                target = by_number.get(to)
                if target is None:
                    raise AdapterError(f"adapter {name!r} has no generation {to}; see `edge-sdk adapters history`")
                if to == current:
                    raise AdapterError(f"generation {to} of adapter {name!r} is already the current one")
            else:
                earlier = [record for record in records if record.status == ACCEPTED and record.file_kept
                           and (current is None or record.number < current)]
                if not earlier:
                    raise AdapterError(
                        f"adapter {name!r} has no earlier accepted generation to roll back to (current: "
                        f"{current}); see `edge-sdk adapters history`"
                    )
                target = earlier[-1]
            if not target.file_kept or not ledger.file(target.number).is_file():
                raise AdapterError(f"generation {target.number} of adapter {name!r} was pruned (only the newest "
                                   f"{self.keep} are kept); pick another with --to")
            self._read_file(name, ledger.file(target.number))  # still loads and fits
            with atomic_path(self.path(name)) as temporary:
                shutil.copyfile(ledger.file(target.number), temporary)
            self._cache.pop(name, None)
            when = _now()
            if current is not None:
                by_number[current].status = ROLLED_BACK
                by_number[current].events.append({"event": "rolled back", "to": target.number, "at": when})
            target.status = ACCEPTED
            target.events.append({"event": "restored", "from": current, "at": when})
            ledger.write(records)
            return target

    def _current_number(self, name: str, records: list[Generation]) -> int | None:
        path = self.path(name)
        if not path.is_file():
            return None
        digest = sha256_file(path)
        matches = [record.number for record in records if record.sha256 == digest and record.status != REJECTED]
        return matches[-1] if matches else None

    def _reconciled(self, ledger: Ledger) -> list[Generation]:
        """The ledger, tidied before a write: generation files without a record are dropped, and a current
        adapter without one (an older SDK's adapter, or a run killed after making it current) is recorded, so
        a later rollback can return to it."""
        records = ledger.read_or_rebuild(_metadata)
        ledger.drop_unrecorded(records)
        flat = self.path(ledger.name)
        if flat.is_file() and self._current_number(ledger.name, records) is None:
            number = ledger.next_number(records)
            ledger.folder.mkdir(parents=True, exist_ok=True)
            with atomic_path(ledger.file(number)) as temporary:
                shutil.copyfile(flat, temporary)
            created = str(_metadata(flat).get("created") or _now())
            records.append(Generation(number=number, sha256=sha256_file(flat), status=ACCEPTED, created=created,
                                      source="recorded", reason="the current adapter when its history began"))
            ledger.write(records)
        return records


def _metadata(path: Path) -> dict[str, Any]:
    """The edge-sdk metadata an adapter file carries (empty for a file without it)."""
    try:
        with safe_open(str(path), framework="numpy") as handle:
            raw = (handle.metadata() or {}).get(_METADATA_KEY)
    except Exception as exc:  # safetensors raises its own error types for damaged headers
        raise AdapterError(f"adapter file {str(path)!r} is not a readable safetensors file: {exc}") from exc
    if not raw:
        return {}
    try:
        metadata = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise AdapterError(f"adapter file {str(path)!r} has damaged metadata: its {_METADATA_KEY!r} entry is not "
                           f"JSON ({exc}); personalize again or remove the adapter") from exc
    if not isinstance(metadata, dict):
        raise AdapterError(f"adapter file {str(path)!r} has damaged metadata: its {_METADATA_KEY!r} entry is "
                           f"{type(metadata).__name__}, not a JSON object; personalize again or remove the adapter")
    return metadata
