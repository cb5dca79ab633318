"""What ONNX Runtime's integer GEMM computes, in numpy: the exact product, the product as x86 CPUs without
VNNI compute it, and the bound on the stored weights that makes the two equal.

The int8 graphs multiply uint8 activations (``DynamicQuantizeLinear``: 0..255) by int8 weights
(``MatMulInteger`` or its fusion ``DynamicQuantizeMatMul``). ONNX Runtime's CPU kernels (MLAS) for that
product differ by CPU:

- x86 with AVX2, or AVX-512 without VNNI: ``vpmaddubsw`` multiplies u8 x s8 and adds each pair of
  neighbouring products (k, k+1 along the reduced axis) into a *signed 16-bit lane with saturation*;
  ``vpmaddwd`` then widens the pair sums to 32 bits. A pair sum beyond [-32768, 32767] is clipped.
- x86 with AVX-512 VNNI, AVX-VNNI or AMX, x86 with SSE4.1 only, and ARM64 (NEON widening multiplies,
  UDOT/SDOT, I8MM): every product reaches a 32-bit accumulator unclipped.

So a graph computes the same integers on every CPU exactly when no pair of products can leave the 16-bit
range. With activations up to 255 that holds for any pairing when the two largest weight magnitudes of
every output column sum to at most 128: ``255 * 128 = 32640 <= 32767``. Weights in [-64, 64] (ONNX
Runtime's ``reduce_range`` for int8) guarantee it; full-range weights (±127) do not (``255 * 254 = 64770``).
"""

from __future__ import annotations

import numpy as np

from edge_sdk.errors import BundleError

ACTIVATION_MAX = 255                  # DynamicQuantizeLinear's uint8 range is 0..255
INT16_MIN, INT16_MAX = -(1 << 15), (1 << 15) - 1
WEIGHT_MAX = 64                       # the largest |int8 weight| two of which keep a pair inside int16
_EXACT_IN_FLOAT64 = 1 << 53           # integers below this survive float64 products and sums exactly
_ROWS_PER_CHUNK = 16                  # bounds the [rows, K/2, N] pair tensor of the saturating emulation


def pair_sum_bound(weights: np.ndarray) -> int:
    """The largest magnitude a sum of two products ``a_i * b_i + a_j * b_j`` can reach in any output column
    of ``activations (0..255) @ weights``, over every pairing of the reduced axis a kernel might choose.

    ``weights`` is the int8 right-hand side of the product, [K, N] (reduced axis first, as MatMulInteger
    reads it). The bound is ``255 * (the two largest |weights| of the column)``, largest over columns.
    """
    magnitudes = np.abs(np.asarray(weights, dtype=np.int64))
    if magnitudes.ndim != 2:
        raise ValueError(f"pair_sum_bound needs a 2-D [K, N] weight, got shape {list(magnitudes.shape)}")
    if magnitudes.shape[0] == 0 or magnitudes.shape[1] == 0:
        return 0
    if magnitudes.shape[0] == 1:
        return int(ACTIVATION_MAX * magnitudes.max())
    two_largest = np.partition(magnitudes, magnitudes.shape[0] - 2, axis=0)[-2:]
    return int(ACTIVATION_MAX * two_largest.sum(axis=0).max())


def exact_matmul_integer(activations: np.ndarray, zero_point: int, weights: np.ndarray) -> np.ndarray:
    """``(activations - zero_point) @ weights`` in exact integer arithmetic (int64), as ONNX defines
    MatMulInteger with a zero weight zero point. ``activations`` uint8 [..., K], ``weights`` int8 [K, N]."""
    a, b = _operands(activations, weights)
    if b.shape[0] * ACTIVATION_MAX * 128 >= _EXACT_IN_FLOAT64:
        raise ValueError(f"a reduced axis of {b.shape[0]} is too long for the float64 shortcut")
    # float64 BLAS is exact here (every partial sum stays below 2**53) and far faster than numpy's integer
    # matmul, which has no BLAS behind it.
    product = (a.astype(np.float64) - float(zero_point)) @ b.astype(np.float64)
    return np.rint(product).astype(np.int64)


def saturating_matmul_integer(activations: np.ndarray, zero_point: int, weights: np.ndarray) -> np.ndarray:
    """MatMulInteger as the AVX2 / AVX-512 (non-VNNI) kernel computes it: ``vpmaddubsw`` pair sums of raw
    uint8 x int8 products over (k, k+1), each clipped to int16, accumulated in 32 bits; the activation zero
    point enters exactly, through the weights' column sums. Returns int64 [..., N]."""
    a, b = _operands(activations, weights)
    lead, k = a.shape[:-1], a.shape[-1]
    rows = a.reshape(-1, k).astype(np.int32)
    b32 = b.astype(np.int32)
    if k % 2:  # the kernel pads the reduced axis with zeros to whole pairs
        rows = np.concatenate([rows, np.zeros((rows.shape[0], 1), np.int32)], axis=1)
        b32 = np.concatenate([b32, np.zeros((1, b32.shape[1]), np.int32)], axis=0)
    out = np.empty((rows.shape[0], b32.shape[1]), np.int64)
    even, odd = b32[0::2][None], b32[1::2][None]  # [1, K/2, N]
    for start in range(0, rows.shape[0], _ROWS_PER_CHUNK):
        chunk = rows[start:start + _ROWS_PER_CHUNK]
        pairs = chunk[:, 0::2, None] * even + chunk[:, 1::2, None] * odd  # [rows, K/2, N], exact in int32
        out[start:start + _ROWS_PER_CHUNK] = np.clip(pairs, INT16_MIN, INT16_MAX).sum(axis=1, dtype=np.int64)
    out -= int(zero_point) * b.astype(np.int64).sum(axis=0)
    return out.reshape(*lead, b.shape[1])


def _operands(activations: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(activations), np.asarray(weights)
    if a.dtype != np.uint8 or b.dtype != np.int8:
        raise ValueError(f"expected uint8 activations and int8 weights, got {a.dtype} and {b.dtype}")
    if b.ndim != 2 or a.ndim < 1 or a.shape[-1] != b.shape[0]:
        raise ValueError(f"cannot multiply activations {list(a.shape)} by weights {list(b.shape)}")
    return a, b


def check_int8_portable(inference: dict, bundle: str) -> None:
    """Refuse an int8 bundle whose stored weights let a pair of products overflow a 16-bit lane.

    ``inference`` is the manifest's ``inference`` entry: an int8 build records ``int8_max_pair_sum`` (the
    largest :func:`pair_sum_bound` of its matrices). Earlier builds stored full-range weights and recorded
    nothing; on x86 CPUs without VNNI they compute a different function than the one they were validated
    with, and personalization on them learns nothing, so they are refused rather than run."""
    if inference.get("precision", "fp32") != "int8":
        return
    bound = inference.get("int8_max_pair_sum")
    if isinstance(bound, int) and not isinstance(bound, bool) and 0 <= bound <= INT16_MAX:
        return
    found = "records no bound" if bound is None else f"allows {bound!r}"
    raise BundleError(f"bundle {bundle!r} is an int8 build whose weights may overflow the 16-bit lanes of ONNX "
                      f"Runtime's integer kernel on x86 CPUs without AVX-512 VNNI (its manifest {found}; at most "
                      f"{INT16_MAX} is exact everywhere): it was built by an earlier edge-sdk and computes wrong "
                      "results on those CPUs; rebuild it with this edge-sdk (`edge-sdk build … --base int8-compute`)")
