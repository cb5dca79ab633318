"""`edge-sdk build --freeze-lora-a` (FFA-LoRA): LoRA A stays at the bundle's recorded values on every device, the
adapter is B and the head, PEFT export re-adds A and import accepts only the bundle's own A."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from click.testing import CliRunner
from make_fixtures import LABELS, NER_TAGS, write_chat_data, write_ner_data, write_topic_data
from onnx import numpy_helper
from peft import PeftModel
from safetensors.numpy import load_file, save_file
from tiny_models import make_tiny_bert, make_tiny_chat_llama
from transformers import AutoModelForSequenceClassification

from edge_sdk.bundle.frozen_lora import frozen_lora_a, lora_a_digest
from edge_sdk.bundle.manifest import Manifest
from edge_sdk.cli.main import cli
from edge_sdk.device import DeviceBundle, TrainingSettings
from edge_sdk.device.peft_format import WEIGHTS_FILE, export_peft, read_peft
from edge_sdk.errors import AdapterError, BundleError, ConfigError
from edge_sdk.host.build import build_bundle
from edge_sdk.host.config import BuildConfig, LoraSettings, load_recipe
from edge_sdk.host.merge import export_merged_onnx

TEXTS = ["goal in the cup match", "the bank shares and profit rose", "phone software for users"]
TRAINING = TrainingSettings(epochs=1, learning_rate=2e-2, batch_size=16)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT, topic data and the FFA build of tiny-seq-cls (as tests/make_fixtures.py builds tiny-ffa)."""
    root = tmp_path_factory.mktemp("ffa")
    model = make_tiny_bert(root / "tiny-model", seed=0)
    write_topic_data(root / "data" / "train.jsonl", 96, seed=1)
    build_bundle(BuildConfig(model_dir=model, task="seq-cls", labels=LABELS, max_length=32,
                             lora=LoraSettings(freeze_lora_a=True)), root / "tiny-ffa")
    return root


def _copy(tiny: Path, tmp_path: Path) -> DeviceBundle:
    return DeviceBundle.open(shutil.copytree(tiny / "tiny-ffa", tmp_path / "bundle"))


def _graph_initializers(bundle: DeviceBundle, names: set[str]) -> dict[str, np.ndarray]:
    model = onnx.load(str(bundle.bundle.path(bundle.manifest.inference_spec.model)))
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer if init.name in names}


def _device_logits(bundle: DeviceBundle, adapter: str) -> list[np.ndarray]:
    session, weights = bundle._inference_session(), bundle.adapters.load(adapter)
    return [session.run(["logits"], bundle.tokenizer.pad([encoded]) | weights)[0][0]
            for encoded in bundle.task.from_texts(TEXTS).encoded]


def test_the_manifest_records_the_frozen_a_and_the_adapter_is_b_and_the_head(tiny: Path, tmp_path: Path) -> None:
    from edge_sdk.host.model_loading import load_for_task

    bundle = _copy(tiny, tmp_path)
    spec = bundle.manifest.peft_spec
    frozen = frozen_lora_a(bundle.bundle)
    assert spec.freeze_lora_a and spec.frozen_lora_a_file == "peft/frozen_lora_a.safetensors"
    assert spec.frozen_lora_a_sha256 == lora_a_digest(frozen)
    assert bundle.manifest.file(spec.frozen_lora_a_file).sha256  # listed and hashed like every file
    trainable = [t.name for t in bundle.manifest.trainable]
    assert not [name for name in trainable if ".lora_A." in name]
    assert any(".lora_B." in name for name in trainable) and any(".modules_to_save." in name for name in trainable)
    # Four adapted layers (query, value of two blocks), float32, the values the torch model started from.
    config = BuildConfig(model_dir=tiny / "tiny-model", task="seq-cls", labels=LABELS, max_length=32,
                         lora=LoraSettings(freeze_lora_a=True))
    model_a = {name: p.detach().numpy() for name, p in load_for_task(config).model.named_parameters()
               if ".lora_A." in name}
    assert sorted(frozen) == sorted(model_a) and len(frozen) == 4
    for name, value in frozen.items():
        assert value.dtype == np.float32
        np.testing.assert_array_equal(value, model_a[name])
    # The graph bakes A in as a frozen weight, with the recorded values.
    baked = _graph_initializers(bundle, set(frozen))
    assert sorted(baked) == sorted(frozen)
    for name, value in frozen.items():
        np.testing.assert_array_equal(baked[name], value)
    # Old bundles (no key) train A; the frozen file is {} for them.
    data = json.loads((tiny / "tiny-ffa" / "manifest.json").read_text())
    for key in ("freeze_lora_a", "frozen_lora_a"):
        data["peft"].pop(key)
    assert not Manifest.from_json(json.dumps(data)).peft_spec.freeze_lora_a


@pytest.mark.parametrize("change, message", [
    (lambda peft: peft.pop("frozen_lora_a"), "peft.frozen_lora_a is missing"),
    (lambda peft: peft.update(freeze_lora_a="yes"), "peft.freeze_lora_a must be a boolean"),
    (lambda peft: peft["frozen_lora_a"].update(sha256="abc"), "peft.frozen_lora_a.sha256 must be 64"),
    (lambda peft: peft["frozen_lora_a"].update(file="peft/other.safetensors"), "lists no file"),
    (lambda peft: peft.update(freeze_lora_a=False), "peft.frozen_lora_a is set but"),
])
def test_a_malformed_frozen_record_is_refused(tiny: Path, change, message: str) -> None:
    data = json.loads((tiny / "tiny-ffa" / "manifest.json").read_text())
    change(data["peft"])
    with pytest.raises(BundleError, match=message):
        _ = Manifest.from_json(json.dumps(data)).peft_spec


@pytest.mark.parametrize("backend", ["portable", "ort-training"])
def test_personalizing_trains_b_and_leaves_a_as_recorded(backend: str, tiny: Path, tmp_path: Path) -> None:
    bundle = _copy(tiny, tmp_path)
    frozen = frozen_lora_a(bundle.bundle)
    bundle.personalize(tiny / "data" / "train.jsonl", adapter="user", settings=TRAINING, backend=backend)
    initial, user = bundle.adapters.load("initial"), bundle.adapters.load("user")
    assert sorted(user) == sorted(initial) == sorted(t.name for t in bundle.manifest.trainable)
    changed_b = [name for name in user if ".lora_B." in name and not np.array_equal(user[name], initial[name])]
    assert len(changed_b) == 4
    for name, value in _graph_initializers(bundle, set(frozen)).items():
        np.testing.assert_array_equal(value, frozen[name])
    assert lora_a_digest(frozen_lora_a(bundle.bundle)) == bundle.manifest.peft_spec.frozen_lora_a_sha256
    # A damaged frozen file is refused by its digest too (the bundle check catches it by the file's sha256).
    path = bundle.bundle.path(bundle.manifest.peft_spec.frozen_lora_a_file)
    values = load_file(str(path))
    values[sorted(values)[0]] += 1
    save_file(values, str(path))
    with pytest.raises(BundleError, match="digest"):
        frozen_lora_a(bundle.bundle)
    assert _device_logits(bundle, "user")[0].tolist() != _device_logits(bundle, "initial")[0].tolist()


def test_peft_export_adds_a_loads_in_peft_and_predicts_the_same(tiny: Path, tmp_path: Path) -> None:
    bundle = _copy(tiny, tmp_path)
    bundle.personalize(tiny / "data" / "train.jsonl", adapter="user", settings=TRAINING, backend="portable")
    frozen = frozen_lora_a(bundle.bundle)
    with pytest.raises(AdapterError, match="--freeze-lora-a"):  # without A the folder would not be LoRA
        export_peft(bundle.manifest, bundle.adapters.load("user"), tmp_path / "no-a")
    folder = export_peft(bundle.manifest, bundle.adapters.load("user"), tmp_path / "peft", frozen=frozen)
    saved = load_file(str(folder / WEIGHTS_FILE))
    for name, value in frozen.items():
        np.testing.assert_array_equal(saved[name.replace(".default.", ".")], value)
    base = AutoModelForSequenceClassification.from_pretrained(tiny / "tiny-model", attn_implementation="eager",
                                                              num_labels=len(LABELS))
    model = PeftModel.from_pretrained(base, folder).eval()
    for text, expected in zip(TEXTS, _device_logits(bundle, "user"), strict=True):
        feeds = bundle.tokenizer.pad(bundle.task.from_texts([text]).encoded)
        with torch.no_grad():
            logits = model(**{k: torch.from_numpy(v) for k, v in feeds.items()
                              if k in ("input_ids", "attention_mask", "token_type_ids")}).logits[0].numpy()
        np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=1e-3)
    # And back in: A matches the bundle's and is dropped; the rest is the device's adapter.
    imported = read_peft(folder, bundle.manifest, frozen=frozen)
    assert sorted(imported) == sorted(bundle.adapters.load("user"))
    for name, value in bundle.adapters.load("user").items():
        np.testing.assert_array_equal(imported[name], value)


def test_importing_an_adapter_with_another_a_is_refused(tiny: Path, tmp_path: Path) -> None:
    bundle = _copy(tiny, tmp_path)
    frozen = frozen_lora_a(bundle.bundle)
    folder = export_peft(bundle.manifest, bundle.adapters.load("initial"), tmp_path / "peft", frozen=frozen)
    saved = load_file(str(folder / WEIGHTS_FILE))
    first = sorted(frozen)[0]
    key = first.replace(".default.", ".")
    saved[key] = saved[key] + np.float32(1e-3)
    save_file(saved, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    with pytest.raises(AdapterError, match=rf"tensor '{key}' .* differs .* built with --freeze-lora-a"):
        read_peft(folder, bundle.manifest, frozen=frozen)
    # Through the CLI: exit 1 with the message, nothing stored.
    result = CliRunner().invoke(cli, ["adapters", "import", str(bundle.bundle.root), str(folder), "--name", "x"])
    assert result.exit_code == 1 and "--freeze-lora-a" in result.stderr and "Traceback" not in result.stderr
    assert not bundle.adapters.exists("x")


def test_cli_exports_and_imports_with_a(tiny: Path, tmp_path: Path) -> None:
    bundle = _copy(tiny, tmp_path)
    root = str(bundle.bundle.root)
    info = CliRunner().invoke(cli, ["inspect", root])
    assert info.exit_code == 0 and "LoRA A frozen" in info.stdout, info.output
    exported = CliRunner().invoke(cli, ["adapters", "export", root, "initial", "--out", str(tmp_path / "peft")])
    assert exported.exit_code == 0, exported.output
    assert any(".lora_A." in key for key in load_file(str(tmp_path / "peft" / WEIGHTS_FILE)))
    imported = CliRunner().invoke(cli, ["adapters", "import", root, str(tmp_path / "peft"), "--name", "back"])
    assert imported.exit_code == 0, imported.output
    for name, value in bundle.adapters.load("initial").items():
        np.testing.assert_array_equal(bundle.adapters.load("back")[name], value)


def test_a_build_from_a_peft_adapter_freezes_that_adapters_a(tiny: Path, tmp_path: Path) -> None:
    from edge_sdk.host.adapter_import import lora_overrides

    trained = _copy(tiny, tmp_path)
    trained.personalize(tiny / "data" / "train.jsonl", adapter="user", settings=TRAINING, backend="portable")
    frozen = frozen_lora_a(trained.bundle)
    folder = export_peft(trained.manifest, trained.adapters.load("user"), tmp_path / "peft", frozen=frozen)
    config = BuildConfig(model_dir=tiny / "tiny-model", task="seq-cls", labels=LABELS, max_length=32, seed=5,
                         lora=LoraSettings(freeze_lora_a=True)).with_overrides(adapter_from=folder,
                                                                             **lora_overrides(folder))
    rebuilt = DeviceBundle.open(build_bundle(config, tmp_path / "rebuilt"))
    # Another seed, but A comes from the adapter: the fleet's A carries over, and so do B and the head.
    assert rebuilt.manifest.peft_spec.frozen_lora_a_sha256 == trained.manifest.peft_spec.frozen_lora_a_sha256
    for name, value in trained.adapters.load("user").items():
        np.testing.assert_array_equal(rebuilt.adapters.load("initial")[name], value)


def test_merged_onnx_of_an_ffa_bundle_predicts_the_same(tiny: Path, tmp_path: Path) -> None:
    bundle = _copy(tiny, tmp_path)
    bundle.personalize(tiny / "data" / "train.jsonl", adapter="user", settings=TRAINING, backend="portable")
    path = export_merged_onnx(bundle.bundle, bundle.adapters.load("user"), tmp_path / "merged" / "model.onnx")
    merged = onnx.load(str(path), load_external_data=False)
    assert not [n for n in merged.graph.node if any("lora" in name for name in n.input)]
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for text, expected in zip(TEXTS, _device_logits(bundle, "user"), strict=True):
        feeds = bundle.tokenizer.pad(bundle.task.from_texts([text]).encoded)
        np.testing.assert_allclose(session.run(["logits"], feeds)[0][0], expected, atol=1e-4, rtol=1e-3)


def test_token_cls_freezes_a_too(tiny: Path, tmp_path: Path) -> None:
    write_ner_data(tmp_path / "ner.jsonl", 48, seed=3)
    path = build_bundle(BuildConfig(model_dir=tiny / "tiny-model", task="token-cls", labels=NER_TAGS, max_length=32,
                                    lora=LoraSettings(freeze_lora_a=True)), tmp_path / "ner")
    bundle = DeviceBundle.open(path)
    assert not [t.name for t in bundle.manifest.trainable if ".lora_A." in t.name]
    frozen = frozen_lora_a(bundle.bundle)
    assert len(frozen) == 4
    bundle.personalize(tmp_path / "ner.jsonl", adapter="user", settings=TRAINING, backend="portable")
    assert sorted(bundle.adapters.load("user")) == sorted(t.name for t in bundle.manifest.trainable)


def test_causal_lm_freezes_a_in_the_generation_graphs_too(tmp_path: Path) -> None:
    model = make_tiny_chat_llama(tmp_path / "chat-model", seed=0)
    write_chat_data(tmp_path / "chat.jsonl", 48, seed=7)
    path = build_bundle(BuildConfig(model_dir=model, task="causal-lm", labels=(), max_length=32,
                                    lora=LoraSettings(freeze_lora_a=True)), tmp_path / "lm")
    bundle = DeviceBundle.open(path)
    assert not [t.name for t in bundle.manifest.trainable if ".lora_A." in t.name]
    assert len(frozen_lora_a(bundle.bundle)) == 4
    bundle.personalize(tmp_path / "chat.jsonl", adapter="user", settings=TRAINING, backend="portable")
    assert bundle.generate("hello", adapter="user", chat=False).text is not None


@pytest.mark.parametrize("base", ["int8-compute", "int8-storage"])
def test_an_int8_build_records_the_float_a(base: str, tiny: Path, tmp_path: Path) -> None:
    path = build_bundle(BuildConfig(model_dir=tiny / "tiny-model", task="seq-cls", labels=LABELS, max_length=32,
                                    base=base, lora=LoraSettings(freeze_lora_a=True)), tmp_path / "int8")
    bundle = DeviceBundle.open(path)
    float_a = frozen_lora_a(DeviceBundle.open(tiny / "tiny-ffa").bundle)
    int8_a = frozen_lora_a(bundle.bundle)
    assert lora_a_digest(int8_a) == lora_a_digest(float_a)
    bundle.personalize(tiny / "data" / "train.jsonl", adapter="user", settings=TRAINING, backend="portable")
    assert not [name for name in bundle.adapters.load("user") if ".lora_A." in name]


def test_dora_with_frozen_a_is_refused(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--freeze-lora-a .* --adapter dora: DoRA's update is not linear in LoRA B"):
        LoraSettings(adapter="dora", freeze_lora_a=True).validate()
    result = CliRunner().invoke(cli, ["build", str(tiny / "tiny-model"), "--task", "seq-cls", "--labels",
                                      ",".join(LABELS), "--adapter", "dora", "--freeze-lora-a",
                                      "--out", str(tmp_path / "b")])
    assert result.exit_code == 1 and "Traceback" not in result.stderr, result.output
    assert "--freeze-lora-a" in result.stderr and "not exact" in result.stderr
    assert not (tmp_path / "b").exists()


def test_the_recipe_key_and_the_flag(tiny: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(f'model = "{(tiny / "tiny-model").as_posix()}"\ntask = "seq-cls"\n'
                      'labels = ["business", "sport", "tech"]\n[peft]\nfreeze_lora_a = true\n', encoding="utf-8")
    config = load_recipe(recipe)
    assert config.lora.freeze_lora_a
    assert config.with_overrides(rank=4).lora.freeze_lora_a  # other flags keep the recipe's setting
    recipe.write_text(recipe.read_text().replace("true", '"yes"'), encoding="utf-8")
    with pytest.raises(ConfigError, match="freeze_lora_a must be true or false"):
        load_recipe(recipe).validate()
    dry = CliRunner().invoke(cli, ["build", str(tiny / "tiny-model"), "--task", "seq-cls", "--labels",
                                   ",".join(LABELS), "--freeze-lora-a", "--dry-run", "--json", "--out",
                                   str(tmp_path / "b")])
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.stdout)["config"]["lora"]["freeze_lora_a"] is True
