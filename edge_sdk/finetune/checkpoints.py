"""Checkpoints of a host fine-tuning run in ``OUT.checkpoint/``: every N steps and at each epoch end, the
engine's own state (each rank its shard) next to the trainer's progress; ``--resume`` continues from the
newest complete one and refuses a run whose settings, data or number of processes differ."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from edge_sdk.errors import ConfigError

_STATE = "trainer.json"
_ENGINE = "engine"
_PREFIX = "step-"


def checkpoint_root(out: Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".checkpoint")


class CheckpointFolder:
    """Complete checkpoints are folders ``step-00000050``; one is written under a temporary name and renamed
    when every rank has finished, so a kill mid-write leaves the previous one in place."""

    def __init__(self, out: Path, keep: int = 1) -> None:
        self.root = checkpoint_root(out)
        self.keep = keep

    def newest(self) -> Path | None:
        done = sorted(path for path in self.root.glob(_PREFIX + "*") if (path / _STATE).is_file())
        return done[-1] if done else None

    def save(self, strategy, step: int, progress: dict[str, Any]) -> Path:
        final = self.root / f"{_PREFIX}{step:08d}"
        staging = self.root / f".{_PREFIX}{step:08d}.partial"
        if strategy.is_main:
            shutil.rmtree(staging, ignore_errors=True)
            (staging / _ENGINE).mkdir(parents=True)
        strategy.barrier()
        strategy.save_checkpoint(staging / _ENGINE)
        strategy.barrier()
        if strategy.is_main:
            (staging / _STATE).write_text(json.dumps(progress, indent=1, sort_keys=True) + "\n")
            shutil.rmtree(final, ignore_errors=True)
            staging.rename(final)
            for older in sorted(self.root.glob(_PREFIX + "*"))[:-self.keep]:
                shutil.rmtree(older, ignore_errors=True)
        strategy.barrier()
        return final

    def load(self, strategy, identity: dict[str, Any]) -> dict[str, Any]:
        folder = self.newest()
        if folder is None:
            raise ConfigError(f"--resume: no checkpoint in {str(self.root)!r}; start without --resume")
        progress = json.loads((folder / _STATE).read_text())
        saved = progress.get("identity", {})
        differing = sorted(key for key in set(saved) | set(identity) if saved.get(key) != identity.get(key))
        if differing:
            details = "; ".join(f"{key}: checkpoint {saved.get(key)!r}, now {identity.get(key)!r}" for key in differing)
            raise ConfigError(f"--resume: the checkpoint in {str(folder)!r} is of another run ({details}); resume "
                              "with the same settings, data and number of processes, or start again without --resume")
        strategy.load_checkpoint(folder / _ENGINE)
        return progress
