"""Symmetric int8 with one scale per row: how qlora stores its base and the int8 rewrite its weights."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_sdk.errors import ExportError

INT8_MAX = 127


@dataclass(frozen=True)
class QuantizedWeight:
    values: np.ndarray  # int8 [out, in]
    scale: np.ndarray   # float32 [out]

    def dequantized(self) -> np.ndarray:
        return self.values.astype(np.float32) * self.scale[:, None]


def quantize_rows(weight: np.ndarray, max_level: int = INT8_MAX) -> QuantizedWeight:
    """Symmetric int8 with one scale per row (output channel), values in [-max_level, max_level]; an
    all-zero row gets scale 1. ``max_level`` below 127 leaves headroom for integer kernels that add
    products in narrow lanes (see :mod:`edge_sdk.bundle.int8_arithmetic`)."""
    weight = np.asarray(weight, dtype=np.float32)
    if weight.ndim != 2:
        raise ExportError(f"per-output-channel quantization needs a 2-D weight, got shape {list(weight.shape)}")
    if not 1 <= max_level <= INT8_MAX:
        raise ValueError(f"max_level must be in 1..{INT8_MAX}, got {max_level}")
    peak = np.max(np.abs(weight), axis=1)
    scale = np.where(peak > 0, peak / np.float32(max_level), np.float32(1.0)).astype(np.float32)
    values = np.clip(np.rint(weight / scale[:, None]), -max_level, max_level).astype(np.int8)
    return QuantizedWeight(values=values, scale=scale)
