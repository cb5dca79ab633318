"""A standalone inference graph with an adapter merged into the base weights (``edge-sdk adapters export
--format merged-onnx``): W' = W + (alpha / r) · B · A for every adapted linear layer (DoRA: rescaled row by
row to the trained magnitude; qlora: the int8 base dequantized first), the adapter branches removed, the
trained head modules baked in. No adapter inputs are left, so any ONNX runtime can run it like the
original model, at the original model's cost. Before anything is written, the merged graph is run beside
the bundle's graph fed with the adapter, on real tokens. The merge itself is :mod:`edge_sdk.graph.merge`
(torch-free, shared with the device's ``adapters deploy``).

Needs the ``onnx`` package; the bundle is read as is, nothing in it changes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from edge_sdk.bundle.atomic import move_file, scratch_folder
from edge_sdk.bundle.store import Bundle
from edge_sdk.errors import AdapterError, ExportError
from edge_sdk.graph.merge import merged_model
from edge_sdk.host.ort_session import cpu_session


def _sample_feeds(bundle: Bundle, session) -> dict[str, np.ndarray]:
    """Real tokens for the self-check; decoder inputs of seq2seq graphs reuse the source tokens."""
    from edge_sdk.device.tokenizer import BundleTokenizer

    manifest = bundle.manifest
    tokenizer = BundleTokenizer(bundle.path(manifest.tokenizer_spec.file), manifest)
    batch = tokenizer(["The results beat expectations and the shares rose.", "Rain later today."])
    feeds = {}
    for value in session.get_inputs():
        source = value.name.removeprefix("decoder_")
        if source in batch:
            feeds[value.name] = batch[source]
    return feeds


def check_merged(bundle: Bundle, weights: dict[str, np.ndarray], merged: onnx.ModelProto, path: Path) -> float:
    """Run the bundle's graph with the adapter fed and the merged graph on the same tokens; raise beyond
    1e-3 (the merge reorders float sums). Returns the largest difference."""
    original = cpu_session(bundle.path(bundle.manifest.inference_spec.model))
    candidate = cpu_session(path)
    feeds = _sample_feeds(bundle, candidate)
    names = [output.name for output in merged.graph.output]
    expected = original.run(names, feeds | weights)
    actual = candidate.run(names, feeds)
    worst = max(float(np.max(np.abs(e - a))) for e, a in zip(expected, actual, strict=True))
    if not all(np.allclose(e, a, atol=1e-3, rtol=1e-3) for e, a in zip(expected, actual, strict=True)):
        raise ExportError(f"the merged graph disagrees with the bundle's graph and adapter by up to {worst:.3g}; "
                          "nothing was written")
    return worst


def export_merged_onnx(bundle: Bundle, weights: dict[str, np.ndarray], out: Path, overwrite: bool = False) -> Path:
    """Write the merged graph to ``out`` (a .onnx file; its weights in ``out`` + ``.data`` beside it),
    atomically: a failure leaves nothing at ``out``."""
    out = Path(out)
    if out.suffix != ".onnx":
        raise AdapterError(f"--out for merged-onnx is a .onnx file path, got {str(out)!r}")
    data = out.with_name(out.name + ".data")
    if (out.exists() or data.exists()) and not overwrite:
        raise AdapterError(f"{str(out)!r} already exists; choose another --out or pass --overwrite")
    if bundle.manifest.compute_precision != "fp32":
        # The merge needs W itself; an int8-compute bundle holds only int8 copies, and merging into those
        # would round the adapter's update away.
        raise AdapterError(f"bundle {str(bundle.root)!r} was built with --base {bundle.manifest.base} (--precision "
                           f"{bundle.manifest.compute_precision}); a merged graph needs the float32 base: build the "
                           "bundle with --base float32 or int8-storage, or export with --format peft")
    model = merged_model(bundle, weights)
    # The graph and its .data file are written and checked in a scratch folder beside ``out``, then moved
    # into place data first, so ``out`` never refers to weights that are not there yet.
    with scratch_folder(out) as staging:
        onnx.save(model, str(staging / out.name), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=data.name, size_threshold=1024)
        check_merged(bundle, weights, model, staging / out.name)
        if (staging / data.name).exists():
            move_file(staging / data.name, data)
        move_file(staging / out.name, out)
    return out
