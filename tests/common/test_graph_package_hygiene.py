"""The ONNX graph helpers, and the host rewrites built only from them, load without torch.

The int8 rewrite and the portable training step are numpy + onnx work; reaching one of their helpers
through a module that exports PyTorch models would make them (and every tool that uses them) pay for
torch, and would fail outright where torch is not installed (the device environment has onnx but no
torch). Runs wherever onnx is installed: the host env and the ORT-training device env; the stock env has
no onnx, so it skips there.
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

pytest.importorskip("onnx")

import edge_sdk.graph  # noqa: E402  (after the skip: the package needs onnx)

TORCH_FREE = [
    "edge_sdk.graph",
    *sorted(f"edge_sdk.graph.{info.name}" for info in pkgutil.iter_modules(edge_sdk.graph.__path__)),
    "edge_sdk.host.inference_graph",
    "edge_sdk.host.int8_diagnosis",
    "edge_sdk.host.int8_matmul",
    "edge_sdk.host.merge",
    "edge_sdk.host.portable.assemble",
    "edge_sdk.host.portable.frozen_weights",
    "edge_sdk.host.portable.lowering",
    "edge_sdk.host.portable.validate",
    "edge_sdk.host.graph_set",
    "edge_sdk.host.pipeline",
    "edge_sdk.host.row_selection",
]
HEAVY = ("torch", "transformers", "peft", "optimum")


def test_the_graph_package_has_modules() -> None:
    assert len(TORCH_FREE) > 10  # guards the listing above against an empty package path


@pytest.mark.parametrize("module", TORCH_FREE)
def test_module_loads_without_torch(module: str) -> None:
    # One fresh interpreter per module: together they could hide which one pulls torch in.
    code = f"import sys, {module}; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
