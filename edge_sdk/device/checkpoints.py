"""Resumable personalization: the run's full state is written to a checkpoint every few optimizer steps,
every few minutes, at every epoch's end and after the last step, so a device that loses power or kills
the process mid-run continues where it stopped (`personalize --resume`) with exactly the batches, learning
rates and updates an uninterrupted run would have had.

A checkpoint is a folder ``adapters/.checkpoints/<adapter>/``:

* the backend's own state (parameters, AdamW moments, its step count),
* ``best.safetensors``, the weights of the best epoch so far,
* ``progress.json``, written last: the loop position (step, epoch, batch within the epoch, the shuffling
  generator's state at the start of that epoch), losses, history, best metrics, the metrics before
  training, the identity of the run (data hashes, settings) so a resume with anything else is refused, and
  the sha256 of every other file, so a damaged checkpoint is reported rather than resumed from.

The folder is replaced atomically (staged beside it, fsynced, renamed in; the previous checkpoint stays
until the new one is in place) and removed atomically once the adapter is saved.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from edge_sdk.bundle.atomic import atomic_folder, recover_folder, remove_folder, remove_stale_temporaries
from edge_sdk.device.adapter_history import GENERATIONS_FOLDER
from edge_sdk.errors import AdapterError

_PROGRESS = "progress.json"
_BEST = "best.safetensors"
CHECKPOINTS_FOLDER = ".checkpoints"

log = logging.getLogger(__name__)


@dataclass
class TrainingProgress:
    """Where a run stands: ``epoch`` epochs are complete and ``batch`` batches of the next one are done.

    ``rng_state`` is the shuffling generator's state at the start of epoch ``epoch + 1`` (None in
    checkpoints of SDKs that checkpointed whole epochs only: the loop then replays the shuffles)."""

    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    best_epoch: int = 0
    best_metrics: dict[str, float] | None = None
    batch: int = 0
    step: int = 0
    total_steps: int = 0
    rng_state: dict[str, Any] | None = None
    before: dict[str, float] | None = None

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> TrainingProgress:
        known = {item.name for item in fields(cls)}
        progress = cls(**{key: value for key, value in saved.items() if key in known})
        if "step" not in saved:  # an epoch-only checkpoint: its step is the number of losses
            progress.step = len(progress.losses)
        return progress


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def remove_stale_files(adapters_folder: Path) -> list[str]:
    """Clean what a killed run left in the adapter store, its checkpoint folder and each name's generation
    folder (a kill while the ledger or a generation file is written leaves a temporary there): temporaries are
    removed, a checkpoint caught between the two renames of its replacement is restored. Call once per run,
    before anything reads the store, while no other process writes it."""
    generations = adapters_folder / GENERATIONS_FOLDER
    folders = [adapters_folder, adapters_folder / CHECKPOINTS_FOLDER, generations]
    if generations.is_dir():
        folders += sorted(entry for entry in generations.iterdir() if entry.is_dir() and not entry.is_symlink())
    handled = [name for folder in folders for name in remove_stale_temporaries(folder)]
    if handled:
        log.info("removed or restored what an interrupted run left: %s", ", ".join(handled))
    return handled


class CheckpointStore:
    """The checkpoint folder of one adapter name."""

    def __init__(self, adapters_folder: Path, adapter: str) -> None:
        self.root = adapters_folder / CHECKPOINTS_FOLDER
        self.folder = self.root / adapter
        self.adapter = adapter

    def exists(self) -> bool:
        recover_folder(self.folder)  # a kill between the two renames of a replacement leaves the old one aside
        return (self.folder / _PROGRESS).is_file()

    def save(self, backend, progress: TrainingProgress, best_weights: dict[str, np.ndarray] | None,
             identity: dict[str, Any]) -> None:
        """Replace the checkpoint with the run's current state (atomically and durably)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with atomic_folder(self.folder, overwrite=True) as staging:
            backend.save_state(staging)
            if best_weights is not None:
                save_file({k: np.ascontiguousarray(v) for k, v in best_weights.items()}, str(staging / _BEST))
            files = {path.name: _sha256(path) for path in sorted(staging.iterdir()) if path.is_file()}
            (staging / _PROGRESS).write_text(json.dumps({"identity": identity, "progress": asdict(progress),
                                                         "files": files}))

    def _read(self) -> dict[str, Any]:
        """progress.json, after checking every file it lists is there with its recorded hash."""
        if not self.exists():
            raise AdapterError(
                f"there is no interrupted personalization of adapter {self.adapter!r} to resume; run without --resume"
            )
        damaged = (f"the checkpoint of adapter {self.adapter!r} at {str(self.folder)!r} is damaged "
                   "({}); run without --resume to start over")
        try:
            saved = json.loads((self.folder / _PROGRESS).read_text(encoding="utf-8"))
            saved["identity"], saved["progress"]  # noqa: B018 -- both must be there
            files = saved.get("files", {})  # epoch-only checkpoints of earlier SDKs list no files
            for name, digest in files.items():
                if _sha256(self.folder / name) != digest:
                    raise AdapterError(damaged.format(f"{name} does not match its recorded hash"))
        except (OSError, ValueError, AttributeError, KeyError, TypeError) as exc:
            raise AdapterError(damaged.format(exc)) from exc
        return saved

    def saved_identity(self) -> dict[str, Any] | None:
        """The identity the checkpointed run recorded, or None without a (readable) checkpoint."""
        try:
            return self._read()["identity"]
        except AdapterError:
            return None

    def inspect(self) -> TrainingProgress:
        """The checkpointed progress, with every file checked against its hash and the weights files read."""
        saved = self._read()
        for path in sorted(self.folder.glob("*.safetensors")):
            load_file(str(path))
        return TrainingProgress.from_dict(saved["progress"])

    def load(self, backend, identity: dict[str, Any]) -> tuple[TrainingProgress, dict[str, np.ndarray] | None]:
        """Restore ``backend`` and the loop's progress; refuse a checkpoint of a different run."""
        saved = self._read()
        different = sorted(key for key in identity if saved["identity"].get(key) != identity[key])
        if different:
            raise AdapterError(
                f"the interrupted run of adapter {self.adapter!r} used different {', '.join(different)}; resume with "
                "the same data and settings, or run without --resume to start over"
            )
        backend.load_state(self.folder)
        best = self.folder / _BEST
        return TrainingProgress.from_dict(saved["progress"]), load_file(str(best)) if best.is_file() else None

    def remove(self) -> None:
        """Delete the checkpoint: renamed aside first, so a kill leaves it whole or gone, never half-deleted."""
        remove_folder(self.folder)
        try:
            self.root.rmdir()  # only when empty; another adapter's checkpoint keeps it
        except OSError:
            pass
