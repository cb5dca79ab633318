"""A quantized frozen base for host fine-tuning (QLoRA): bitsandbytes int8 / NF4 layers on CPU under PEFT LoRA.

On tiny seeded BERT (sequence classification) and Llama (causal LM) models: outputs stay close to float, the
Linear weights really shrink, PEFT wraps them with its bitsandbytes LoRA layers and the adapter trains while the
quantized weights stay bit for bit the same, and the adapter is a plain PEFT adapter that a float base takes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from make_fixtures import LABELS
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from tiny_models import make_tiny_model
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

from edge_sdk.errors import ConfigError, DependencyError
from edge_sdk.finetune import quantized_base
from edge_sdk.finetune.quantized_base import DEFAULT_SKIP, check_quantized_base_supported, quantize_frozen_base
from edge_sdk.host.config import BuildConfig
from edge_sdk.host.model_loading import load_for_task

MODES = ("int8", "4bit")
KINDS = ("bert", "llama")
# Logit error of the whole tiny model against float (seen: int8 5e-4 BERT / 1.2e-2 Llama, NF4 1e-2 / 0.18).
TOLERANCE = {"int8": 0.05, "4bit": 0.3}
# Weight bytes of the quantized layers, float32 / quantized: int8 ~3.9 (a float scale per row), NF4 ~7
# (an absmax per 64 weights, double-quantized, and two small lookup tables per layer).
MIN_SHRINK = {"int8": 3.5, "4bit": 6.0}


@pytest.fixture(scope="module")
def bnb():
    return pytest.importorskip("bitsandbytes")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny models gain nothing from threads, and on a busy 2-core machine two OpenMP threads made this file
    # take 30 s instead of 7.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "bert":
        config = BertConfig(vocab_size=128, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=256, num_labels=3, hidden_dropout_prob=0.0,
                            attention_probs_dropout_prob=0.0)
        return BertForSequenceClassification(config).eval()
    config = LlamaConfig(vocab_size=128, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    return LlamaForCausalLM(config).eval()


def _batch(kind: str) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 128, (8, 16), generator=generator)
    labels = torch.randint(0, 3, (8,), generator=generator) if kind == "bert" else ids
    return {"input_ids": ids, "labels": labels}


def _lora(kind: str, dora: bool = False) -> LoraConfig:
    if kind == "bert":
        return LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16, target_modules=["query", "value"], use_dora=dora)
    return LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], use_dora=dora)


def _frozen_state(bnb, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every quantized weight, its scales (int8) or absmax values and tables (NF4) and the biases, copied."""
    state = {}
    for name, module in model.named_modules():
        if isinstance(module, bnb.nn.Linear8bitLt):
            # The row scales sit on the weight until the first forward pass moves them to module.state.
            scales = module.state.SCB if module.state.SCB is not None else module.weight.SCB
            extra = [scales]
        elif isinstance(module, bnb.nn.Linear4bit):
            extra = quantized_base.quantization_tensors(module)
        else:
            continue
        state[f"{name}.weight"] = module.weight.detach().clone()
        for i, t in enumerate(extra):
            state[f"{name}.{i}"] = t.detach().clone()
        if module.bias is not None:
            state[f"{name}.bias"] = module.bias.detach().clone()
    return state


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", MODES)
def test_quantized_model_is_close_to_float_and_smaller(bnb, kind: str, mode: str) -> None:
    model = _model(kind)
    batch = {"input_ids": _batch(kind)["input_ids"]}
    with torch.no_grad():
        reference = model(**batch).logits
    report = quantize_frozen_base(model, mode, DEFAULT_SKIP)
    with torch.no_grad():
        error = (model(**batch).logits - reference).abs().max().item()
    print(f"{kind} {mode}: max |logit - float| = {error:.2e}; layer bytes {report.layer_bytes_before} -> "
          f"{report.layer_bytes_after}; model bytes {report.base_bytes_before} -> {report.base_bytes_after}")
    assert error < TOLERANCE[mode]
    assert report.library == "bitsandbytes" and report.version == bnb.__version__ and report.mode == mode
    expected = bnb.nn.Linear8bitLt if mode == "int8" else bnb.nn.Linear4bit
    linears = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    head = "classifier" if kind == "bert" else "lm_head"
    assert report.skipped == (head,) and type(linears[head]) is torch.nn.Linear
    assert set(report.layers) == set(linears) - {head}
    assert all(isinstance(linears[name], expected) for name in report.layers)
    storage = torch.int8 if mode == "int8" else torch.uint8
    assert all(linears[name].weight.dtype == storage for name in report.layers)
    assert report.layer_bytes_before / report.layer_bytes_after > MIN_SHRINK[mode]
    assert report.base_bytes_after == quantized_base.tensor_bytes(model) < report.base_bytes_before


@pytest.mark.parametrize(("kind", "adapter"), [("bert", "lora"), ("llama", "lora"), ("bert", "dora")])
@pytest.mark.parametrize("mode", MODES)
def test_lora_trains_over_the_quantized_base_and_saves_a_float_compatible_adapter(bnb, kind: str, adapter: str,
                                                                                   mode: str) -> None:
    from peft.tuners.lora import bnb as lora_bnb

    dora = adapter == "dora"
    model = _model(kind)
    quantize_frozen_base(model, mode, DEFAULT_SKIP)
    peft_model = get_peft_model(model, _lora(kind, dora))
    lora_type = lora_bnb.Linear8bitLt if mode == "int8" else lora_bnb.Linear4bit
    adapted = [m for name, m in peft_model.named_modules() if name.endswith(("query", "value", "q_proj", "v_proj"))]
    assert adapted and all(type(m) is lora_type for m in adapted)  # PEFT dispatched to its bitsandbytes layers

    frozen = _frozen_state(bnb, peft_model)
    assert frozen
    batch = _batch(kind)
    # An evaluation pass first, as between epochs: on AVX-512 BF16 CPUs it used to repack NF4 weights in place.
    peft_model.eval()
    with torch.no_grad():
        peft_model(input_ids=batch["input_ids"])
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    peft_model.train()
    losses = []
    for _ in range(6):
        loss = peft_model(**batch).loss
        loss.backward()
        with_grad = {name for name, p in peft_model.named_parameters() if p.grad is not None}
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    print(f"{kind} {mode} {adapter}: losses {[round(x, 4) for x in losses]}")
    assert losses[-1] < losses[0] - 0.05
    # lora_magnitude_vector: DoRA's per-row magnitudes, part of the adapter.
    assert with_grad and all("lora_" in name or "modules_to_save" in name for name in with_grad)
    assert any("lora_B" in name for name in with_grad)
    after = _frozen_state(bnb, peft_model)
    assert after.keys() == frozen.keys()
    assert all(torch.equal(after[k], frozen[k]) for k in frozen), "a quantized base weight changed"

    adapter = get_peft_model_state_dict(peft_model)
    float_model = get_peft_model(_model(kind), _lora(kind, dora))
    assert adapter.keys() == get_peft_model_state_dict(float_model).keys()
    assert all(t.dtype == torch.float32 for t in adapter.values())
    result = set_peft_model_state_dict(float_model, adapter)
    assert not result.unexpected_keys
    assert not [k for k in result.missing_keys if "lora_" in k or "modules_to_save" in k]
    # The float model with the adapter predicts like the quantized one did (the base differs by rounding only).
    peft_model.eval()
    float_model.eval()
    with torch.no_grad():
        gap = (float_model(input_ids=batch["input_ids"]).logits - peft_model(input_ids=batch["input_ids"]).logits)
    assert gap.abs().max().item() < 2 * TOLERANCE[mode]


def test_load_for_task_quantizes_before_peft_and_keeps_new_modules_float(bnb, tmp_path: Path) -> None:
    from peft.tuners.lora import bnb as lora_bnb

    model_dir = make_tiny_model(tmp_path / "bert", "bert")
    config = BuildConfig(model_dir=model_dir, task="seq-cls", labels=LABELS, max_length=32)
    reports = []

    def quantize(model: torch.nn.Module, modules_to_save: list[str]) -> None:
        reports.append(quantize_frozen_base(model, "int8", (*DEFAULT_SKIP, *modules_to_save)))

    loaded = load_for_task(config, before_peft=quantize)
    assert reports and reports[0].layers
    kinds = {type(m) for name, m in loaded.model.named_modules() if name.endswith((".query", ".value"))}
    assert kinds == {lora_bnb.Linear8bitLt}
    trainable = [name for name, p in loaded.model.named_parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in loaded.model.parameters() if p.requires_grad)
    assert any("classifier" in name for name in trainable)


def test_unknown_mode_is_a_config_error() -> None:
    for call in (lambda: check_quantized_base_supported("int4"), lambda: quantize_frozen_base(_model("bert"), "nf8")):
        with pytest.raises(ConfigError, match="unknown quantized base mode .*int8, 4bit"):
            call()


def test_missing_bitsandbytes_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # makes `import bitsandbytes` raise ImportError
    check_quantized_base_supported.cache_clear()
    try:
        with pytest.raises(DependencyError, match=r'pip install "edge-sdk\[quantized\]"'):
            quantize_frozen_base(_model("bert"), "4bit")
    finally:
        check_quantized_base_supported.cache_clear()


def test_a_mode_bitsandbytes_cannot_run_here_is_a_config_error(bnb, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_kernel(*_args) -> None:
        raise NotImplementedError("no CPU kernel for quantize_4bit")

    monkeypatch.setattr(quantized_base, "_quantized_linear", no_kernel)
    check_quantized_base_supported.cache_clear()
    try:
        with pytest.raises(ConfigError, match=r"cannot run a 4bit base on this machine .*no CPU kernel.*float base"):
            check_quantized_base_supported("4bit")
    finally:
        check_quantized_base_supported.cache_clear()


@pytest.mark.parametrize("mode", MODES)
def test_quantizing_leaves_the_callers_random_stream_alone(bnb, mode: str) -> None:
    """So LoRA's initial weights after a quantized base are those after a float base with the same seed."""
    check_quantized_base_supported.cache_clear()
    model = _model("bert")
    torch.manual_seed(5)
    expected = torch.rand(4)
    torch.manual_seed(5)
    quantize_frozen_base(model, mode)  # the support check runs too (its cache was cleared)
    assert torch.equal(torch.rand(4), expected)
