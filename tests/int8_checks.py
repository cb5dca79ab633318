"""CPU-independent checks of an int8 bundle's integer products, shared by the tiny and the real-model tests.

For every ``DynamicQuantizeLinear -> MatMulInteger`` of a graph, run on real activations:

- the arithmetic bound: no pair of products the stored weights allow can leave a 16-bit lane;
- the emulation: the AVX2 / AVX-512 (non-VNNI) kernel, emulated in numpy on the activations as ONNX Runtime
  quantized them, gives the exact integer product; so does ONNX Runtime's kernel on the CPU running the test.

The first two hold or fail the same way on every machine; the third is the same statement about this one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_sdk.bundle.int8_arithmetic import INT16_MAX, WEIGHT_MAX, pair_sum_bound, saturating_matmul_integer
from edge_sdk.device.runtime import DeviceBundle
from edge_sdk.host.int8_diagnosis import capture_products


def real_feeds(bundle_path: Path, data: Path, rows: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The inference graph's and the portable step's inputs for the first ``rows`` examples of ``data``,
    with the bundle's initial adapter (and fresh AdamW moments for the step)."""
    bundle = DeviceBundle.open(bundle_path)
    train = bundle.task.load(data)
    picked = list(range(min(rows, len(train))))
    batch = bundle.tokenizer.pad([train.encoded[i] for i in picked])
    weights = bundle.adapters.load("initial")
    names = bundle.manifest.training["portable"]["names"]
    step = batch | bundle.task.targets(train, picked, batch["input_ids"].shape[1]) | weights
    for moment in ("first_moment", "second_moment"):
        step |= {names[moment][name]: np.zeros_like(value) for name, value in weights.items()}
    step[names["step"]] = np.asarray(0, np.int64)
    step[names["learning_rate"]] = np.asarray(1e-3, np.float32)
    return batch | weights, step


def assert_integer_products_exact(graph: Path, feeds: dict[str, np.ndarray]) -> dict[str, int]:
    """Check every integer product of ``graph`` on ``feeds`` (see the module); return what was checked."""
    products = rows = largest_pair = 0
    for product in capture_products(graph, feeds):
        assert product.weights.min() >= -WEIGHT_MAX and product.weights.max() <= WEIGHT_MAX, product.node
        bound = pair_sum_bound(product.weights)
        assert bound <= INT16_MAX, f"{product.node}: two products can reach {bound}"
        exact = product.exact()
        emulated = saturating_matmul_integer(product.quantized, product.zero_point, product.weights)
        np.testing.assert_array_equal(emulated, exact, err_msg=f"{product.node}: a 16-bit lane saturated")
        np.testing.assert_array_equal(product.result.astype(np.int64), exact,
                                      err_msg=f"{product.node}: this CPU's kernel is not exact")
        products += 1
        rows += int(np.prod(product.quantized.shape[:-1]))
        largest_pair = max(largest_pair, bound)
    return {"products": products, "rows": rows, "largest_pair_bound": largest_pair}
