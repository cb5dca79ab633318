"""Store the adapted layers' frozen weights as int8 (one scale per output row), computed in float32.

From here on the PyTorch model holds the int8 base dequantized, so every export and check that follows
sees exactly the weights the bundle stores (``edge_sdk.host.quantize``).
"""

from __future__ import annotations

from edge_sdk.host.pipeline import BuildState, Fragment, Stage


def _run(state: BuildState, _writer, _draft) -> Fragment:
    from edge_sdk.host.quantize import quantize_adapted_base

    state.base_rewrite = quantize_adapted_base(state.loaded.model)
    return {}


STAGE = Stage("int8-storage", "int8 storage: quantizing the adapted layers' frozen weights", _run)
