"""The gate a personalized adapter passes before it serves: it must load, its training losses must have been
finite, and on held-out data it must not score worse than the adapter it would replace by more than a margin.

An adapter that fails stays in the store as a rejected generation (for inspection) and the current adapter
keeps serving — the "on trial" slot of A/B firmware updaters, applied to adapters.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edge_sdk.errors import ConfigError


@dataclass(frozen=True)
class GateSettings:
    """``enabled=False`` (``--no-gate``) skips the held-out comparison; an adapter that does not load or whose
    weights are not finite is never made current."""

    enabled: bool = True
    margin: float = 0.0    # how much worse (in the task metric's units) a new adapter may score and still pass

    def validate(self) -> None:
        if not math.isfinite(self.margin) or self.margin < 0:
            raise ConfigError(f"--gate-margin must be a finite number >= 0, got {self.margin!r}")


@dataclass(frozen=True)
class GateDecision:
    accepted: bool
    reason: str
    metric: str | None = None
    candidate: float | None = None
    baseline: float | None = None
    margin: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _describe(value: float) -> str:
    return f"{value:.4f}" if math.isfinite(value) else str(value)


def judge(
    settings: GateSettings,
    losses: list[float],
    weights: dict[str, np.ndarray] | None,
    metric: str,
    higher_is_better: bool,
    candidate_metrics: dict[str, float] | None,
    baseline_metrics: dict[str, float] | None,
    baseline_name: str,
) -> GateDecision:
    """Decide whether the candidate adapter becomes current. ``baseline_name`` names the adapter it is
    compared with (the one serving under the same name, or the one training started from)."""
    bad_loss = next(((step, loss) for step, loss in enumerate(losses, start=1) if not math.isfinite(loss)), None)
    if bad_loss is not None:
        return GateDecision(False, f"training diverged: the loss at step {bad_loss[0]} was {bad_loss[1]}; lower "
                                   "the learning rate")
    if weights is None or not all(np.isfinite(value).all() for value in weights.values()):
        return GateDecision(False, "the trained weights hold NaN or infinite values; lower the learning rate")
    if candidate_metrics is None:
        return GateDecision(True, "no evaluation data: the adapter loads and its losses were finite")
    candidate = float(candidate_metrics[metric])
    if not math.isfinite(candidate):
        return GateDecision(False, f"held-out {metric} of the new adapter is {candidate}", metric, candidate)
    if not settings.enabled:
        return GateDecision(True, "the held-out comparison was skipped (--no-gate)", metric, candidate)
    if baseline_metrics is None:
        return GateDecision(True, f"held-out {metric} {_describe(candidate)}; there is no adapter to compare with",
                            metric, candidate)
    baseline = float(baseline_metrics[metric])
    worse_by = (baseline - candidate) if higher_is_better else (candidate - baseline)
    comparison = (f"held-out {metric} {_describe(candidate)} against {_describe(baseline)} of {baseline_name!r} "
                  f"(margin {settings.margin:g})")
    decision = dict(metric=metric, candidate=candidate, baseline=baseline, margin=settings.margin)
    if math.isfinite(baseline) and worse_by > settings.margin:
        return GateDecision(False, f"{comparison}: worse by {worse_by:.4f}", **decision)
    return GateDecision(True, comparison, **decision)
