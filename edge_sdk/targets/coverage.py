"""Placeholder: the coverage branch replaces this module with the real operator-coverage prediction."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any


def predict_coverage(model, profile) -> dict[str, Any]:
    """Which of ``model``'s nodes the profile's accelerator runs, by op type (placeholder: its int8 table)."""
    import onnx

    if isinstance(model, (str, Path)):
        model = onnx.load(str(model), load_external_data=False)
    supported = set(profile.operators.get("int8", ()))
    counts = Counter(node.op_type for node in model.graph.node)
    on = sum(count for op, count in counts.items() if op in supported)
    total = sum(counts.values())
    return {"profile": profile.name, "nodes": total, "accelerated_nodes": on,
            "share": round(on / total, 4) if total else 0.0,
            "cpu_ops": sorted(op for op in counts if op not in supported)}


def format_coverage(report: dict[str, Any]) -> str:
    return (f"coverage ({report.get('profile')}): {report.get('accelerated_nodes')}/{report.get('nodes')} nodes on "
            f"the accelerator; on the CPU: {', '.join(report.get('cpu_ops', [])) or 'none'}")
