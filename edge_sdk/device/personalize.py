"""The personalization loop: seeded batches, AdamW with warm-up and linear decay, per-epoch evaluation.

The loop keeps the weights of the best epoch on the evaluation data (or the last epoch without it),
so a late epoch that overfits a small personal data set does not overwrite a better adapter.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from edge_sdk.device.checkpoints import TrainingProgress
from edge_sdk.errors import ConfigError


@dataclass(frozen=True)
class TrainingSettings:
    """How an adapter is trained on the device."""

    epochs: int = 3
    learning_rate: float = 2e-3
    batch_size: int = 16
    warmup_fraction: float = 0.1
    seed: int = 0

    def validate(self) -> None:
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ConfigError(f"epochs must be a positive integer, got {self.epochs!r}")
        if not self.learning_rate > 0 or not math.isfinite(self.learning_rate):
            raise ConfigError(f"learning rate must be a positive number, got {self.learning_rate!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch size must be a positive integer, got {self.batch_size!r}")
        if not 0 <= self.warmup_fraction < 1:
            raise ConfigError(f"warm-up fraction must be in [0, 1), got {self.warmup_fraction!r}")


@dataclass(frozen=True)
class StepReport:
    step: int
    total_steps: int
    epoch: int
    loss: float
    learning_rate: float


@dataclass(frozen=True)
class EpochReport:
    epoch: int
    train_loss: float
    eval_metrics: dict[str, float] | None


class TrainingDiverged(ConfigError):
    """A step's loss was not finite; training stopped there (the gate then rejects the adapter)."""

    def __init__(self, message: str, losses: list[float]) -> None:
        super().__init__(message)
        self.losses = losses


@dataclass
class PersonalizeResult:
    adapter: str
    backend: str
    steps: int
    examples: int
    best_epoch: int
    before: dict[str, float] | None
    started_from: str
    history: list[dict[str, Any]] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    accepted: bool = True                  # the gate made the new adapter current
    gate: dict[str, Any] = field(default_factory=dict)   # its decision: accepted, reason, metric, candidate, baseline
    generation: int | None = None          # the generation the new adapter was stored as (None: not stored)
    current_generation: int | None = None  # the generation serving under the name afterwards
    memory: dict[str, Any] | None = None  # the memory budget's fit (requested and used batch size, estimate)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def learning_rate_at(step: int, total: int, peak: float, warmup_fraction: float) -> float:
    """Linear warm-up to ``peak`` then linear decay to zero (``step`` counts from 0)."""
    warmup = max(1, int(round(total * warmup_fraction))) if warmup_fraction > 0 else 0
    if step < warmup:
        return peak * (step + 1) / warmup
    remaining = max(1, total - warmup)
    return peak * max(0.0, (total - step) / remaining)


def is_better(candidate: dict[str, float], best: dict[str, float] | None, metric: str,
              higher_is_better: bool = True) -> bool:
    """The better task metric wins (higher, or lower for e.g. perplexity); lower loss breaks ties."""
    if best is None:
        return True
    if candidate[metric] != best[metric]:
        return (candidate[metric] > best[metric]) == higher_is_better
    return candidate["loss"] < best["loss"]


def run_training(
    backend,
    batches_for_epoch: Callable[[np.random.Generator], Iterable[dict[str, np.ndarray]]],
    steps_per_epoch: int,
    settings: TrainingSettings,
    evaluate: Callable[[dict[str, np.ndarray]], dict[str, float]] | None,
    metric: str,
    on_step: Callable[[StepReport], None] | None = None,
    on_epoch: Callable[[EpochReport], None] | None = None,
    checkpoint: Callable[[TrainingProgress, dict[str, np.ndarray] | None], None] | None = None,
    resume: tuple[TrainingProgress, dict[str, np.ndarray] | None] | None = None,
    higher_is_better: bool = True,
) -> tuple[dict[str, np.ndarray], TrainingProgress]:
    """Train for ``settings.epochs``; return the kept weights and the final progress.

    ``checkpoint`` is called after every epoch; ``resume`` continues a checkpointed run: the backend
    already holds its state, and the shuffling generator is replayed to the same position.
    """
    rng = np.random.default_rng(settings.seed)
    total = steps_per_epoch * settings.epochs
    progress, best_weights = resume if resume else (TrainingProgress(), None)
    for _ in range(progress.epoch):
        for _batch in batches_for_epoch(rng):  # replay the shuffles of the epochs already done
            pass
    step = len(progress.losses)
    for epoch in range(progress.epoch + 1, settings.epochs + 1):
        epoch_losses = []
        for feeds in batches_for_epoch(rng):
            lr = learning_rate_at(step, total, settings.learning_rate, settings.warmup_fraction)
            loss = backend.train_step(feeds, lr)
            if not math.isfinite(loss):
                raise TrainingDiverged(
                    f"training diverged at step {step + 1} (loss {loss}); lower the learning rate "
                    f"(now {settings.learning_rate})", [*progress.losses, loss]
                )
            step += 1
            progress.losses.append(loss)
            epoch_losses.append(loss)
            if on_step:
                on_step(StepReport(step=step, total_steps=total, epoch=epoch, loss=loss, learning_rate=lr))
        weights = backend.weights()
        metrics = evaluate(weights) if evaluate else None
        train_loss = float(np.mean(epoch_losses))
        progress.history.append({"epoch": epoch, "train_loss": train_loss, "eval": metrics})
        if metrics is None or is_better(metrics, progress.best_metrics, metric, higher_is_better):
            best_weights, progress.best_epoch, progress.best_metrics = weights, epoch, metrics
        progress.epoch = epoch
        if checkpoint and epoch < settings.epochs:
            checkpoint(progress, best_weights)
        if on_epoch:
            on_epoch(EpochReport(epoch=epoch, train_loss=train_loss, eval_metrics=metrics))
    return best_weights, progress
