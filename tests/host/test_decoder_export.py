"""Decoder-with-cache export: agreement with PyTorch (prefill and decode, left padding), greedy generation
equal to transformers' generate, names and bytes shared with the training graph, stock onnxruntime."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

from edge_sdk.device.generation import CausalGenerator, GenerationSettings
from edge_sdk.errors import ExportError
from edge_sdk.host.decoder_export import DecoderGraph, check_decoder_against_torch, export_decoder_with_cache
from edge_sdk.host.export import export_training_graph, position_ids_from_mask
from edge_sdk.host.graph_set import GraphSet

ROOT = Path(__file__).resolve().parents[2]
STOCK_PYTHON = ROOT / ".venv-stock" / "bin" / "python"
VOCAB = 100
OPSET = 14
_COMMON = {"vocab_size": VOCAB, "initializer_range": 0.2, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
_DECODER = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "intermediate_size": 64, "max_position_embeddings": 128}
CONFIGS = {
    "llama": lambda: LlamaConfig(**_DECODER, **_COMMON),
    "qwen2": lambda: Qwen2Config(**_DECODER, **_COMMON),
    "mistral": lambda: MistralConfig(**_DECODER, **_COMMON),
    # A window shorter than the sequences below, so windowed attention is really exercised.
    "mistral-window": lambda: MistralConfig(**_DECODER, **_COMMON, sliding_window=4),
    "gpt2": lambda: GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=128, **_COMMON),
}
TARGETS = {"gpt2": ["c_attn"]}


def tiny_causal_lm(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    config = CONFIGS[kind]()
    for key, value in config.to_dict().items():  # no dropout, as the SDK loads models
        if ("dropout" in key or key.endswith("_pdrop")) and isinstance(value, float):
            setattr(config, key, 0.0)
    base = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGETS.get(kind, ["q_proj", "v_proj"]),
                      fan_in_fan_out=kind == "gpt2")
    return get_peft_model(base, lora).eval()


def trainable_names(peft_model) -> list[str]:
    return [name for name, p in peft_model.named_parameters() if p.requires_grad]


def perturbed_weights(peft_model, seed: int = 0) -> dict[str, np.ndarray]:
    """LoRA weights away from their initial values (B starts at zero, which would hide a wrong wiring)."""
    rng = np.random.default_rng(seed)
    return {name: (p.detach().numpy() + rng.normal(0, 0.3, p.shape)).astype(np.float32)
            for name, p in peft_model.named_parameters() if p.requires_grad}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    """kind -> (peft model, decoder graph), built once per module."""
    cache = {}

    def get(kind: str):
        if kind not in cache:
            model = tiny_causal_lm(kind)
            path = tmp_path_factory.mktemp(kind) / "decoder.onnx"
            cache[kind] = model, export_decoder_with_cache(model, path, OPSET, trainable_names(model))
        return cache[kind]

    return get


def _left_padded_batch(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, VOCAB, (3, 7))
    mask = np.ones_like(ids)
    mask[1, :3] = 0
    mask[2, :6] = 0  # one real token
    return ids, mask


@pytest.mark.parametrize("kind", ["llama", "qwen2", "mistral", "mistral-window", "gpt2"])
def test_prefill_and_decode_match_pytorch_with_left_padding(exported, kind: str) -> None:
    model, graph = exported(kind)
    ids, mask = _left_padded_batch()
    difference = check_decoder_against_torch(model, graph, ids, mask, perturbed_weights(model), decode_steps=4)
    assert difference < 1e-4
    config = model.get_base_model().config
    assert graph.num_layers == config.num_hidden_layers
    assert graph.num_kv_heads == getattr(config, "num_key_value_heads", config.num_attention_heads)
    assert graph.head_dim == config.hidden_size // config.num_attention_heads


def test_graph_interface_and_manifest(exported) -> None:
    model, graph = exported("llama")
    assert not model.training  # the export put the model back in the mode it found it in
    session = ort.InferenceSession(str(graph.path), providers=["CPUExecutionProvider"])
    inputs = {node.name: node.shape for node in session.get_inputs()}
    outputs = {node.name: node.shape for node in session.get_outputs()}
    assert list(inputs)[:7] == ["input_ids", "attention_mask", "position_ids", *graph.past_names]
    assert list(inputs)[7:] == trainable_names(model)
    assert inputs["past.1.value"] == ["batch", 2, "past", 8]
    assert outputs == {"logits": ["batch", VOCAB], **{name: ["batch", 2, "total", 8] for name in graph.present_names}}
    manifest = json.loads(json.dumps(graph.to_manifest("decoder.onnx")))
    assert manifest["file"] == "decoder.onnx" and manifest["past_names"][:2] == ["past.0.key", "past.0.value"]
    assert manifest["weight_inputs"] == trainable_names(model)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_prefill_computes_lm_head_for_the_last_position_only(exported, kind: str) -> None:
    _, graph = exported(kind)
    model_proto = onnx.load(str(graph.path))
    producer = {output: node for node in model_proto.graph.node for output in node.output}
    node = producer["logits"]
    while node.op_type != "MatMul":
        node = producer[node.input[0]]
    assert producer[node.input[0]].op_type == "Slice"  # hidden states are cut before the vocabulary projection


def _generator(graph: DecoderGraph, eos: set[int]) -> CausalGenerator:
    session = ort.InferenceSession(str(graph.path), providers=["CPUExecutionProvider"])
    return CausalGenerator(session, graph.to_manifest(graph.path.name), eos, lambda ids: " ".join(map(str, ids)))


def _torch_greedy(model, weights: dict[str, np.ndarray], prompt: np.ndarray, new_tokens: int) -> list[int]:
    saved = {name: p.detach().clone() for name, p in model.named_parameters() if name in weights}
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            parameters[name].copy_(torch.from_numpy(value))
        ids = torch.from_numpy(prompt)[None]
        # eos_token_id=None: run the full length, like the generator given no end-of-sequence ids.
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=new_tokens, eos_token_id=None)
        for name, value in saved.items():
            parameters[name].copy_(value)
    return out[0, prompt.size:].tolist()


@pytest.mark.parametrize("kind", ["llama", "gpt2", "mistral-window"])
def test_greedy_generation_equals_transformers_generate(exported, kind: str) -> None:
    model, graph = exported(kind)
    weights = perturbed_weights(model, seed=1)
    prompt = np.random.default_rng(1).integers(3, VOCAB, 6)
    expected = _torch_greedy(model, weights, prompt, 16)
    result = _generator(graph, eos=set()).generate(prompt, weights, GenerationSettings(max_new_tokens=16))
    assert result.token_ids == expected
    assert result.stop_reason == "length" and result.text == " ".join(map(str, expected))


def test_generation_stops_at_eos_like_transformers(exported) -> None:
    model, graph = exported("llama")
    weights = perturbed_weights(model, seed=1)
    prompt = np.random.default_rng(1).integers(3, VOCAB, 6)
    expected = _torch_greedy(model, weights, prompt, 16)
    eos = expected[5]
    result = _generator(graph, eos={eos}).generate(prompt, weights, GenerationSettings(max_new_tokens=16))
    assert result.stop_reason == "eos" and result.token_ids == expected[:expected.index(eos)]


def test_decoder_and_training_graph_share_names_and_bytes(tmp_path: Path) -> None:
    for kind in ("llama", "gpt2"):  # gpt2: tied input/output embeddings
        model = tiny_causal_lm(kind)
        folder = tmp_path / kind
        folder.mkdir()
        ids, mask = _left_padded_batch()
        batch = {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids_from_mask(mask)}
        training = export_training_graph(model, batch, ["logits"], folder / "train.onnx", OPSET)
        decoder = export_decoder_with_cache(model, folder / "decoder.onnx", OPSET, trainable_names(model))
        train_proto, decoder_proto = training.model, onnx.load(str(decoder.path))
        train_init = {init.name: numpy_helper.to_array(init) for init in train_proto.graph.initializer}
        decoder_init = {init.name: numpy_helper.to_array(init) for init in decoder_proto.graph.initializer}
        assert set(decoder_init) == set(train_init) - set(trainable_names(model))  # every base weight is shared
        for name, value in decoder_init.items():
            assert value.dtype == train_init[name].dtype and value.tobytes() == train_init[name].tobytes(), name
        graphs = GraphSet()  # as a bundle stores them: the decoder reads the shared weights file
        graphs.add(training.path.name, train_proto)
        graphs.add(decoder.path.name, decoder_proto)
        graphs.write(folder, "weights.bin")
        ids, mask = _left_padded_batch(seed=2)
        assert check_decoder_against_torch(model, decoder, ids, mask, perturbed_weights(model), 1) < 1e-4


def test_check_catches_a_graph_of_another_model(exported) -> None:
    _, graph = exported("llama")
    other = tiny_causal_lm("llama", seed=1)
    ids, mask = _left_padded_batch()
    with pytest.raises(ExportError, match="prefill"):
        check_decoder_against_torch(other, graph, ids, mask, perturbed_weights(other))


def test_generation_on_stock_onnxruntime_without_torch(exported, tmp_path: Path) -> None:
    if not STOCK_PYTHON.exists():
        pytest.skip("the stock-onnxruntime environment .venv-stock is missing; run `make setup`")
    model, graph = exported("llama")
    weights = perturbed_weights(model, seed=1)
    prompt = np.random.default_rng(1).integers(3, VOCAB, 6)
    np.savez(tmp_path / "weights.npz", **weights)
    (tmp_path / "spec.json").write_text(json.dumps(graph.to_manifest(str(graph.path))))
    script = textwrap.dedent(f"""
        import json, sys, numpy as np, onnxruntime as ort
        from edge_sdk.device.generation import CausalGenerator, GenerationSettings
        assert "torch" not in sys.modules
        spec = json.load(open({str(tmp_path / "spec.json")!r}))
        session = ort.InferenceSession(spec["file"], providers=["CPUExecutionProvider"])
        weights = dict(np.load({str(tmp_path / "weights.npz")!r}))
        generator = CausalGenerator(session, spec, set(), lambda ids: "")
        result = generator.generate(np.array({prompt.tolist()}), weights, GenerationSettings(max_new_tokens=10))
        print(json.dumps(result.token_ids))
    """)
    completed = subprocess.run([str(STOCK_PYTHON), "-c", script], capture_output=True, text=True, check=True)
    assert json.loads(completed.stdout.strip().splitlines()[-1]) == _torch_greedy(model, weights, prompt, 10)
