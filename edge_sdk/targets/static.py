"""The float target graph: an inference graph (adapter merged in) fixed to the profile's static input shapes
and converted to its opset, every value's shape known.

Accelerators that compile a graph ahead of its first run (Vitis AI) take only fixed shapes: batch 1 by
max length for a BERT-type model. A generating task cannot be made static: its key/value cache grows
by one position per generated token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edge_sdk.errors import ConfigError
from edge_sdk.tasks.registry import task_spec

if TYPE_CHECKING:
    import onnx

    from edge_sdk.profiles import Profile

# What the training build of ONNX Runtime 1.19 still reads (it refuses IR versions above 10).
IR_VERSION = 10


def check_static_task(task: str, profile: Profile) -> None:
    """Refuse (ConfigError) a task whose graphs cannot have static shapes when ``profile`` needs a target graph;
    the build's config check and ``adapters deploy`` both call this before any work."""
    if not profile.has_target_graph:
        return
    if task_spec(task).generates:
        raise ConfigError(f"profile {profile.name!r} runs static-shaped int8 graphs, and a {task} model cannot have "
                          "static shapes (its key/value cache grows with every generated token); build it for the "
                          "cpu or cpu-int8 profile")


def static_length(profile: Profile, max_length: int) -> tuple[int, int]:
    """(batch, sequence) of the target graph's inputs."""
    shapes = profile.static_shapes
    batch = shapes.batch if shapes else 1
    sequence = shapes.sequence if shapes and shapes.sequence else max_length
    if profile.max_sequence_length and sequence > profile.max_sequence_length:
        raise ConfigError(f"profile {profile.name!r} runs sequences of at most {profile.max_sequence_length} tokens; "
                          f"this bundle's static sequence length is {sequence}: build it with a smaller max_length")
    return batch, sequence


def static_model(model: onnx.ModelProto, batch: int, sequence: int, opset: int | None) -> onnx.ModelProto:
    """``model`` (a float inference graph without adapter inputs) with inputs [batch, sequence], converted to
    ``opset`` (None: keep its own) and shape-inferred; raises ConfigError if a value's shape stays unknown."""
    import onnx
    from onnx import shape_inference, version_converter

    current = next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))
    if opset is not None and opset != current:
        if opset < current:
            raise ConfigError(f"the target opset {opset} is older than the exported graph's {current}")
        try:
            model = version_converter.convert_version(model, opset)
        except Exception as exc:  # onnx raises its own C++ errors: say which conversion failed
            raise ConfigError(f"the graph cannot be converted from opset {current} to {opset}: {exc}") from exc
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if len(dims) != 2:
            raise ConfigError(f"graph input {value.name!r} has {len(dims)} dimensions; static shapes are for "
                              "[batch, sequence] token inputs")
        for dim, size in zip(dims, (batch, sequence), strict=True):
            dim.Clear()
            dim.dim_value = size
    # Shapes computed at run time (Shape -> Gather -> Concat -> Reshape) become constants once the inputs are
    # fixed: ONNX Runtime's basic level folds them (standard ONNX ops only, so the graph stays portable).
    model = _fold_constants(model)
    del model.graph.value_info[:]
    for value in model.graph.output:
        value.type.tensor_type.ClearField("shape")
    model = shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    unknown = [value.name for value in [*model.graph.value_info, *model.graph.output]
               if value.type.HasField("tensor_type") and not _static(value)]
    if unknown:
        raise ConfigError(f"{len(unknown)} values of the target graph have no static shape (e.g. {unknown[:3]})")
    for index, node in enumerate(model.graph.node):  # quantization excludes nodes by name
        if not node.name:
            node.name = f"{node.op_type}_{index}"
    model.ir_version = min(model.ir_version, IR_VERSION)
    onnx.checker.check_model(model, full_check=True)
    return model


def _static(value) -> bool:
    shape = value.type.tensor_type.shape
    return value.type.tensor_type.HasField("shape") and all(dim.HasField("dim_value") for dim in shape.dim)


def _fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    import tempfile
    from pathlib import Path

    import onnx
    import onnxruntime

    with tempfile.TemporaryDirectory(prefix="edge-sdk-static.") as folder:
        source, folded = Path(folder) / "in.onnx", Path(folder) / "folded.onnx"
        saved = onnx.ModelProto()
        saved.CopyFrom(model)  # saving with external data rewrites the tensors it moves out
        saved.ir_version = min(saved.ir_version, IR_VERSION)
        onnx.save(saved, str(source), save_as_external_data=True, location="in.data", size_threshold=1024)
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(folded)
        options.log_severity_level = 3
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name", "folded.data")
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        onnxruntime.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
        result = onnx.load(str(folded))  # the external weights are read into memory before the folder goes
    # The optimizer writes its own opset list; keep only the domains the graph uses.
    used = {node.domain for node in result.graph.node}
    kept = [entry for entry in result.opset_import if entry.domain in used or entry.domain in ("", "ai.onnx")]
    del result.opset_import[:]
    result.opset_import.extend(kept)
    return result
