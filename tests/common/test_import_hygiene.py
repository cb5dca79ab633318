"""The device side must never need torch, transformers, peft or onnx (docs/architecture.md)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import edge_sdk

PACKAGE = Path(edge_sdk.__file__).parent
HOST_ONLY = {"torch", "transformers", "peft", "optimum", "onnx"}
DEVICE_SIDE = ["device", "bundle", "tasks", "profiles", "fleet", "errors.py", "__init__.py"]


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
            if node.module.startswith("edge_sdk.host"):
                roots.add("edge_sdk.host")
    return roots


def test_device_side_sources_import_no_host_library() -> None:
    offenders = {}
    for entry in DEVICE_SIDE:
        target = PACKAGE / entry
        for path in [target] if target.is_file() else sorted(target.rglob("*.py")):
            bad = _imported_roots(path) & (HOST_ONLY | {"edge_sdk.host"})
            if bad:
                offenders[str(path.relative_to(PACKAGE))] = sorted(bad)
    assert offenders == {}


def test_device_runtime_and_cli_load_without_host_libraries() -> None:
    code = (
        "import sys, edge_sdk.device, edge_sdk.bundle, edge_sdk.cli.main, edge_sdk.device.backends.ort_training;"
        f"print(sorted(m for m in {sorted(HOST_ONLY)!r} if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.skipif(not os.environ.get("EDGE_SDK_DEVICE_ENV"), reason="only in the device environments")
def test_device_environment_has_no_torch() -> None:
    import importlib.util

    assert [name for name in ("torch", "transformers", "peft") if importlib.util.find_spec(name)] == []


@pytest.mark.skipif(os.environ.get("EDGE_SDK_DEVICE_ENV") != "stock", reason="only in the stock-onnxruntime env")
def test_stock_environment_has_the_stock_onnxruntime() -> None:
    from importlib.metadata import PackageNotFoundError, version

    import onnxruntime

    from edge_sdk.device.backends import training_build_installed

    assert not training_build_installed()
    with pytest.raises(PackageNotFoundError):
        version("onnxruntime-training-cpu")
    assert int(onnxruntime.__version__.split(".")[1]) >= 20
