"""qlora: LoRA over an int8 base. The adapted layers' frozen weights are stored as int8 with a scale per output
channel and read through DequantizeLinear by every graph (both training backends, inference, generation); the
graphs agree with PEFT's forward over exactly those weights; the bundle is smaller; both backends, on the
training build and on stock onnxruntime, train alike."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from make_fixtures import LABELS, write_topic_data
from onnx import numpy_helper
from safetensors.numpy import save_file
from tiny_models import make_tiny_chat_llama, make_tiny_model
from tiny_seq2seq import make_tiny_seq2seq

from edge_sdk.bundle import open_bundle
from edge_sdk.device import DeviceBundle, TrainingSettings
from edge_sdk.errors import ExportError
from edge_sdk.graph.row_quantization import quantize_rows
from edge_sdk.host import quantize as quantize_module
from edge_sdk.host.build import build_bundle
from edge_sdk.host.config import BuildConfig
from edge_sdk.host.export import torch_reference, weights_loaded
from edge_sdk.host.model_loading import load_for_task
from edge_sdk.host.quantize import (
    QUANTIZED_SUFFIX,
    SCALE_SUFFIX,
    adapted_base_weights,
    quantize_adapted_base,
)

STOCK_PYTHON = Path(__file__).resolve().parents[2] / ".venv-stock" / "bin" / "python"
TEXTS = ["market shares and profit", "the team won the cup", "phone chip", "a b c d e f g the of to and in on for"]
GRAPHS = ("portable/inference.onnx", "portable/train_step.onnx", "training/ort/training_model.onnx",
          "training/ort/eval_model.onnx")
RUN = TrainingSettings(epochs=1, learning_rate=1e-2, batch_size=8, seed=7)


def _config(model_dir: Path, method: str, task: str = "seq-cls") -> BuildConfig:
    return BuildConfig(model_dir=model_dir, task=task, labels=LABELS if task == "seq-cls" else (),
                       max_length=32).with_overrides(method=method)


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("qlora") / "bert", "bert")


@pytest.fixture(scope="module")
def bundles(bert: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("qlora-bundles")
    return {method: build_bundle(_config(bert, method), root / method) for method in ("lora", "qlora")}


@pytest.fixture(scope="module")
def topic_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_topic_data(tmp_path_factory.mktemp("qlora-data") / "train.jsonl", 48, seed=1)


def _quantized_model(config: BuildConfig):
    """The PEFT model as a qlora build sees it (int8 base, dequantized), with its quantization record."""
    loaded = load_for_task(config)
    return loaded, quantize_adapted_base(loaded.model)


def _dequantize_outputs(model: onnx.ModelProto) -> set[str]:
    return {node.output[0] for node in model.graph.node if node.op_type == "DequantizeLinear"}


def _perturbed_adapter(bundle: Path, seed: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    initial = DeviceBundle.open(bundle).adapters.load("initial")
    return {name: (value + rng.normal(0, 0.1, value.shape)).astype(np.float32) for name, value in initial.items()}


# --- quantization itself --------------------------------------------------------------------------------------


def test_rows_are_quantized_symmetrically_per_output_channel() -> None:
    rng = np.random.default_rng(0)
    weight = rng.normal(0, 1, (6, 40)).astype(np.float32) * np.arange(1, 7, dtype=np.float32)[:, None]
    weight[2] = 0.0
    quantized = quantize_rows(weight)
    assert quantized.values.dtype == np.int8 and quantized.scale.dtype == np.float32
    assert quantized.scale.shape == (6,)
    peaks = np.abs(quantized.values).max(axis=1)
    assert list(peaks) == [127, 127, 0, 127, 127, 127]  # each row uses the full symmetric range
    assert quantized.scale[2] == 1.0 and not quantized.values[2].any()
    error = np.abs(quantized.dequantized() - weight)
    assert np.all(error <= quantized.scale[:, None] / 2 + 1e-7)


def test_the_adapted_layers_base_weights_are_quantized_and_nothing_else(bert: Path) -> None:
    loaded = load_for_task(_config(bert, "qlora"))
    names = adapted_base_weights(loaded.model)
    assert len(names) == 4
    assert all(name.endswith((".query.base_layer.weight", ".value.base_layer.weight")) for name in names)
    before = {name: p.detach().clone() for name, p in loaded.model.named_parameters()}
    quantized = quantize_adapted_base(loaded.model)
    after = dict(loaded.model.named_parameters())
    for name, value in before.items():
        if name in names:  # the model now holds the int8 weights, dequantized
            np.testing.assert_array_equal(after[name].detach().numpy(), quantized.weights[name].dequantized())
            np.testing.assert_array_equal(quantized.float_weights[name], value.numpy())
        else:  # LoRA matrices, the head and every other base weight stay as they were
            assert torch.equal(after[name], value), name


def test_the_rewrite_refuses_a_graph_that_holds_other_values(bert: Path) -> None:
    loaded, quantized = _quantized_model(_config(bert, "qlora"))
    name = next(iter(quantized.weights))
    tensor = numpy_helper.from_array(quantized.float_weights[name], name)  # the float original, not the int8 one
    model = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [], initializer=[tensor]))
    with pytest.raises(ExportError, match="not the dequantized int8 weight"):
        quantized.rewrite(model)


# --- the bundle ---------------------------------------------------------------------------------------------


def test_every_graph_dequantizes_the_adapted_base_weights(bundles: dict[str, Path]) -> None:
    manifest = open_bundle(bundles["qlora"]).manifest
    assert (manifest.adapter, manifest.base, manifest.compute_precision) == ("lora", "int8-storage", "fp32")
    quantization = manifest.build["quantization"]
    assert quantization["weights"] == 4
    adapted = {f"base_model.model.bert.encoder.layer.{layer}.attention.self.{kind}.base_layer.weight"
               for layer in (0, 1) for kind in ("query", "value")}
    for relative in GRAPHS:
        model = onnx.load(str(bundles["qlora"] / relative), load_external_data=False)
        assert _dequantize_outputs(model) == adapted, relative
        initializers = {init.name: init for init in model.graph.initializer}
        inputs = {value.name: value for value in model.graph.input}  # ORT's training graphs take params as inputs
        assert not adapted & set(initializers)
        for name in adapted:
            quantized = initializers.get(name + QUANTIZED_SUFFIX) or inputs[name + QUANTIZED_SUFFIX]
            data_type = quantized.data_type if hasattr(quantized, "data_type") else quantized.type.tensor_type.elem_type
            assert data_type == onnx.TensorProto.INT8, relative
        lora = onnx.load(str(bundles["lora"] / relative), load_external_data=False)
        assert not _dequantize_outputs(lora)


def test_the_shared_weights_file_and_the_ort_checkpoint_hold_int8(bert: Path, bundles: dict[str, Path]) -> None:
    from onnxruntime.capi import _pybind_state as capi

    _, quantized = _quantized_model(_config(bert, "qlora"))
    path = bundles["qlora"] / "portable/inference.onnx"
    locations = {init.name: {entry.key: entry.value for entry in init.external_data}
                 for init in onnx.load(str(path), load_external_data=False).graph.initializer}
    stored = {init.name: init for init in onnx.load(str(path)).graph.initializer}  # read from the weights file
    state = capi.load_checkpoint(str(bundles["qlora"] / "training/ort/checkpoint"))
    for name, expected in quantized.weights.items():
        tensor = stored[name + QUANTIZED_SUFFIX]
        assert locations[tensor.name]["location"] == "base.weights"
        assert int(locations[tensor.name]["length"]) == expected.values.size  # one byte per weight
        np.testing.assert_array_equal(numpy_helper.to_array(tensor), expected.values)
        np.testing.assert_array_equal(numpy_helper.to_array(stored[name + SCALE_SUFFIX]), expected.scale)
        in_checkpoint = state.get_parameter(name + QUANTIZED_SUFFIX).data.numpy()
        assert in_checkpoint.dtype == np.int8
        np.testing.assert_array_equal(in_checkpoint, expected.values)


def test_the_qlora_bundle_is_smaller(bundles: dict[str, Path]) -> None:
    sizes = {method: {entry.path: entry.size for entry in open_bundle(path).manifest.files}
             for method, path in bundles.items()}
    float_bytes = open_bundle(bundles["qlora"]).manifest.build["quantization"]["float_bytes"]
    # int8 is a quarter of float32: three quarters of the adapted weights leave each copy of the base.
    for copy in ("portable/base.weights", "training/ort/checkpoint"):
        assert sizes["lora"][copy] - sizes["qlora"][copy] >= 0.7 * 0.75 * float_bytes, copy
    assert sum(sizes["qlora"].values()) < sum(sizes["lora"].values())


def test_the_build_validated_exactly_and_reported_what_int8_costs(bundles: dict[str, Path]) -> None:
    build = open_bundle(bundles["qlora"]).manifest.build
    assert all(diff < 1e-4 for diff in build["validation_max_abs_diff"].values())
    assert build["portable_max_relative_loss_difference"] < 1e-4
    # Against the float model int8 moves the outputs by more than the export tolerance: the exact check
    # is possible only because the reference is PEFT over the int8 base.
    change = build["quantization"]["max_abs_output_change_vs_float"]["logits"]
    assert 1e-4 < change < 0.1


def test_inference_matches_peft_over_the_int8_base(bert: Path, bundles: dict[str, Path]) -> None:
    device = DeviceBundle.open(bundles["qlora"])
    weights = _perturbed_adapter(bundles["qlora"])
    data = device.task.from_texts(TEXTS, None)
    ours = np.stack(device.outputs(data, weights))
    loaded, quantized = _quantized_model(_config(bert, "qlora"))
    feeds = device.tokenizer.pad(data.encoded)
    with weights_loaded(loaded.model, weights):
        expected = torch_reference(loaded.model, feeds, ["logits"])["logits"]
        with weights_loaded(loaded.model, quantized.float_weights):
            float_base = torch_reference(loaded.model, feeds, ["logits"])["logits"]
    np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=1e-3)
    assert np.abs(ours - float_base).max() > 1e-4


def test_both_backends_personalize_alike(bundles: dict[str, Path], topic_data: Path, tmp_path: Path) -> None:
    device = DeviceBundle.open(shutil.copytree(bundles["qlora"], tmp_path / "bundle"))
    portable = device.personalize(topic_data, adapter="p", settings=RUN, backend="portable")
    ort = device.personalize(topic_data, adapter="o", settings=RUN, backend="ort-training")
    np.testing.assert_allclose(portable.losses, ort.losses, rtol=1e-4)
    assert np.mean(ort.losses[-2:]) < np.mean(ort.losses[:2])
    p, o = device.adapters.load("p"), device.adapters.load("o")
    for name in o:
        np.testing.assert_allclose(p[name], o[name], rtol=1e-3, atol=1e-5)


_STOCK_SCRIPT = """
import json, sys
import numpy as np
import onnxruntime
from safetensors.numpy import load_file
from edge_sdk.device import DeviceBundle, TrainingSettings
bundle, adapter, data, texts, settings = sys.argv[1:]
device = DeviceBundle.open(bundle)
outputs = device.outputs(device.task.from_texts(json.loads(texts), None), load_file(adapter))
result = device.personalize(data, adapter="s", settings=TrainingSettings(**json.loads(settings)), backend="portable")
print(json.dumps({"onnxruntime": onnxruntime.__version__, "logits": np.stack(outputs).tolist(),
                  "losses": result.losses}))
"""


@pytest.mark.skipif(not STOCK_PYTHON.is_file(), reason="no stock-onnxruntime environment .venv-stock (make setup)")
def test_stock_onnxruntime_runs_the_int8_bundle_like_the_training_build(bundles: dict[str, Path], topic_data: Path,
                                                                         tmp_path: Path) -> None:
    """Newer onnxruntime fuses DequantizeLinear + MatMul into MatMulNBits; the profile keeps it in float32."""
    weights = _perturbed_adapter(bundles["qlora"])
    save_file(weights, str(tmp_path / "adapter.safetensors"))
    settings = {"epochs": RUN.epochs, "learning_rate": RUN.learning_rate, "batch_size": RUN.batch_size,
                "seed": RUN.seed}
    stock_copy = shutil.copytree(bundles["qlora"], tmp_path / "stock")
    arguments = [stock_copy, tmp_path / "adapter.safetensors", topic_data, json.dumps(TEXTS), json.dumps(settings)]
    run = subprocess.run([str(STOCK_PYTHON), "-c", _STOCK_SCRIPT, *map(str, arguments)], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    stock = json.loads(run.stdout)
    device = DeviceBundle.open(shutil.copytree(bundles["qlora"], tmp_path / "here"))
    here = np.stack(device.outputs(device.task.from_texts(TEXTS, None), weights))
    reference = device.personalize(topic_data, adapter="o", settings=RUN, backend="ort-training")
    np.testing.assert_allclose(np.asarray(stock["logits"]), here, atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(stock["losses"], reference.losses, rtol=1e-4)


# --- generation graphs ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def generating(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("qlora-generation")
    llama = make_tiny_chat_llama(root / "llama")
    bart = make_tiny_seq2seq(root / "bart", "bart")
    return {"causal-lm": build_bundle(_config(llama, "qlora", "causal-lm"), root / "chat"),
            "seq2seq": build_bundle(_config(bart, "qlora", "seq2seq"), root / "translate")}


@pytest.mark.parametrize(("task", "graphs"), [("causal-lm", {"portable/decoder.onnx": 4}),
                                              ("seq2seq", {"portable/encoder.onnx": 6, "portable/decoder.onnx": 6})])
def test_generation_graphs_read_the_same_int8_base(generating: dict[str, Path], task: str,
                                                   graphs: dict[str, int]) -> None:
    """The build checks the generation graphs against PyTorch after the rewrite: what is checked is what ships."""
    bundle = open_bundle(generating[task])
    manifest = bundle.manifest
    assert manifest.inference["generation"]["validation_max_abs_diff"] is not None
    inference = onnx.load(str(bundle.path("portable/inference.onnx")), load_external_data=False)
    locations = {init.name: list(init.external_data) for init in inference.graph.initializer}
    for relative, count in graphs.items():
        model = onnx.load(str(bundle.path(relative)), load_external_data=False)
        dequantized = _dequantize_outputs(model)
        assert len(dequantized) == count and dequantized <= _dequantize_outputs(inference)
        for init in model.graph.initializer:  # one copy of each int8 weight, shared with the inference graph
            if init.name.endswith(QUANTIZED_SUFFIX) and init.data_location == onnx.TensorProto.EXTERNAL:
                assert list(init.external_data) == locations[init.name]
    reply = DeviceBundle.open(generating[task]).infer(["alice and bob win the cup"])
    assert reply and reply[0] is not None


def test_a_wrong_int8_base_in_a_generation_graph_fails_the_build(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    original = quantize_module.QuantizedBase.rewrite

    def skewed(self, model, require_all=False):
        added = original(self, model, require_all)
        if any(value.name.startswith("past.") for value in model.graph.input):  # only the decoder with cache
            for init in model.graph.initializer:
                if init.name.endswith(SCALE_SUFFIX):
                    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(1.5), init.name))
        return added

    monkeypatch.setattr(quantize_module.QuantizedBase, "rewrite", skewed)
    llama = make_tiny_chat_llama(tmp_path / "llama")
    with pytest.raises(ExportError, match="decoder graph"):
        build_bundle(_config(llama, "qlora", "causal-lm"), tmp_path / "chat")
    assert not (tmp_path / "chat").exists()


def test_cli_builds_with_method_qlora(bert: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from edge_sdk.cli.main import cli

    result = CliRunner().invoke(cli, ["build", str(bert), "--task", "seq-cls", "--labels", ",".join(LABELS),
                                      "--method", "qlora", "--max-length", "32", "--out", str(tmp_path / "b"),
                                      "--json"])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    peft = json.loads((tmp_path / "b" / "manifest.json").read_text())["peft"]
    assert (peft["adapter"], peft["base"]) == ("lora", "int8-storage")  # --method qlora is an alias of both
