"""ONNX Runtime's failures on the device come out as the SDK's errors naming the graph file (device/ort_errors.py).

Runs in both device environments (training build ORT 1.19 and stock ORT), whose exception sets differ.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edge_sdk.cli.main import cli
from edge_sdk.device.backends import create_backend, training_build_installed
from edge_sdk.device.runtime import DeviceBundle
from edge_sdk.errors import BundleError, DependencyError, GraphRunError


def manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def truncate(bundle: Path, relative: str, rehash: bool = False) -> Path:
    """Cut the file in half, as an interrupted copy does; ``rehash`` records the damaged file in the manifest
    (a bundle damaged before its hashes were taken), so only ONNX Runtime can notice."""
    path = bundle / relative
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    if rehash:
        document = manifest(bundle)
        for entry in document["files"]:
            if entry["path"] == relative:
                entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
                entry["size"] = path.stat().st_size
        (bundle / "manifest.json").write_text(json.dumps(document))
    return path


def test_truncated_inference_graph_is_a_bundle_error_naming_the_file(tiny_bundle: Path) -> None:
    model = manifest(tiny_bundle)["inference"]["model"]
    truncate(tiny_bundle, model)
    device_bundle = DeviceBundle.open(tiny_bundle, verify=False)  # the hash check would catch it first
    with pytest.raises(BundleError, match="rebuild the bundle") as caught:
        device_bundle.infer(["the match ended in a draw"])
    assert Path(model).name in str(caught.value) and "cannot load" in str(caught.value)


def test_truncated_portable_step_is_a_bundle_error_naming_the_file(tiny_bundle: Path) -> None:
    step = manifest(tiny_bundle)["training"]["portable"]["model"]
    truncate(tiny_bundle, step)
    with pytest.raises(BundleError, match=Path(step).name):
        create_backend("portable", DeviceBundle.open(tiny_bundle, verify=False).bundle)


@pytest.mark.skipif(not training_build_installed(), reason="needs the onnxruntime training build")
def test_truncated_training_artifact_is_a_bundle_error_naming_the_file(tiny_bundle: Path) -> None:
    optimizer = manifest(tiny_bundle)["training"]["ort-training"]["optimizer_model"]
    truncate(tiny_bundle, optimizer)
    with pytest.raises(BundleError, match=Path(optimizer).name):
        create_backend("ort-training", DeviceBundle.open(tiny_bundle, verify=False).bundle)


def test_wrong_shaped_feed_names_the_input_and_the_graph(tiny_bundle: Path) -> None:
    device_bundle = DeviceBundle.open(tiny_bundle)
    session = device_bundle._inference_session()
    feeds = {node.name: np.zeros([dim if isinstance(dim, int) else 2 for dim in node.shape],
                                 np.int64 if node.type == "tensor(int64)" else np.float32)
             for node in session.get_inputs()}
    graph = Path(manifest(tiny_bundle)["inference"]["model"]).name
    with pytest.raises(GraphRunError, match=r"input_ids: got int64\[2, 3, 4\].*expects int64\[batch, sequence\]") as a:
        session.run(None, feeds | {"input_ids": np.zeros((2, 3, 4), np.int64)})
    with pytest.raises(GraphRunError, match=r"attention_mask: got float32") as b:
        session.run(None, feeds | {"attention_mask": np.zeros((2, 2), np.float32)})
    assert graph in str(a.value) and graph in str(b.value)


def test_adapter_weight_of_the_wrong_shape_is_named(tiny_bundle: Path) -> None:
    device_bundle = DeviceBundle.open(tiny_bundle)
    weights = dict(device_bundle.adapters.load("initial"))
    name = next(iter(weights))
    weights[name] = np.zeros((weights[name].shape[0] + 1, *weights[name].shape[1:]), np.float32)
    data = device_bundle.task.from_texts(["a short text"], None)
    with pytest.raises(GraphRunError, match=name.replace(".", r"\.")):
        device_bundle.outputs(data, weights)


def test_missing_execution_provider_falls_back_to_the_cpu_and_strict_names_it(tiny_bundle: Path) -> None:
    import onnxruntime

    document = manifest(tiny_bundle)
    document["profile"]["providers"] = ["NoSuchExecutionProvider", "CPUExecutionProvider"]
    (tiny_bundle / "manifest.json").write_text(json.dumps(document))
    # manifest.json is not among the hashed files
    assert len(DeviceBundle.open(tiny_bundle, verify=False).infer(["a short text"])) == 1
    device_bundle = DeviceBundle.open(tiny_bundle, verify=False, strict=True)
    with pytest.raises(DependencyError, match="NoSuchExecutionProvider") as caught:
        device_bundle.infer(["a short text"])
    assert all(provider in str(caught.value) for provider in onnxruntime.get_available_providers())
    assert "--strict" in str(caught.value)


def test_cli_reports_a_corrupt_graph_in_one_line_and_exits_1(tiny_bundle: Path) -> None:
    model = manifest(tiny_bundle)["inference"]["model"]
    truncate(tiny_bundle, model, rehash=True)  # passes `infer`'s hash check: only ONNX Runtime can tell
    result = CliRunner().invoke(cli, ["infer", str(tiny_bundle), "--text", "a short text"])
    assert result.exit_code == 1, (result.stdout, result.stderr, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.stderr and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert Path(model).name in lines[0] and "rebuild the bundle" in lines[0]
