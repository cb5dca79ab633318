"""The integer arithmetic of int8 bundles in numpy: the pair-sum bound, the exact product and the emulated
16-bit-saturating kernel of x86 CPUs without VNNI, and the device's refusal of bundles outside the bound."""

from __future__ import annotations

import numpy as np
import pytest

from edge_sdk.bundle.int8_arithmetic import (
    INT16_MAX,
    WEIGHT_MAX,
    check_int8_portable,
    exact_matmul_integer,
    pair_sum_bound,
    saturating_matmul_integer,
)
from edge_sdk.errors import BundleError


def test_the_bound_takes_the_two_largest_magnitudes_of_each_column() -> None:
    weights = np.array([[64, 3], [-64, -127], [1, 2]], np.int8)
    assert pair_sum_bound(weights) == 255 * (127 + 3)        # column 1: 127 and 3, whatever their positions
    assert pair_sum_bound(weights[:, :1]) == 255 * 128
    assert pair_sum_bound(np.array([[-100]], np.int8)) == 255 * 100
    # 7-bit weights are the widest symmetric range whose worst pair fits a 16-bit lane; 8-bit ones are not
    assert 255 * 2 * WEIGHT_MAX <= INT16_MAX < 255 * 2 * (WEIGHT_MAX + 1)


def test_the_exact_product_is_integer_matmul_with_the_zero_point() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (3, 5, 40), dtype=np.uint8)
    b = rng.integers(-127, 128, (40, 7), dtype=np.int8)
    expected = (a.astype(np.int64) - 131) @ b.astype(np.int64)
    np.testing.assert_array_equal(exact_matmul_integer(a, 131, b), expected)


def test_a_saturating_pair_is_clipped_to_16_bits() -> None:
    a = np.array([[255, 255, 255, 255, 7]], np.uint8)           # odd K: the kernel pads a zero pair member
    b = np.array([[127], [127], [-127], [-127], [3]], np.int8)
    # pairs (0,1): 64770 -> 32767, (2,3): -64770 -> -32768, (4,pad): 21
    assert saturating_matmul_integer(a, 0, b)[0, 0] == 32767 - 32768 + 21
    assert exact_matmul_integer(a, 0, b)[0, 0] == 21
    # the zero point enters exactly, through the column sums
    assert saturating_matmul_integer(a, 2, b)[0, 0] == 32767 - 32768 + 21 - 2 * 3


@pytest.mark.parametrize("seed", range(4))
def test_within_the_bound_the_saturating_kernel_is_exact(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, 300))
    b = rng.integers(-WEIGHT_MAX, WEIGHT_MAX + 1, (k, 33), dtype=np.int8)
    b[: k // 2, 0], b[:, 1] = WEIGHT_MAX, -WEIGHT_MAX           # worst columns: every pair at the limit
    a = rng.integers(0, 256, (37, k), dtype=np.uint8)
    a[0] = 255                                                  # a row at the top of the activation range
    assert pair_sum_bound(b) <= INT16_MAX
    zero_point = int(rng.integers(0, 256))
    np.testing.assert_array_equal(saturating_matmul_integer(a, zero_point, b), exact_matmul_integer(a, zero_point, b))


def test_full_range_weights_are_not_exact_on_the_saturating_kernel() -> None:
    rng = np.random.default_rng(7)
    b = rng.integers(-127, 128, (64, 16), dtype=np.int8)
    a = rng.integers(128, 256, (8, 64), dtype=np.uint8)
    assert pair_sum_bound(b) > INT16_MAX
    assert not np.array_equal(saturating_matmul_integer(a, 0, b), exact_matmul_integer(a, 0, b))


def test_the_device_refuses_int8_bundles_outside_the_bound() -> None:
    check_int8_portable({"precision": "fp32"}, "b")                       # float bundles record nothing
    check_int8_portable({"precision": "int8", "int8_max_pair_sum": 32640}, "b")
    for recorded in ({}, {"int8_max_pair_sum": 64770}, {"int8_max_pair_sum": "32640"},
                     {"int8_max_pair_sum": True}):
        with pytest.raises(BundleError, match=r"bundle 'b' is an int8 build .* rebuild it with this edge-sdk"):
            check_int8_portable({"precision": "int8"} | recorded, "b")
