"""A standalone inference graph with an adapter merged into the base weights (``edge-sdk adapters export
--format merged-onnx``): W' = W + (alpha / r) · B · A for every adapted linear layer (DoRA: rescaled row by
row to the trained magnitude; qlora: the int8 base dequantized first), the adapter branches removed, the
trained head modules baked in. No adapter inputs are left, so any ONNX runtime can run it like the
original model, at the original model's cost. Before anything is written, the merged graph is run beside
the bundle's graph fed with the adapter, on real tokens.

Needs the ``onnx`` package (host side); the bundle is read as is, nothing in it changes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edge_sdk.bundle.atomic import move_file, scratch_folder
from edge_sdk.bundle.store import Bundle
from edge_sdk.errors import AdapterError, ExportError
from edge_sdk.graph.frozen import frozen_value
from edge_sdk.graph.nodes import node_inputs
from edge_sdk.graph.prune import prune_unused
from edge_sdk.host.ort_session import cpu_session

_LORA_A, _LORA_B, _BASE = "lora_A.default.weight", "lora_B.default.weight", "base_layer.weight"


def _set_initializer(graph: onnx.GraphProto, name: str, value: np.ndarray) -> None:
    producers = [node for node in graph.node if name in node.output]
    for node in producers:  # a DequantizeLinear that produced the weight is no longer needed
        graph.node.remove(node)
    for index, init in enumerate(graph.initializer):
        if init.name == name:
            graph.initializer[index].CopyFrom(numpy_helper.from_array(value, name))
            return
    graph.initializer.append(numpy_helper.from_array(value, name))


_ADAPTER_MARKERS = (".lora_A.", ".lora_B.", ".lora_magnitude_vector.")


def _is_adapter(name: str) -> bool:
    return any(marker in name for marker in _ADAPTER_MARKERS)


def _cut_adapter_branches(graph: onnx.GraphProto, adapter_inputs: set[str]) -> None:
    """Every LoRA/DoRA term joins the base layer's output through an Add (PEFT: ``result = result + …``); with
    the adapter merged into the base weight those terms are gone, so each such Add is replaced by its
    adapter-free input. The terms, left unread, are pruned."""
    dependent, replaced = set(adapter_inputs), {}
    for node in graph.node:  # topological order
        inputs = node_inputs(node)
        if node.op_type == "Add" and len(node.input) == 2 and len(inputs & dependent) == 1:
            # A junction: base output + adapter term. After the merge it is the base output alone, which no
            # longer depends on the adapter (so a residual Add further on is not mistaken for a junction).
            replaced[node.output[0]] = next(name for name in node.input if name not in dependent)
        elif inputs & dependent:
            dependent.update(node.output)
    for node in graph.node:
        for index, name in enumerate(node.input):
            while name in replaced:
                name = replaced[name]
            node.input[index] = name
    still = _reached_from(graph, adapter_inputs)
    for output in graph.output:
        if output.name in still:
            raise ExportError(f"graph output {output.name!r} still depends on the adapter after merging")


def _reached_from(graph: onnx.GraphProto, sources: set[str]) -> set[str]:
    """Every tensor computed from any of ``sources`` (nodes are in topological order: one pass)."""
    reached = set(sources)
    for node in graph.node:
        if any(name in reached for name in node_inputs(node)):
            reached.update(node.output)
    return reached


def _merged_weight(method: str, base: np.ndarray, a: np.ndarray, b: np.ndarray, scale: float,
                   magnitude: np.ndarray | None) -> np.ndarray:
    merged = base + scale * (b @ a)
    if method == "dora":  # PEFT: m * (W + sBA) / ||W + sBA|| per output row
        merged = (magnitude / np.linalg.norm(merged, axis=1))[:, None] * merged
    return merged.astype(np.float32)


def merged_model(bundle: Bundle, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The bundle's inference graph with ``weights`` merged in (see module docstring)."""
    manifest = bundle.manifest
    method = manifest.adapter
    model = onnx.load(str(bundle.path(manifest.inference_spec.model)))  # external base weights loaded too
    graph = model.graph
    scale = manifest.peft_spec.alpha / manifest.peft_spec.rank
    for name in [n for n in weights if n.endswith(_LORA_A)]:
        prefix = name[: -len(_LORA_A)]
        base_name = prefix + _BASE
        base = frozen_value(graph, base_name)
        if base is None:
            raise ExportError(f"the base weight {base_name!r} is neither an initializer nor a dequantized initializer")
        a, b = weights[name], weights[prefix + _LORA_B]
        if base.shape != (b.shape[0], a.shape[1]):
            raise ExportError(f"{base_name} has shape {list(base.shape)}, not [out, in] = {[b.shape[0], a.shape[1]]}; "
                              "layers that store the weight transposed (GPT-2's Conv1D) cannot be merged here")
        magnitude = weights.get(prefix + "lora_magnitude_vector.default.weight")
        _set_initializer(graph, base_name, _merged_weight(method, base, a, b, scale, magnitude))
    adapter_inputs = {name for name in weights if _is_adapter(name)}
    for name, value in weights.items():
        if name not in adapter_inputs:  # trained head modules become ordinary weights
            graph.initializer.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
    _cut_adapter_branches(graph, adapter_inputs)
    kept = [value for value in graph.input if value.name not in weights]
    del graph.input[:]
    graph.input.extend(kept)
    prune_unused(graph)
    leftovers = sorted({name for node in graph.node for name in node.input if _is_adapter(name)})
    if leftovers:
        raise ExportError(f"adapter tensors are still read after merging: {leftovers[:3]}")
    return model


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
