"""Adapters leave and enter bundles: a device-trained adapter exported as a PEFT folder loads with
PeftModel.from_pretrained and predicts what the device predicts; the merged ONNX graph does too; a PEFT
folder imports back; several adapters serve from one session without reloading the base."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from edge_sdk.device import DeviceBundle, TrainingSettings
from edge_sdk.device.peft_format import export_peft, read_peft
from edge_sdk.errors import AdapterError
from edge_sdk.host.merge import export_merged_onnx

TEXTS = ["goal in the cup match", "the bank shares and profit rose", "phone software for users"]
CASES = {  # task -> (fixture bundle, base model folder, transformers class, training data)
    "seq-cls": ("tiny-seq-cls", "tiny-model", AutoModelForSequenceClassification, "train.jsonl"),
    "causal-lm": ("tiny-causal-lm", "tiny-chat-model", AutoModelForCausalLM, "chat-train.jsonl"),
}


def _trained(fixtures_dir: Path, tmp_path: Path, task: str) -> DeviceBundle:
    bundle_name, _, _, data = CASES[task]
    bundle = DeviceBundle.open(shutil.copytree(fixtures_dir / bundle_name, tmp_path / bundle_name))
    bundle.personalize(fixtures_dir / "data" / data, adapter="user",
                       settings=TrainingSettings(epochs=1, learning_rate=2e-2, batch_size=16))
    return bundle


def _device_logits(bundle: DeviceBundle, adapter: str) -> list[np.ndarray]:
    data = bundle.task.from_texts(TEXTS)
    feeds_weights = bundle.adapters.load(adapter)
    session = bundle._inference_session()
    results = []
    for ids, types in data.encoded:  # one text at a time: no padding differences between frameworks
        feeds = bundle.tokenizer.pad([(ids, types)]) | feeds_weights
        results.append(session.run(["logits"], feeds)[0][0])
    return results


@pytest.mark.parametrize("task", sorted(CASES))
def test_device_adapter_loads_in_peft_and_predicts_the_same(task: str, fixtures_dir: Path, tmp_path: Path) -> None:
    bundle = _trained(fixtures_dir, tmp_path, task)
    folder = export_peft(bundle.manifest, bundle.adapters.load("user"), tmp_path / "peft")
    _, model_dir, auto_model, _ = CASES[task]
    kwargs = {"num_labels": len(bundle.labels)} if task == "seq-cls" else {}
    base = auto_model.from_pretrained(fixtures_dir / model_dir, attn_implementation="eager", **kwargs)
    model = PeftModel.from_pretrained(base, folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(fixtures_dir / model_dir)
    device = _device_logits(bundle, "user")
    for text, expected in zip(TEXTS, device, strict=True):
        ids = bundle.tokenizer.pad(bundle.task.from_texts([text]).encoded)
        with torch.no_grad():
            logits = model(**{k: torch.from_numpy(v) for k, v in ids.items() if k in tokenizer.model_input_names
                              or k == "position_ids"}).logits[0].numpy()
        np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=1e-3)
    # And back in: the imported weights are the exported ones.
    imported = read_peft(folder, bundle.manifest)
    for name, value in bundle.adapters.load("user").items():
        np.testing.assert_array_equal(imported[name], value)


@pytest.mark.parametrize("method", ["lora", "dora", "qlora"])
def test_merged_onnx_needs_no_adapter_and_predicts_the_same(method: str, fixtures_dir: Path, tmp_path: Path) -> None:
    if method == "lora":
        bundle = _trained(fixtures_dir, tmp_path, "seq-cls")
    else:
        from edge_sdk.host.build import build_bundle
        from edge_sdk.host.config import BuildConfig

        config = BuildConfig(model_dir=fixtures_dir / "tiny-model", task="seq-cls",
                             labels=("business", "sport", "tech"), max_length=32).with_overrides(method=method)
        bundle = DeviceBundle.open(build_bundle(config, tmp_path / method))
        bundle.personalize(fixtures_dir / "data" / "train.jsonl", adapter="user",
                           settings=TrainingSettings(epochs=1, learning_rate=2e-2, batch_size=16))
    path = export_merged_onnx(bundle.bundle, bundle.adapters.load("user"), tmp_path / "merged" / "model.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert not [i.name for i in session.get_inputs() if "lora" in i.name or "modules_to_save" in i.name]
    merged = onnx.load(str(path), load_external_data=False)
    assert not [n for n in merged.graph.node if any("lora" in name for name in n.input)]
    assert not [n for n in merged.graph.node if n.op_type == "DequantizeLinear"]
    for text, expected in zip(TEXTS, _device_logits(bundle, "user"), strict=True):
        feeds = bundle.tokenizer.pad(bundle.task.from_texts([text]).encoded)
        np.testing.assert_allclose(session.run(["logits"], feeds)[0][0], expected, atol=1e-4, rtol=1e-3)
    with pytest.raises(AdapterError, match="already exists"):
        export_merged_onnx(bundle.bundle, bundle.adapters.load("user"), path)


def test_a_peft_folder_with_other_settings_is_refused(fixtures_dir: Path, tmp_path: Path) -> None:
    import json

    bundle = _trained(fixtures_dir, tmp_path, "seq-cls")
    folder = export_peft(bundle.manifest, bundle.adapters.load("user"), tmp_path / "peft")
    config = json.loads((folder / "adapter_config.json").read_text())
    config["r"] = 16
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterError, match="r 16 vs the bundle's 8"):
        read_peft(folder, bundle.manifest)


def test_two_adapters_serve_from_one_session(fixtures_dir: Path, tmp_path: Path) -> None:
    """Each adapter keeps its own predictions; switching feeds other tensors to the same session."""
    bundle = _trained(fixtures_dir, tmp_path, "seq-cls")
    session = bundle._inference_session()
    before = [p.probabilities for p in bundle.infer(TEXTS, adapter="initial")]
    user = [p.probabilities for p in bundle.infer(TEXTS, adapter="user")]
    assert before != user
    assert [p.probabilities for p in bundle.infer(TEXTS, adapter="initial")] == before
    assert [p.probabilities for p in bundle.infer(TEXTS, adapter="user")] == user
    assert bundle._inference_session() is session  # no reload of the base


def test_a_build_can_start_from_a_peft_adapter(fixtures_dir: Path, tmp_path: Path) -> None:
    from edge_sdk.host.adapter_import import lora_overrides
    from edge_sdk.host.build import build_bundle
    from edge_sdk.host.config import BuildConfig

    trained = _trained(fixtures_dir, tmp_path, "seq-cls")
    folder = export_peft(trained.manifest, trained.adapters.load("user"), tmp_path / "peft")
    config = BuildConfig(model_dir=fixtures_dir / "tiny-model", task="seq-cls", labels=tuple(trained.labels),
                         max_length=32).with_overrides(adapter_from=folder, **lora_overrides(folder))
    rebuilt = DeviceBundle.open(build_bundle(config, tmp_path / "rebuilt"))
    for ours, theirs in zip(_device_logits(rebuilt, "initial"), _device_logits(trained, "user"), strict=True):
        np.testing.assert_allclose(ours, theirs, atol=1e-5)
    with pytest.raises(AdapterError, match="not a PEFT adapter folder"):
        lora_overrides(tmp_path)
