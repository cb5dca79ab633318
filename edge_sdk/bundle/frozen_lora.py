"""LoRA's frozen A matrices of a bundle built with ``--freeze-lora-a`` (FFA-LoRA).

Such a bundle keeps every A at its initial value on every device: the adapter is LoRA B and the trained head,
and the mean of many devices' adapters is exactly the mean of their weight updates. The build records the A
values (float32, under the bundle's parameter names) in one safetensors file and their digest in the manifest's
``peft.frozen_lora_a``; devices and the fleet read them here and compare digests to check they share one A.

numpy and safetensors only: devices import it.
"""

from __future__ import annotations

import hashlib

import numpy as np
from safetensors import safe_open

from edge_sdk.bundle.store import Bundle
from edge_sdk.errors import BundleError


def lora_a_digest(weights: dict[str, np.ndarray]) -> str:
    """sha256 (hex) over the tensors sorted by name: each one's name, dtype, shape and C-order bytes.

    Equal digests mean equal names, dtypes, shapes and values (bit for bit)."""
    digest = hashlib.sha256()
    for name in sorted(weights):
        value = np.ascontiguousarray(weights[name])
        digest.update(name.encode("utf-8") + b"\0")
        digest.update(value.dtype.str.encode("ascii") + b"\0")
        digest.update(",".join(str(int(dim)) for dim in value.shape).encode("ascii") + b"\0")
        digest.update(value.tobytes())
    return digest.hexdigest()


def frozen_lora_a(bundle: Bundle) -> dict[str, np.ndarray]:
    """The bundle's frozen LoRA A matrices by parameter name (``…lora_A.default.weight``); {} when the bundle
    trains A (built without ``--freeze-lora-a``). Raises BundleError when the file does not match the digest the
    manifest records."""
    spec = bundle.manifest.peft_spec
    if not spec.freeze_lora_a:
        return {}
    path = bundle.path(spec.frozen_lora_a_file)
    try:
        with safe_open(str(path), framework="numpy") as handle:
            weights = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as exc:  # safetensors' own errors: a damaged header, offsets outside the file
        raise BundleError(f"{str(path)!r} (the bundle's frozen LoRA A matrices) is not a readable safetensors "
                          f"file: {exc}; rebuild the bundle") from exc
    found = lora_a_digest(weights)
    if found != spec.frozen_lora_a_sha256:
        raise BundleError(f"{str(path)!r} holds LoRA A matrices with digest {found}, but the manifest records "
                          f"peft.frozen_lora_a.sha256 {spec.frozen_lora_a_sha256}; rebuild the bundle")
    return weights
