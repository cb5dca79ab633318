"""The portable training step is plain ONNX: checker, reference evaluator, shared base weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx.reference import ReferenceEvaluator

from edge_sdk.bundle import open_bundle
from edge_sdk.device import DeviceBundle


def _step_feeds(bundle_path: Path, data: Path) -> dict[str, np.ndarray]:
    device = DeviceBundle.open(bundle_path)
    manifest = device.manifest
    names = manifest.training["portable"]["names"]
    rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()[:4]]
    feeds = device.tokenizer([row["text"] for row in rows])
    feeds["labels"] = np.asarray([device.labels.index(r["label"]) for r in rows], np.int64)
    rng = np.random.default_rng(0)
    for name, value in device.adapters.load("initial").items():
        feeds[name] = value
        feeds[names["first_moment"][name]] = rng.normal(0, 1e-3, value.shape).astype(np.float32)
        feeds[names["second_moment"][name]] = rng.uniform(0, 1e-5, value.shape).astype(np.float32)
    feeds[names["step"]] = np.asarray(3, np.int64)
    feeds[names["learning_rate"]] = np.asarray(1e-2, np.float32)
    return feeds


def test_train_step_is_standard_onnx_and_passes_the_checker(fixtures_dir: Path) -> None:
    path = fixtures_dir / "tiny-seq-cls" / "portable" / "train_step.onnx"
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert {(op.domain, op.version) for op in model.opset_import} == {("", 14)}
    assert {node.domain for node in model.graph.node} <= {""}


def test_reference_evaluator_computes_the_same_step_as_onnxruntime(fixtures_dir: Path, tiny_data: Path) -> None:
    bundle = fixtures_dir / "tiny-seq-cls"
    path = bundle / "portable" / "train_step.onnx"
    feeds = _step_feeds(bundle, tiny_data)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    expected = dict(zip(names, session.run(None, feeds), strict=True))
    reference = ReferenceEvaluator(onnx.load(str(path)))
    actual = dict(zip(names, reference.run(None, feeds), strict=True))
    assert len(names) == 1 + 3 * len(open_bundle(bundle).manifest.trainable) + 1
    for name in names:
        np.testing.assert_allclose(actual[name], expected[name], rtol=1e-4, atol=1e-6, err_msg=name)
    assert int(actual["optimizer.step.updated"]) == 4


def test_base_weights_are_stored_once(fixtures_dir: Path) -> None:
    bundle = open_bundle(fixtures_dir / "tiny-seq-cls")
    sizes = {entry.path: entry.size for entry in bundle.manifest.files}
    inference = onnx.load(str(bundle.path("portable/inference.onnx")), load_external_data=False)
    step = onnx.load(str(bundle.path("portable/train_step.onnx")), load_external_data=False)

    def external(model: onnx.ModelProto) -> dict[str, tuple[str, str]]:
        return {t.name: (t.external_data[1].value, t.external_data[2].value)
                for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}

    shared, in_step = external(inference), external(step)
    common = shared.keys() & in_step.keys()
    assert "base_model.model.bert.embeddings.word_embeddings.weight" in common
    assert all(shared[name] == in_step[name] for name in common)  # same bytes at the same offset
    # No tensor is stored twice: the file holds each distinct (offset, length) once, plus alignment.
    extents = {(int(offset), int(length)) for offset, length in [*shared.values(), *in_step.values()]}
    assert len(extents) == len(shared.keys() | in_step.keys())
    payload = sum(length for _, length in extents)
    assert payload <= sizes["portable/base.weights"] < payload + 64 * len(extents)
    # Every large tensor of either graph lives in the shared file, none inline.
    for model in (inference, step):
        inline = [t.name for t in model.graph.initializer
                  if t.data_location != onnx.TensorProto.EXTERNAL and len(t.raw_data) >= 1024]
        assert inline == []


@pytest.mark.parametrize("kind", ["roberta", "distilbert", "llama"])
def test_portable_step_builds_for_other_architectures(kind: str, tmp_path: Path) -> None:
    """Build-time validation runs the portable step against ort-training for each architecture."""
    from tiny_models import make_tiny_model

    from edge_sdk.host.build import build_bundle
    from edge_sdk.host.config import BuildConfig

    config = BuildConfig(model_dir=make_tiny_model(tmp_path / "m", kind), task="seq-cls", labels=("a", "b"),
                         max_length=32)
    manifest = open_bundle(build_bundle(config, tmp_path / "b")).manifest
    assert manifest.training["backends"] == ["ort-training", "portable"]
    assert manifest.build["portable_max_relative_loss_difference"] < 1e-4


def test_the_weight_check_takes_adam_noise_in_a_few_values_and_refuses_real_disagreement() -> None:
    from edge_sdk.errors import ExportError
    from edge_sdk.host.portable.validate import ADAM_BOUND, check_trained_weights

    rng = np.random.default_rng(0)
    reference = {"lora_A": rng.normal(0, 0.05, (8, 576)).astype(np.float32)}
    noisy = reference["lora_A"].copy()
    noisy.flat[rng.choice(noisy.size, 4, replace=False)] += 0.015 * ADAM_BOUND   # as a trained SmolLM2 adapter showed
    check_trained_weights(reference, {"lora_A": noisy})
    far = reference["lora_A"].copy()
    far.flat[7] += 0.5 * ADAM_BOUND   # one value moved by half of what four Adam steps can move it
    with pytest.raises(ExportError, match="lora_A differs"):
        check_trained_weights(reference, {"lora_A": far})
    spread = reference["lora_A"] + 0.02 * ADAM_BOUND   # every value off by 2%: a wrong gradient
    with pytest.raises(ExportError, match="4608 of 4608"):
        check_trained_weights(reference, {"lora_A": spread})
