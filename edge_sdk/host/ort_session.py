"""The one way the host opens an ONNX graph in ONNX Runtime to check it: on the CPU, quietly.

The host only runs graphs to compare them with PyTorch or with each other; ONNX Runtime's warnings about
the exports (unused dropout constants, initializers it removes) are expected there, not news, so only
errors are logged. onnxruntime is imported on first use, so importing this module costs nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnxruntime

QUIET = 3  # ONNX Runtime's log severity: 3 = errors only


def cpu_session(path: Path | str, *, log_severity_level: int = QUIET) -> onnxruntime.InferenceSession:
    """An ONNX Runtime session for the graph at ``path`` on the CPU execution provider."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = log_severity_level
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
