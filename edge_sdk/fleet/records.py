"""Adapter weights in and out of Flower's records, and the checks both sides make on them."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord

from edge_sdk.errors import AdapterError

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
LOCAL = "local-adapter"  # the device's own part of the adapter (fedsa), kept in the ClientApp's Context.state


def to_record(weights: dict[str, np.ndarray], names: list[str] | None = None) -> ArrayRecord:
    """An ArrayRecord of ``weights`` (in ``names`` order when given: Flower's clipping mod compares key order)."""
    order = names if names is not None else list(weights)
    return ArrayRecord({name: Array(np.ascontiguousarray(weights[name])) for name in order})


def from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {name: array.numpy() for name, array in record.items()}


def conform(received: dict[str, np.ndarray], reference: dict[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
    """``received`` cast to the dtypes of ``reference`` (Flower's averaging computes in float64), after checking
    every name and shape belongs to this bundle's adapter: a fleet mixing bundles fails here, not silently."""
    unknown = sorted(set(received) - set(reference))
    if unknown:
        raise AdapterError(f"{where}: weights {unknown[:3]} are not part of this bundle's adapter; every device and "
                           "the server must use the same bundle")
    result = {}
    for name, value in received.items():
        expected = reference[name]
        if value.shape != expected.shape:
            raise AdapterError(f"{where}: {name} has shape {list(value.shape)}, this bundle's is "
                               f"{list(expected.shape)}; every device and the server must use the same bundle")
        if not np.all(np.isfinite(value)):
            raise AdapterError(f"{where}: {name} holds non-finite values")
        result[name] = value.astype(expected.dtype, copy=False)
    return result


def record_bytes(record: ArrayRecord) -> int:
    """The payload size of the arrays (what travels, before the transport's own framing)."""
    return int(sum(len(array.data) for array in record.values()))
