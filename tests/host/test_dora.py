"""DoRA (`--method dora`, PEFT `use_dora=True`) end to end on tiny models of four architectures.

The build checks the exported graphs against PEFT's own forward pass and the portable step against ONNX
Runtime training; these tests add what the build does not check: the gradients of the training graph equal
PyTorch's (PEFT treats the weight norm as a constant in the backward pass, and so must the graph), one AdamW
step on either device backend equals PyTorch's, and a personalization run gives the same losses on both.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from click.testing import CliRunner
from make_fixtures import LABELS, write_topic_data
from safetensors.numpy import load_file
from tiny_models import make_tiny_model

from edge_sdk.bundle.store import open_bundle
from edge_sdk.cli.main import cli
from edge_sdk.device import DeviceBundle, TrainingSettings
from edge_sdk.device.backends import training_build_installed
from edge_sdk.device.backends.ort_training import OrtTrainingBackend
from edge_sdk.device.backends.portable import PortableBackend
from edge_sdk.errors import ConfigError
from edge_sdk.graph.attributes import attribute
from edge_sdk.host.build import build_bundle
from edge_sdk.host.config import ADAPTERS, LEGACY_METHODS, BuildConfig, LoraSettings, load_recipe
from edge_sdk.host.export import peft_forward, sample_batch, weights_loaded
from edge_sdk.host.model_loading import LoadedModel, load_for_task

KINDS = ["bert", "roberta", "distilbert", "llama"]
MAGNITUDE = "lora_magnitude_vector"
TEXTS = ["market shares and profit rose", "the team win the cup", "new phone app for users", "a tax vote"]
LEARNING_RATE = 1e-2

needs_training_build = pytest.mark.skipif(not training_build_installed(),
                                          reason="the ort-training backend needs onnxruntime-training")


def _config(model: Path) -> BuildConfig:
    return BuildConfig(model_dir=model, task="seq-cls", labels=LABELS, max_length=32, lora=LoraSettings(adapter="dora"))


@pytest.fixture(scope="module")
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, LoadedModel]:
    """A DoRA bundle of the tiny model ``request.param`` and the PEFT model it was built from."""
    root = tmp_path_factory.mktemp(f"dora-{request.param}")
    config = _config(make_tiny_model(root / "model", request.param))
    bundle = build_bundle(config, root / "bundle")
    return bundle, load_for_task(config)


@pytest.fixture(scope="module")
def topic_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_topic_data(tmp_path_factory.mktemp("dora-data") / "train.jsonl", 48, seed=1)


def _perturbed(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    # A non-zero B makes the weight norm depend on both LoRA matrices, so a norm that wrongly passed gradient
    # would change every LoRA gradient (and a zero B would leave A without one).
    rng = np.random.default_rng(3)
    return {name: (value + rng.normal(0.0, 0.1, value.shape)).astype(np.float32) for name, value in weights.items()}


def _feeds(bundle: Path, loaded: LoadedModel) -> dict[str, np.ndarray]:
    manifest = open_bundle(bundle).manifest
    batch = sample_batch(loaded.tokenizer, [spec.name for spec in manifest.inputs], 32, TEXTS)
    return batch | {"labels": np.asarray([0, 1, 2, 0], dtype=np.int64)}


def _torch_step(loaded: LoadedModel, weights: dict[str, np.ndarray], feeds: dict[str, np.ndarray],
                adam_epsilon: float) -> tuple[float, dict[str, np.ndarray], dict[str, np.ndarray], float]:
    """PEFT's loss, gradients and weights after one AdamW step from ``weights``, and the loss after it."""
    model = loaded.model
    parameters = {name: p for name, p in model.named_parameters() if p.requires_grad}
    inputs = {name: torch.from_numpy(value) for name, value in feeds.items() if name != "labels"}
    labels = torch.from_numpy(feeds["labels"])
    with weights_loaded(model, weights):
        model.train()  # dropout is 0; PEFT's DoRA path is the same in both modes
        model.zero_grad()
        loss = torch.nn.functional.cross_entropy(peft_forward(model, inputs).logits, labels)
        loss.backward()
        gradients = {name: p.grad.numpy().copy() for name, p in parameters.items()}
        # ONNX Runtime's AdamW ("Hugging Face" mode) adds epsilon to sqrt(v) before the bias correction;
        # at step 1 that is torch's AdamW with epsilon / sqrt(1 - beta2).
        optimizer = torch.optim.AdamW(parameters.values(), lr=LEARNING_RATE, betas=(0.9, 0.999),
                                      eps=adam_epsilon / np.sqrt(1 - 0.999), weight_decay=0.0)
        optimizer.step()
        stepped = {name: p.detach().numpy().copy() for name, p in parameters.items()}
        with torch.no_grad():
            next_loss = float(torch.nn.functional.cross_entropy(peft_forward(model, inputs).logits, labels))
        model.zero_grad()
        model.eval()
    return float(loss.detach()), gradients, stepped, next_loss


def _adam_epsilon(bundle: Path) -> float:
    optimizer = onnx.load(str(bundle / open_bundle(bundle).manifest.training["ort-training"]["optimizer_model"]))
    node = next(n for n in optimizer.graph.node if n.op_type == "AdamWOptimizer")
    return attribute(node, "epsilon")


def _graph_gradients(bundle: Path, weights: dict[str, np.ndarray], feeds: dict[str, np.ndarray]
                     ) -> tuple[float, dict[str, np.ndarray]]:
    """Loss and gradients of the bundle's training graph: from zero moments, one step writes m = 0.1 * g."""
    manifest = open_bundle(bundle).manifest
    spec = manifest.training["portable"]
    names = spec["names"]
    session = onnxruntime.InferenceSession(str(bundle / spec["model"]), providers=["CPUExecutionProvider"])
    inputs = dict(feeds) | dict(weights) | {names["step"]: np.asarray(0, np.int64),
                                            names["learning_rate"]: np.asarray(LEARNING_RATE, np.float32)}
    for name, value in weights.items():
        for moment in ("first_moment", "second_moment"):
            inputs[names[moment][name]] = np.zeros_like(value)
    outputs = [names["loss"]] + [names["updated"][names["first_moment"][name]] for name in weights]
    loss, *moments = session.run(outputs, inputs)
    return float(loss), {name: m / 0.1 for name, m in zip(weights, moments, strict=True)}


def test_dora_is_an_adapter_and_unknown_ones_are_refused(tmp_path: Path) -> None:
    assert "dora" in ADAPTERS and "dora" in LEGACY_METHODS
    with pytest.raises(ConfigError, match="unknown adapter 'ia3'.*lora"):
        LoraSettings(adapter="ia3").validate()
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(f'model = "{make_tiny_model(tmp_path / "m", "bert").as_posix()}"\ntask = "seq-cls"\n'
                      'labels = ["a", "b"]\n[peft]\nmethod = "dora"\nrank = 4\n', encoding="utf-8")
    config = load_recipe(recipe)
    assert (config.lora.adapter, config.lora.rank, config.base) == ("dora", 4, None)  # None: the profile decides
    assert config.for_profile()[0].base == "float32"
    assert config.with_overrides(method="lora").lora.adapter == "lora"
    assert config.with_overrides(adapter="lora").lora.adapter == "lora"
    assert config.with_overrides(method=None).lora.adapter == "dora"


@pytest.mark.parametrize("built", KINDS, indirect=True)
def test_build_trains_the_magnitudes_and_infers_with_them(built: tuple[Path, LoadedModel]) -> None:
    bundle, loaded = built
    manifest = open_bundle(bundle).manifest
    assert manifest.adapter == manifest.peft["adapter"] == "dora"
    trainable = [spec.name for spec in manifest.trainable]
    magnitudes = [name for name in trainable if MAGNITUDE in name]
    # One magnitude per adapted layer (2 layers x 2 targets), with the LoRA pair beside it.
    assert len(magnitudes) == 4
    for name in magnitudes:
        layer = name.split(f".{MAGNITUDE}.")[0]
        assert {f"{layer}.lora_A.default.weight", f"{layer}.lora_B.default.weight"} <= set(trainable)
        assert dict(loaded.model.named_parameters())[name].requires_grad
    # Magnitudes start as the weight rows' norms (PEFT's init), so the untrained adapter is the base model.
    initial = load_file(str(bundle / manifest.inference["initial_adapter"]))
    base = dict(loaded.model.named_parameters())
    for name in magnitudes:
        weight = base[name.split(f".{MAGNITUDE}.")[0] + ".base_layer.weight"]
        np.testing.assert_allclose(initial[name], np.linalg.norm(weight.detach().numpy(), axis=1), rtol=1e-5)
    inference = onnx.load(str(bundle / manifest.inference["model"]), load_external_data=False)
    assert [value.name for value in inference.graph.input][-len(trainable):] == trainable
    assert all(diff < 1e-4 for diff in manifest.build["validation_max_abs_diff"].values())
    assert manifest.build["portable_max_relative_loss_difference"] < 1e-4
    # The stop-gradient is plain ONNX: the portable step holds no contrib operator.
    step = onnx.load(str(bundle / manifest.training["portable"]["model"]), load_external_data=False)
    assert {node.domain for node in step.graph.node} <= {"", "ai.onnx"}
    assert [o.version for o in step.opset_import] == [14]


@pytest.mark.parametrize("built", KINDS, indirect=True)
def test_training_graph_gradients_and_one_step_equal_pytorch(built: tuple[Path, LoadedModel]) -> None:
    bundle, loaded = built
    manifest = open_bundle(bundle).manifest
    weights = _perturbed(load_file(str(bundle / manifest.inference["initial_adapter"])))
    feeds = _feeds(bundle, loaded)
    loss, gradients, stepped, next_loss = _torch_step(loaded, weights, feeds, _adam_epsilon(bundle))

    graph_loss, graph_gradients = _graph_gradients(bundle, weights, feeds)
    assert graph_loss == pytest.approx(loss, rel=1e-5)
    assert any(MAGNITUDE in name for name in gradients)
    for name, expected in gradients.items():
        assert np.abs(expected).max() > 0, name  # every trainable tensor, A included, gets a gradient
        np.testing.assert_allclose(graph_gradients[name], expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max(),
                                   err_msg=name)

    backends = [PortableBackend] + ([OrtTrainingBackend] if training_build_installed() else [])
    for backend_class in backends:
        backend = backend_class(open_bundle(bundle))
        try:
            backend.load_weights(weights)
            assert backend.train_step(feeds, LEARNING_RATE) == pytest.approx(loss, rel=1e-5)
            after = backend.weights()
            # AdamW moves each weight by about lr; where a gradient is as small as epsilon, float rounding in
            # it shows in the step, so the step is judged against lr, not the weight.
            for name, expected in stepped.items():
                np.testing.assert_allclose(after[name], expected, rtol=1e-5, atol=1e-2 * LEARNING_RATE,
                                           err_msg=f"{backend.name}: {name}")
            assert backend.train_step(feeds, LEARNING_RATE) == pytest.approx(next_loss, rel=1e-4)
        finally:
            backend.close()


@needs_training_build
@pytest.mark.parametrize("built", KINDS, indirect=True)
def test_both_backends_personalize_alike_and_move_the_magnitudes(built: tuple[Path, LoadedModel],
                                                                 topic_data: Path) -> None:
    bundle, _ = built
    device = DeviceBundle.open(bundle)
    settings = TrainingSettings(epochs=2, learning_rate=LEARNING_RATE, batch_size=8, seed=7)
    portable = device.personalize(topic_data, adapter="p", settings=settings, backend="portable")
    ort = device.personalize(topic_data, adapter="o", settings=settings, backend="ort-training")
    assert len(portable.losses) == 12
    np.testing.assert_allclose(portable.losses, ort.losses, rtol=1e-4)
    assert np.mean(portable.losses[-3:]) < np.mean(portable.losses[:3])
    initial, p, o = (device.adapters.load(name) for name in ("initial", "p", "o"))
    for name in initial:
        np.testing.assert_allclose(p[name], o[name], rtol=1e-3, atol=1e-5, err_msg=name)
        if MAGNITUDE in name:
            assert not np.allclose(p[name], initial[name]), f"{name} did not train"


def test_cli_build_method_dora_and_unknown_method(tmp_path: Path) -> None:
    model = make_tiny_model(tmp_path / "model", "bert")
    out = tmp_path / "bundle"
    result = CliRunner().invoke(cli, ["build", str(model), "--task", "seq-cls", "--labels", "a,b", "--method", "dora",
                                      "--rank", "4", "--out", str(out), "--json"])
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    assert json.loads(result.stdout)["bundle"] == str(out.resolve())
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["peft"]["adapter"], manifest["peft"]["rank"]) == ("dora", 4)
    assert any(MAGNITUDE in spec["name"] for spec in manifest["trainable"])

    result = CliRunner().invoke(cli, ["build", str(model), "--task", "seq-cls", "--labels", "a,b", "--method", "vera",
                                      "--out", str(tmp_path / "no")])
    assert result.exit_code == 2 and "'vera' is not one of" in result.stderr
    assert not (tmp_path / "no").exists()


def test_causal_lm_generation_graphs_carry_the_magnitudes(tmp_path: Path) -> None:
    """Llama DoRA for causal-lm: the build checks the KV-cache generation graphs against PEFT too."""
    model = make_tiny_model(tmp_path / "model", "llama", chat=True)
    config = BuildConfig(model_dir=model, task="causal-lm", labels=(), max_length=32,
                         lora=LoraSettings(adapter="dora"))
    manifest = open_bundle(build_bundle(config, tmp_path / "bundle")).manifest
    assert any(MAGNITUDE in spec.name for spec in manifest.trainable)
    assert manifest.build["portable_max_relative_loss_difference"] < 1e-4


def test_the_stop_gradient_round_trip_is_exact(tmp_path: Path) -> None:
    """The exported norm is the norm bit for bit over the range edge_sdk/host/dora.py promises."""
    from edge_sdk.host.dora import _DetachedNorm

    class Stop(torch.nn.Module):
        def forward(self, norm: torch.Tensor) -> torch.Tensor:
            return _DetachedNorm.apply(norm)

    path = tmp_path / "stop.onnx"
    torch.onnx.export(Stop(), (torch.ones(3),), str(path), input_names=["norm"], output_names=["out"],
                      dynamic_axes={"norm": {0: "n"}}, opset_version=14, dynamo=False)
    model = onnx.load(str(path))
    assert [node.op_type for node in model.graph.node if node.op_type != "Constant"] == ["Mul", "Cast", "Cast", "Mul"]
    rng = np.random.default_rng(0)
    exponents = rng.integers(-17, 23, 20_000)
    values = np.ldexp(rng.uniform(1.0, 2.0, exponents.size), exponents).astype(np.float32)
    largest_mantissa = np.nextafter(np.float32(2.0), np.float32(0.0))
    values = np.concatenate([values, np.ldexp(np.float32(1.0), np.arange(-17, 23)).astype(np.float32),
                             np.ldexp(largest_mantissa, np.arange(-17, 23)).astype(np.float32)])
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(session.run(None, {"norm": values})[0], values)
