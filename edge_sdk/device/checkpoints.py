"""Resumable personalization: after every epoch the run's full state is written to a checkpoint, so a
device that loses power mid-run continues where it stopped (`personalize --resume`) with exactly the
losses an uninterrupted run would have had.

A checkpoint is a folder ``adapters/.checkpoints/<adapter>/``: the backend's own state (parameters and
optimizer moments), the best weights so far, and ``progress.json`` (loop position, history, settings,
and the data file's hash so a resume on other data is refused). It is replaced atomically.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from edge_sdk.bundle.atomic import atomic_folder
from edge_sdk.errors import AdapterError

_PROGRESS = "progress.json"
_BEST = "best.safetensors"


@dataclass
class TrainingProgress:
    """Where a run stands after a completed epoch."""

    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    best_epoch: int = 0
    best_metrics: dict[str, float] | None = None


class CheckpointStore:
    """The checkpoint folder of one adapter name."""

    def __init__(self, adapters_folder: Path, adapter: str) -> None:
        self.root = adapters_folder / ".checkpoints"
        self.folder = self.root / adapter
        self.adapter = adapter

    def exists(self) -> bool:
        return (self.folder / _PROGRESS).is_file()

    def save(self, backend, progress: TrainingProgress, best_weights: dict[str, np.ndarray] | None,
             identity: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with atomic_folder(self.folder, overwrite=True) as staging:
            backend.save_state(staging)
            if best_weights is not None:
                save_file({k: np.ascontiguousarray(v) for k, v in best_weights.items()}, str(staging / _BEST))
            (staging / _PROGRESS).write_text(json.dumps({"identity": identity, "progress": asdict(progress)}))

    def load(self, backend, identity: dict[str, Any]) -> tuple[TrainingProgress, dict[str, np.ndarray] | None]:
        """Restore ``backend`` and the loop's progress; refuse a checkpoint of a different run."""
        if not self.exists():
            raise AdapterError(
                f"there is no interrupted personalization of adapter {self.adapter!r} to resume; run without --resume"
            )
        saved = json.loads((self.folder / _PROGRESS).read_text())
        different = sorted(key for key in identity if saved["identity"].get(key) != identity[key])
        if different:
            raise AdapterError(
                f"the interrupted run of adapter {self.adapter!r} used different {', '.join(different)}; resume with "
                "the same data and settings, or run without --resume to start over"
            )
        backend.load_state(self.folder)
        best = self.folder / _BEST
        return TrainingProgress(**saved["progress"]), load_file(str(best)) if best.is_file() else None

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        if self.root.is_dir() and not any(self.root.iterdir()):
            self.root.rmdir()
