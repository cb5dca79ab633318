"""The interface every on-device training backend implements."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np


class TrainingBackend(Protocol):
    """One optimizer step at a time over the bundle's trainable parameters."""

    name: str

    def load_weights(self, weights: dict[str, np.ndarray]) -> None:
        """Replace the trainable parameters (and reset the optimizer state)."""

    def train_step(self, feeds: dict[str, np.ndarray], learning_rate: float) -> float:
        """Forward, backward and one AdamW update at ``learning_rate``; returns the batch loss.

        ``feeds`` holds the model inputs and the task's target inputs (e.g. ``labels``) by name."""

    def weights(self) -> dict[str, np.ndarray]:
        """A copy of the current trainable parameters."""

    def save_state(self, folder: Path) -> None:
        """Write parameters and optimizer state (moments, step) into ``folder`` for a later resume."""

    def load_state(self, folder: Path) -> None:
        """Restore what :meth:`save_state` wrote."""

    def close(self) -> None:
        """Release the runtime's sessions and state."""
