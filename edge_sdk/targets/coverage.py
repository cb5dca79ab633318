"""Operator coverage: which nodes of a graph a profile's accelerator runs, what share of the work that is, and
how many tensors cross between the accelerator and the CPU (each crossing is a copy).

Two provenances, never mixed up:

* ``predicted`` (:func:`predict_coverage`): from the profile's operator table (``[operators]``: precision ->
  op types its accelerator runs). The provider is not run; the report says so and claims no offload.
* ``measured`` (:func:`measure_coverage`): from ONNX Runtime's own assignment of nodes to providers in a
  session with the profile's providers. onnxruntime 1.24+ records it when asked
  (``session.record_ep_graph_assignment_info=1``, read back with ``get_provider_graph_assignment_info()``);
  older releases (the training build 1.19.2) only print it in the session's verbose log ("Node placements"),
  which is parsed instead. Profiling is not used: a provider that compiles a subgraph (OpenVINO, Vitis AI)
  shows there as one fused node, so per-op placement would be lost.

Both look at the same graph: the model as ONNX Runtime's basic-level optimizer leaves it (constant folding,
redundant-node removal, basic fusions that every provider understands). That is what a provider's partitioner
(``GetCapability``) is offered: basic optimizations run before partitioning, the extended and layout ones after
it and only on the nodes the CPU provider took. So both reports count the nodes the partitioner saw, and the
graph for a prediction comes from a CPU session with ``optimized_model_filepath``.

Precision of a node: int8 when each of its floating-point inputs comes from a DequantizeLinear (it sits inside a
QDQ group), float32 otherwise; QuantizeLinear/DequantizeLinear themselves are int8. FLOPs per node from shapes
inferred statically (symbolic input dimensions set to the profile's static shapes, else batch 1 and sequence
128): MatMul and Gemm 2·M·K·N (batched: 2 · output elements · K), Conv 2 · output elements · (input channels /
group · kernel size), reshaping ops (Reshape, Squeeze, Shape, …) none, every other op one per output element.
These are estimates of the arithmetic, not of time.

Needs onnx and onnxruntime (no torch): usable on a device that has onnx installed.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edge_sdk.errors import BundleError, ConfigError
from edge_sdk.profiles.schema import CPU, Profile

PREDICTED = "predicted"
MEASURED = "measured"
ACCELERATOR = "accelerator"
ON_CPU = "cpu"
BOUNDARY_LIST_CAP = 40
_QDQ = ("QuantizeLinear", "DequantizeLinear")
_MATMUL_LIKE = ("MatMul", "MatMulInteger", "QLinearMatMul", "FusedMatMul", "MatMulNBits")
_NO_ARITHMETIC = ("Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Shape", "Size", "Constant",
                  "ConstantOfShape", "Expand", "Transpose", "Concat", "Slice", "Split", "Gather", "Cast", "Range")
_FLOPS_HOW = ("MatMul/Gemm: 2*M*K*N; Conv: 2*outputs*(channels/group*kernel); data movement (Reshape, Transpose, "
              "Gather, Concat, Slice, Cast, ...): 0; every other op: one per output element")
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


# --- the graph the partitioner sees ----------------------------------------------------------------------------

def _load(model: onnx.ModelProto | str | os.PathLike) -> tuple[onnx.ModelProto, str]:
    if isinstance(model, onnx.ModelProto):
        return onnx.ModelProto.FromString(model.SerializeToString()), "<in-memory model>"
    path = Path(model)
    try:
        return onnx.load(str(path)), str(path)
    except FileNotFoundError:
        raise ConfigError(f"graph {str(path)!r} does not exist") from None
    except Exception as exc:  # noqa: BLE001 - onnx raises DecodeError, ValueError, … for a damaged file
        raise BundleError(f"cannot read the ONNX graph {str(path)!r}: {exc}") from None


def _name_nodes(model: onnx.ModelProto) -> None:
    """Give every node a unique name, so ONNX Runtime's placements map back to them."""
    seen: set[str] = set()
    for index, node in enumerate(model.graph.node):
        name = node.name or f"{node.op_type}_{index}"
        while name in seen:
            name = f"{name}_{index}"
        node.name = name
        seen.add(name)


def _write_temp(model: onnx.ModelProto, folder: str, name: str) -> str:
    path = os.path.join(folder, name)
    large = model.ByteSize() > 1_800_000_000
    onnx.save(model, path, save_as_external_data=large, location=name + ".data" if large else None)
    return path


def _basic_options(onnxruntime, threads: int | None = 1):
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
    return options


def _optimized(model: onnx.ModelProto, folder: str) -> tuple[str, onnx.ModelProto]:
    """(the named model's file, the graph as ONNX Runtime's basic-level optimizer leaves it)."""
    import onnxruntime

    _name_nodes(model)
    named = _write_temp(model, folder, "named.onnx")
    options = _basic_options(onnxruntime)
    options.optimized_model_filepath = os.path.join(folder, "optimized.onnx")
    try:
        onnxruntime.InferenceSession(named, options, providers=[CPU])
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime's own exception types
        raise BundleError(f"ONNX Runtime cannot load the graph: {exc}") from None
    return named, onnx.load(options.optimized_model_filepath)


# --- shapes and FLOPs ------------------------------------------------------------------------------------------

def _assumed_dims(model: onnx.ModelProto, profile: Profile, dims: dict[str, int] | None) -> dict[str, int]:
    """Values of the symbolic input dimensions: ``dims`` by name (its "batch" and "sequence" also stand for any
    dimension whose name contains "batch", and any other), else the profile's static shapes, else 1 and 128."""
    dims = dims or {}
    shapes = profile.static_shapes
    batch = dims.get("batch", shapes.batch if shapes else 1)
    sequence = dims.get("sequence", (shapes.sequence if shapes and shapes.sequence else None) or 128)
    chosen: dict[str, int] = {}
    for value in model.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param and dim.dim_param not in chosen:
                name = dim.dim_param
                chosen[name] = dims.get(name, batch if "batch" in name.lower() else sequence)
    return chosen


def _with_shapes(model: onnx.ModelProto, chosen: dict[str, int]) -> dict[str, tuple[int, list[int] | None]]:
    """Tensor name -> (element type, static shape or None) after fixing the symbolic input dims."""
    fixed = onnx.ModelProto.FromString(model.SerializeToString())
    for value in fixed.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in chosen:
                dim.dim_value = chosen[dim.dim_param]
    try:
        fixed = onnx.shape_inference.infer_shapes(fixed, data_prop=True)
    except Exception:  # noqa: BLE001 - shapes are best effort: unknown ones count as such
        pass
    info: dict[str, tuple[int, list[int] | None]] = {}
    for value in [*fixed.graph.input, *fixed.graph.value_info, *fixed.graph.output]:
        tensor = value.type.tensor_type
        shape = [dim.dim_value if dim.HasField("dim_value") else None for dim in tensor.shape.dim]
        known = tensor.HasField("shape") and all(dim is not None for dim in shape)
        info[value.name] = (tensor.elem_type, shape if known else None)
    for name, value in _run_shapes(fixed).items():
        info[name] = value
    for tensor in fixed.graph.initializer:
        info[tensor.name] = (tensor.data_type, list(tensor.dims))
    for node in fixed.graph.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    info[node.output[0]] = (attribute.t.data_type, list(attribute.t.dims))
    return info


def _run_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, list[int]]]:
    """Every intermediate tensor's type and shape from one CPU run on inputs of ones (static inference cannot
    follow shapes computed at run time, such as position ids sliced to the sequence length); empty when the
    graph cannot run that way."""
    import onnxruntime

    probe = onnx.ModelProto.FromString(model.SerializeToString())
    known = {value.name for value in probe.graph.output}
    initializers = {tensor.name for tensor in probe.graph.initializer}
    for node in probe.graph.node:
        for name in node.output:
            if name and name not in known:
                probe.graph.output.append(onnx.ValueInfoProto(name=name))
                known.add(name)
    feeds = {}
    for value in probe.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        shape = [dim.dim_value if dim.HasField("dim_value") else 1 for dim in tensor.shape.dim]
        feeds[value.name] = np.ones(shape, onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type))
    try:
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 4
        session = onnxruntime.InferenceSession(probe.SerializeToString(), options, providers=[CPU])
        names = [output.name for output in session.get_outputs()]
        values = session.run(names, feeds)
    except Exception:  # noqa: BLE001 - best effort: static inference's shapes remain
        return {}
    return {name: (onnx.helper.np_dtype_to_tensor_dtype(value.dtype), list(value.shape))
            for name, value in zip(names, values, strict=True) if isinstance(value, np.ndarray)}


def _elements(shape: list[int] | None) -> int | None:
    return None if shape is None else int(np.prod(shape, dtype=np.int64)) if shape else 1


def _node_flops(node: onnx.NodeProto, info: dict) -> int | None:
    outputs = [info.get(name, (0, None))[1] for name in node.output if name]
    if node.op_type in _NO_ARITHMETIC:
        return 0
    if not outputs or any(shape is None for shape in outputs):
        return None
    out = _elements(outputs[0])
    if node.op_type in _MATMUL_LIKE or node.op_type == "Gemm":
        first = info.get(node.input[0], (0, None))[1]
        if not first:
            return None
        transposed = node.op_type == "Gemm" and any(a.name == "transA" and a.i for a in node.attribute)
        inner = first[0] if transposed else first[-1]
        return 2 * out * inner
    if node.op_type in ("Conv", "ConvInteger", "QLinearConv"):
        weight = info.get(node.input[1 if node.op_type != "QLinearConv" else 3], (0, None))[1]
        if not weight:
            return None
        return 2 * out * int(np.prod(weight[1:], dtype=np.int64))
    return sum(_elements(shape) for shape in outputs)


# --- precision and placement -----------------------------------------------------------------------------------

def _precision(node: onnx.NodeProto, producers: dict[str, onnx.NodeProto], info: dict) -> str:
    if node.op_type in _QDQ:
        return "int8"
    floating = [name for name in node.input if name and info.get(name, (onnx.TensorProto.FLOAT, None))[0]
                in _FLOAT_TYPES]
    if floating and all(name in producers and producers[name].op_type == "DequantizeLinear" for name in floating):
        return "int8"
    return "float32"


def _predicted_place(op_type: str, precision: str, profile: Profile) -> tuple[str, str]:
    if profile.accelerator is None:
        return ON_CPU, "CPU target: the profile has no accelerator"
    table = profile.operators
    if op_type in table.get(precision, ()):
        return ACCELERATOR, f"{precision} in the target's table"
    other = "float32" if precision == "int8" else "int8"
    if op_type in table.get(other, ()):
        if precision == "float32":
            return ON_CPU, "float32: not quantized (no QDQ around it)"
        return ON_CPU, "int8: the target's table lists it for float32 only"
    return ON_CPU, "not in the target's table"


# --- the report ------------------------------------------------------------------------------------------------

def _report(model: onnx.ModelProto, profile: Profile, places: dict[str, tuple[str, str, str | None]],
            dims: dict[str, int] | None) -> dict[str, Any]:
    """The common part of both reports over ``model`` (the basic-optimized graph); ``places``: node name ->
    (placement, reason, provider)."""
    graph = model.graph
    chosen = _assumed_dims(model, profile, dims)
    info = _with_shapes(model, chosen)
    producers = {name: node for node in graph.node for name in node.output if name}
    placement = {node.name: places[node.name][0] for node in graph.node}
    op_types: dict[str, dict[str, Any]] = {}
    flops = {ACCELERATOR: 0, ON_CPU: 0}
    unknown_flops: Counter[str] = Counter()
    nodes = []
    for node in graph.node:
        where, reason, provider = places[node.name]
        precision = _precision(node, producers, info)
        entry = op_types.setdefault(node.op_type, {"count": 0, ACCELERATOR: 0, ON_CPU: 0,
                                                   "precision": Counter(), "reasons": Counter(), "flops": 0})
        entry["count"] += 1
        entry[where] += 1
        entry["precision"][precision] += 1
        entry["reasons"][reason] += 1
        count = _node_flops(node, info)
        if count is None:
            unknown_flops[node.op_type] += 1
        else:
            entry["flops"] += count
            flops[where] += count
        nodes.append({"name": node.name, "op_type": node.op_type, "precision": precision, "placement": where,
                      "reason": reason, "provider": provider})
    for entry in op_types.values():
        entry["precision"] = dict(entry["precision"])
        entry["reasons"] = dict(entry["reasons"])

    # Boundaries: a tensor made on one side and read on the other is copied once per direction it crosses.
    crossings = []
    readers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in dict.fromkeys(node.input):
            if name in producers:
                readers[name].append(node)
    for name, consumers in readers.items():
        producer = producers[name]
        other = [node for node in consumers if placement[node.name] != placement[producer.name]]
        if not other:
            continue
        elem_type, shape = info.get(name, (0, None))
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).itemsize if elem_type else None
        size = _elements(shape)
        crossings.append({
            "tensor": name, "from": placement[producer.name], "to": placement[other[0].name],
            "producer": producer.op_type, "consumers": sorted({node.op_type for node in other}),
            "dtype": onnx.TensorProto.DataType.Name(elem_type).lower() if elem_type else None,
            "shape": shape, "bytes": None if size is None or itemsize is None else size * itemsize})

    # Partitions: accelerator nodes connected through tensors they pass each other.
    parent = {node.name: node.name for node in graph.node if placement[node.name] == ACCELERATOR}

    def root(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    for name, consumers in readers.items():
        producer = producers[name]
        if producer.name in parent:
            for node in consumers:
                if node.name in parent:
                    parent[root(node.name)] = root(producer.name)
    total_nodes = len(graph.node)
    on_accelerator = sum(1 for where in placement.values() if where == ACCELERATOR)
    total_flops = flops[ACCELERATOR] + flops[ON_CPU]
    known_bytes = [item["bytes"] for item in crossings if item["bytes"] is not None]
    return {
        "profile": profile.name,
        "accelerator": profile.accelerator,
        "graph_as": "ONNX Runtime's basic-level optimized graph (what a provider's partitioner is offered)",
        "nodes": {"total": total_nodes, ACCELERATOR: on_accelerator, ON_CPU: total_nodes - on_accelerator,
                  "share": round(on_accelerator / total_nodes, 4) if total_nodes else 0.0},
        "flops": {"total": total_flops, ACCELERATOR: flops[ACCELERATOR], ON_CPU: flops[ON_CPU],
                  "share": round(flops[ACCELERATOR] / total_flops, 4) if total_flops else 0.0,
                  "how": _FLOPS_HOW, "dims": chosen, "unknown_nodes": dict(unknown_flops)},
        "partitions": len({root(name) for name in parent}),
        "partitions_how": "connected groups of accelerator nodes (ONNX Runtime may split a group further where a "
                          "path leaves it through the CPU and comes back)",
        "boundaries": {"count": len(crossings), "bytes": sum(known_bytes),
                       "listed": min(len(crossings), BOUNDARY_LIST_CAP), "tensors": crossings[:BOUNDARY_LIST_CAP]},
        "op_types": dict(sorted(op_types.items(), key=lambda item: (-item[1]["count"], item[0]))),
        "node_placements": nodes,
    }


def predict_coverage(model: onnx.ModelProto | str | os.PathLike, profile: Profile,
                     dims: dict[str, int] | None = None) -> dict[str, Any]:
    """Where ``profile``'s operator table says each node of ``model`` would run (provenance ``predicted``: the
    provider is not run). ``dims``: values of symbolic input dimensions for the FLOPs estimate."""
    proto, where = _load(model)
    with tempfile.TemporaryDirectory(prefix="edge-sdk-coverage-") as folder:
        _, optimized = _optimized(proto, folder)
    producers = {name: node for node in optimized.graph.node for name in node.output if name}
    info = _with_shapes(optimized, _assumed_dims(optimized, profile, dims))
    places = {}
    for node in optimized.graph.node:
        where_, reason = _predicted_place(node.op_type, _precision(node, producers, info), profile)
        places[node.name] = (where_, reason, None)
    accelerator = profile.accelerator
    note = (f"predicted from the profile's operator table; {accelerator} was not run, so no offload is measured "
            "(edge-sdk coverage --measure runs it)" if accelerator else
            "predicted: the profile has no accelerator, every node runs on the CPU provider")
    import onnxruntime

    # Which ops the basic level fuses depends on the version (1.32 fuses LayerNormalization, 1.19 does not).
    return {"provenance": PREDICTED, "graph": where, "provider_run": False, "note": note,
            "method": "the profile's [operators] table over the basic-optimized graph",
            "onnxruntime": onnxruntime.__version__} | _report(
        optimized, profile, places, dims)


# --- measurement -----------------------------------------------------------------------------------------------

def _placements_recorded(session) -> dict[str, str]:
    return {node.name: subgraph.ep_name for subgraph in session.get_provider_graph_assignment_info()
            for node in subgraph.get_nodes()}


_ALL_ON = re.compile(r"All nodes placed on \[(\w+)\]\. Number of nodes: (\d+)")
_SOME_ON = re.compile(r"Node\(s\) placed on \[(\w+)\]\. Number of nodes: (\d+)")
_NODE_LINE = re.compile(r"^\s+(\S+) \((.*)\)\s*$")


def parse_node_placements(log: str, all_names: list[str]) -> dict[str, str]:
    """Node name -> provider from ONNX Runtime's verbose "Node placements" log (``all_names``: the graph's nodes,
    for the "All nodes placed on [X]" form)."""
    placements: dict[str, str] = {}
    provider = None
    for line in log.splitlines():
        found = _ALL_ON.search(line)
        if found:
            return dict.fromkeys(all_names, found.group(1))
        found = _SOME_ON.search(line)
        if found:
            provider = found.group(1)
            continue
        node = _NODE_LINE.match(line)
        if provider and node and "[" not in line:
            placements[node.group(2)] = provider
        elif provider and line.strip() and not node:
            provider = None if "placed on" not in line else provider
    return placements


def _placements_from_log(onnxruntime, path: str, options, arguments: dict, names: list[str]) -> dict[str, str]:
    """Run the session creation with verbose logging, capturing file descriptor 2 (where ONNX Runtime logs)."""
    options.log_severity_level = 0
    options.log_verbosity_level = 1
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            onnxruntime.InferenceSession(path, options, **arguments)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        log = capture.read().decode("utf-8", "replace")
    if "Node placements" not in log:
        raise ConfigError(f"onnxruntime {onnxruntime.__version__} printed no node placements in its verbose log "
                          "and cannot record them (1.24+ can): coverage cannot be measured here")
    return parse_node_placements(log, names)


def measure_coverage(model_path: str | os.PathLike, profile: Profile, bundle_root: str | os.PathLike | None = None,
                     strict: bool = False, dims: dict[str, int] | None = None,
                     threads: int | None = None) -> dict[str, Any]:
    """Where ONNX Runtime itself places each node of ``model_path`` with ``profile``'s providers (provenance
    ``measured``): the same report as :func:`predict_coverage` plus how it was measured. A provider this
    onnxruntime lacks falls back to the CPU as in a real session (the report lists it under ``missing``);
    ``strict`` makes that an error."""
    import onnxruntime

    from edge_sdk.profiles.providers import session_providers

    proto, where = _load(model_path)
    providers = session_providers(profile, bundle_root, where if where != "<in-memory model>" else None, strict)
    with tempfile.TemporaryDirectory(prefix="edge-sdk-coverage-") as folder:
        named, optimized = _optimized(proto, folder)
        names = [node.name for node in optimized.graph.node]
        options = _basic_options(onnxruntime, threads)
        arguments = providers.apply(options)
        recorded = hasattr(onnxruntime.InferenceSession, "get_provider_graph_assignment_info")
        if recorded:
            options.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
            session = onnxruntime.InferenceSession(named, options, **arguments)
            assigned = _placements_recorded(session)
            active = session.get_providers()
            method = (f"ONNX Runtime's node assignment (session.record_ep_graph_assignment_info=1, "
                      f"onnxruntime {onnxruntime.__version__})")
        else:
            assigned = _placements_from_log(onnxruntime, named, options, arguments, names)
            active = list(providers.names)
            method = (f"ONNX Runtime's verbose \"Node placements\" log (onnxruntime {onnxruntime.__version__} cannot "
                      "record the assignment: 1.24+ can)")
    accelerator = profile.accelerator
    places = {}
    unmatched = []
    for name in names:
        provider = assigned.get(name)
        if provider is None:
            unmatched.append(name)
            places[name] = (ON_CPU, "not in ONNX Runtime's assignment (optimized differently)", None)
        elif provider != CPU and (accelerator is None or provider == accelerator):
            places[name] = (ACCELERATOR, f"assigned to {provider}", provider)
        else:
            places[name] = (ON_CPU, f"assigned to {provider}", provider)
    if accelerator is None:
        note = "measured: the profile has no accelerator"
    elif providers.missing:
        note = (f"measured: {', '.join(providers.missing)} is not available here, so ONNX Runtime ran everything "
                "on the providers that are")
    else:
        note = f"measured: {accelerator} was loaded and ONNX Runtime assigned the nodes below"
    report = {"provenance": MEASURED, "graph": where, "provider_run": not providers.missing, "note": note,
              "method": method, "providers": active, "missing": providers.missing,
              "unmatched_nodes": unmatched[:BOUNDARY_LIST_CAP],
              "assigned_elsewhere": len(set(assigned) - set(names))}
    return report | _report(optimized, profile, places, dims)


# --- comparison and text ---------------------------------------------------------------------------------------

def compare_coverage(predicted: dict[str, Any], measured: dict[str, Any]) -> dict[str, Any]:
    """Op types whose placement differs between two reports (counts on each side), and the nodes that differ."""
    differences = []
    for op_type in sorted(set(predicted["op_types"]) | set(measured["op_types"])):
        left = predicted["op_types"].get(op_type, {"count": 0, ACCELERATOR: 0, ON_CPU: 0})
        right = measured["op_types"].get(op_type, {"count": 0, ACCELERATOR: 0, ON_CPU: 0})
        if (left[ACCELERATOR], left[ON_CPU]) != (right[ACCELERATOR], right[ON_CPU]):
            differences.append({"op_type": op_type, "count": max(left["count"], right["count"]),
                                predicted["provenance"]: {ACCELERATOR: left[ACCELERATOR], ON_CPU: left[ON_CPU]},
                                measured["provenance"]: {ACCELERATOR: right[ACCELERATOR], ON_CPU: right[ON_CPU]},
                                "reasons": {predicted["provenance"]: left.get("reasons", {}),
                                            measured["provenance"]: right.get("reasons", {})}})
    theirs = {node["name"]: node["placement"] for node in measured.get("node_placements", [])}
    nodes = [{"name": node["name"], "op_type": node["op_type"], predicted["provenance"]: node["placement"],
              measured["provenance"]: theirs[node["name"]]}
             for node in predicted.get("node_placements", [])
             if node["name"] in theirs and theirs[node["name"]] != node["placement"]]
    return {"agree": not differences and not nodes, "op_types": differences,
            "nodes_differing": len(nodes), "nodes": nodes[:BOUNDARY_LIST_CAP],
            "nodes_share": {predicted["provenance"]: predicted["nodes"]["share"],
                            measured["provenance"]: measured["nodes"]["share"]},
            "flops_share": {predicted["provenance"]: predicted["flops"]["share"],
                            measured["provenance"]: measured["flops"]["share"]},
            "boundaries": {predicted["provenance"]: predicted["boundaries"]["count"],
                           measured["provenance"]: measured["boundaries"]["count"]}}


def _flops_text(value: int) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if value >= scale:
            return f"{value / scale:.2f} {suffix}FLOP"
    return f"{value} FLOP"


def format_coverage(report: dict[str, Any]) -> str:
    """A few terminal lines: provenance, shares of nodes and FLOPs on the accelerator, boundaries, op types."""
    accelerator = report["accelerator"] or "the accelerator (none: CPU profile)"
    nodes, flops, boundaries = report["nodes"], report["flops"], report["boundaries"]
    dims = ", ".join(f"{key}={value}" for key, value in flops["dims"].items()) or "static"
    lines = [
        f"{report['provenance'].upper()} coverage of {report['graph']} for profile {report['profile']}",
        f"  {report['note']}; {report['method']}",
        f"  nodes on {accelerator}: {nodes[ACCELERATOR]}/{nodes['total']} ({nodes['share']:.1%})",
        f"  FLOPs on it: {flops['share']:.1%} of {_flops_text(flops['total'])} ({dims}; "
        f"{sum(flops['unknown_nodes'].values())} node(s) of unknown shape)",
        f"  partitions: {report['partitions']}; boundaries: {boundaries['count']} tensor(s) cross between it and "
        f"the CPU ({boundaries['bytes'] / 1e6:.2f} MB per run)",
        f"  {'op type':<24}{'count':>7}{'accel':>7}{'cpu':>7}  why",
    ]
    for op_type, entry in report["op_types"].items():
        why = "; ".join(f"{reason} ({count})" if len(entry["reasons"]) > 1 else reason
                        for reason, count in entry["reasons"].items())
        lines.append(f"  {op_type:<24}{entry['count']:>7}{entry[ACCELERATOR]:>7}{entry[ON_CPU]:>7}  {why}")
    return "\n".join(lines)
