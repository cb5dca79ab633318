"""Build-time check that the portable step trains exactly like ONNX Runtime's training build."""

from __future__ import annotations

import numpy as np

from edge_sdk.device.backends.base import TrainingBackend
from edge_sdk.errors import ExportError

STEPS = 4
TOLERANCE = 1e-4
LEARNING_RATE = 1e-2


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
        reference_weights, portable_weights = reference.weights(), portable.weights()
        # AdamW moves a parameter by up to about lr per step whatever its gradient's size, and one whose true
        # gradient is zero (the bias of a softmax-over-positions head) by normalised rounding noise, which
        # differs between backends: so differences are judged against lr x steps, not the values.
        allowed = 1e-5 + 1e-2 * LEARNING_RATE * STEPS
        for name, value in reference_weights.items():
            if not np.allclose(portable_weights[name], value, rtol=1e-3, atol=allowed):
                worst = float(np.max(np.abs(portable_weights[name] - value)))
                raise ExportError(f"after {STEPS} steps the portable step's {name} differs from ONNX Runtime "
                                  f"training's by up to {worst:.3g} (allowed {allowed:.2g})")
        return max(gaps)
    finally:
        reference.close()
        portable.close()
