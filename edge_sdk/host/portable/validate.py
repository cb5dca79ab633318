"""Build-time check that the portable step trains exactly like ONNX Runtime's training build."""

from __future__ import annotations

import numpy as np

from edge_sdk.device.backends.base import TrainingBackend
from edge_sdk.errors import ExportError

STEPS = 4
TOLERANCE = 1e-4
LEARNING_RATE = 1e-2
# AdamW moves a parameter by up to about lr per step whatever its gradient's size, and one whose gradient is
# rounding noise (zero in truth: the bias of a softmax-over-positions head; or tiny: a few elements of a trained
# adapter's matrices) by normalised noise, which differs between backends. So differences are judged against the
# largest move, lr x steps: nearly every element within 1% of it, a few (OUTLIER_FRACTION of a tensor) within 5%.
# A wrong gradient moves elements by up to the whole lr x steps, and most of them, so either bound catches it.
ADAM_BOUND = LEARNING_RATE * STEPS
ELEMENT_TOLERANCE = 1e-5 + 1e-2 * ADAM_BOUND
OUTLIER_TOLERANCE = 1e-5 + 5e-2 * ADAM_BOUND
OUTLIER_FRACTION = 1e-2


def validate_portable_step(reference: TrainingBackend, portable: TrainingBackend,
                           feeds: dict[str, np.ndarray]) -> float:
    """Train ONNX Runtime training (``reference``) and the portable step a few steps on ``feeds`` (inputs and
    targets) from the same weights; return the max relative loss gap. Closes both backends."""
    try:
        gaps = []
        for step in range(STEPS):
            expected = reference.train_step(feeds, LEARNING_RATE)
            actual = portable.train_step(feeds, LEARNING_RATE)
            gaps.append(abs(actual - expected) / max(abs(expected), 1e-12))
            if gaps[-1] > TOLERANCE:
                raise ExportError(
                    f"the portable training step disagrees with ONNX Runtime training at step {step + 1}: "
                    f"loss {actual:.6g} vs {expected:.6g} (relative {gaps[-1]:.2g} > {TOLERANCE})"
                )
        check_trained_weights(reference.weights(), portable.weights())
        return max(gaps)
    finally:
        reference.close()
        portable.close()


def check_trained_weights(reference: dict[str, np.ndarray], portable: dict[str, np.ndarray]) -> None:
    """ExportError naming the first parameter whose values after the check's steps differ beyond the bounds."""
    for name, value in reference.items():
        gap = np.abs(portable[name] - value)
        outside = gap > ELEMENT_TOLERANCE + 1e-3 * np.abs(value)
        worst = float(gap.max()) if gap.size else 0.0
        if worst > OUTLIER_TOLERANCE or outside.mean() > OUTLIER_FRACTION:
            raise ExportError(f"after {STEPS} steps the portable step's {name} differs from ONNX Runtime training's "
                              f"by up to {worst:.3g} in {int(outside.sum())} of {value.size} values (allowed: "
                              f"{ELEMENT_TOLERANCE:.2g}, or up to {OUTLIER_TOLERANCE:.2g} in "
                              f"{OUTLIER_FRACTION:.0%} of them)")
