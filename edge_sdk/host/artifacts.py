"""ONNX Runtime on-device training artifacts (training, eval and optimizer graphs plus a checkpoint)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path

from edge_sdk.errors import ExportError
from edge_sdk.host.export import ExportedGraph

log = logging.getLogger(__name__)

TRAINING_FILES = {
    "training_model": "training_model.onnx",
    "eval_model": "eval_model.onnx",
    "optimizer_model": "optimizer_model.onnx",
    "checkpoint": "checkpoint",
}


@contextlib.contextmanager
def _native_stderr_captured(sink: Path):
    """Send C++-level stderr to ``sink`` while the block runs.

    The gradient builder logs every graph transformer it applies at INFO level through its own logger,
    which no Python-side severity setting reaches; a build's output should stay readable, and the log
    is still there to quote when the builder fails.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with open(sink, "wb") as handle:
        os.dup2(handle.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def _restart_onnxblock_names() -> None:
    """Reproducible builds: onnxblock names the nodes it adds from a process-wide counter ("onnx::AdamWOptimizer::N"),
    so a second build in one process would name them differently. Restart the counter (a private of onnxruntime
    1.19's onnxblock; if it moves, the names merely depend on the builds before, which a test then shows)."""
    from onnxruntime.training.onnxblock import _graph_utils

    if isinstance(getattr(_graph_utils, "_GRAPH_TOKEN", None), int):
        _graph_utils._GRAPH_TOKEN = 0


def build_training_artifacts(graph: ExportedGraph, loss, directory: Path) -> dict[str, str]:
    """Write the four ORT training artifacts for ``graph`` with the onnxblock ``loss`` into ``directory``."""
    from onnxruntime.training import artifacts

    directory.mkdir(parents=True, exist_ok=True)
    model = graph.model
    native_log = directory.parent / "artifacts.log"
    _restart_onnxblock_names()
    try:
        with _native_stderr_captured(native_log):
            artifacts.generate_artifacts(
                model, requires_grad=graph.trainable, frozen_params=graph.frozen, loss=loss,
                optimizer=artifacts.OptimType.AdamW, artifact_directory=str(directory),
                additional_output_names=list(graph.output_names),
            )
    except Exception as exc:  # gradient building errors come as RuntimeError/Fail from the C++ side
        # The log itself may be what failed (a full disk at its open): then there is no tail to show.
        tail = native_log.read_text(errors="replace").strip().splitlines()[-5:] if native_log.is_file() else []
        raise ExportError(f"building the ONNX Runtime training artifacts failed: {exc}"
                          + ("\n" + "\n".join(tail) if tail else "")) from exc
    finally:
        native_log.unlink(missing_ok=True)
    for name in TRAINING_FILES.values():
        if not (directory / name).exists():
            raise ExportError(f"the ONNX Runtime artifact builder did not write {name}")
    return dict(TRAINING_FILES)
