"""`edge-sdk finetune --events FILE`: one JSON object per line as training goes, for programs that follow a run
(the fine-tuning service turns them into a job's events and checkpoints).

    {"type": "message", "message": "..."}
    {"type": "step", "step": 3, "total_steps": 40, "epoch": 1, "loss": 0.71, "learning_rate": 0.0002}
    {"type": "epoch", "epoch": 1, "train_loss": 0.69, "accuracy": 0.8, ...}    (epoch 0: before training)
    {"type": "checkpoint", "step": 10}

Every line also carries "time" (Unix seconds). The file is appended to (a resumed run adds to it) and flushed
per line, so a reader sees whole lines only, up to the last newline. Standard library only.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import IO, Any


class EventWriter:
    """Appends events to a JSON Lines file."""

    def __init__(self, path: Path) -> None:
        self._file: IO[str] = open(path, "a", encoding="utf-8")  # noqa: SIM115 - held for the run

    def write(self, kind: str, **fields: Any) -> None:
        self._file.write(json.dumps({"type": kind, "time": time.time(), **fields}) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_events(path: Path, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """The whole lines of ``path`` from byte ``offset`` on, and the offset after the last whole line."""
    try:
        with open(path, "rb") as file:
            file.seek(offset)
            data = file.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    events = [json.loads(line) for line in data[:end].splitlines() if line.strip()]
    return events, offset + end
