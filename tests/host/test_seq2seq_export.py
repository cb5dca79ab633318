"""Encoder-decoder export (Marian, T5, BART): ONNX against PyTorch for the training forward, the encoder
and the cached decoder; one shared weights file; ONNX Runtime training on teacher-forced targets; and
device generation (greedy and beam search) equal to transformers' ``generate`` token for token."""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from peft import LoraConfig, TaskType, get_peft_model
from tiny_seq2seq import KINDS, make_tiny_seq2seq
from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from edge_sdk.device.seq2seq_generation import Seq2SeqGenerator
from edge_sdk.errors import AdapterError, BundleError, ConfigError, ExportError
from edge_sdk.host.artifacts import build_training_artifacts
from edge_sdk.host.export import ExportedGraph, compare_outputs
from edge_sdk.host.graph_set import GraphSet
from edge_sdk.host.losses import loss_block
from edge_sdk.host.model_loading import _zero_dropout_config, default_target_modules
from edge_sdk.host.seq2seq_export import (
    Seq2SeqGraphs,
    check_seq2seq_against_torch,
    export_seq2seq_generation,
    export_seq2seq_training_graph,
    generation_spec,
)
from edge_sdk.tasks.seq2seq import SPEC as SEQ2SEQ
from edge_sdk.tasks.seq2seq import teacher_forced_inputs

SOURCES = ["the market and the bank", "alice and bob win the cup in paris", "the team won the league",
           "phone data chip", "music film star award show actor band album", "the minister and the party"]
TARGETS = ["market bank", "alice bob cup paris", "team league", "phone", "music film star award", "minister party"]
MAX_NEW = 10


@dataclass
class Exported:
    kind: str
    model: torch.nn.Module            # PEFT model with non-zero LoRA weights
    tokenizer: object
    source: dict[str, np.ndarray]     # input_ids, attention_mask (padded)
    batch: dict[str, np.ndarray]      # the four training-graph inputs
    labels: np.ndarray
    training: ExportedGraph
    graphs: Seq2SeqGraphs
    folder: Path


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models: one thread is fastest, and spinning thread pools of torch and ONNX Runtime fight over
    the cores (several times slower on a 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _load(model_dir: Path) -> tuple[torch.nn.Module, object]:
    """The PEFT model as the build loads it: eager attention, float32, no dropout, LoRA r=8 on q/v."""
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    config = AutoConfig.from_pretrained(model_dir)
    _zero_dropout_config(config)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir, config=config, attn_implementation="eager",
                                                  dtype=torch.float32)
    lora = LoraConfig(task_type=TaskType.SEQ_2_SEQ_LM, r=8, lora_alpha=16, lora_dropout=0.0,
                      target_modules=default_target_modules(config.model_type, model))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_peft_model(model, lora), AutoTokenizer.from_pretrained(model_dir)


def _perturb_lora(model: torch.nn.Module) -> None:
    # Zero-initialised LoRA B would make every adapter path invisible to the comparisons.
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)


@pytest.fixture(scope="module", params=KINDS)
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    kind = request.param
    folder = tmp_path_factory.mktemp(f"seq2seq-{kind}")
    model, tokenizer = _load(make_tiny_seq2seq(folder / "model", kind))
    _perturb_lora(model)
    model.eval()
    generation = model.get_base_model().generation_config
    source = dict(tokenizer(SOURCES, padding=True, return_tensors="np"))
    targets = tokenizer(text_target=TARGETS, padding=True, return_tensors="np")
    forced = teacher_forced_inputs(targets["input_ids"], generation.decoder_start_token_id,
                                   tokenizer.pad_token_id, target_mask=targets["attention_mask"])
    labels = forced.pop("labels")
    batch = {"input_ids": source["input_ids"], "attention_mask": source["attention_mask"]} | forced
    training = export_seq2seq_training_graph(model, batch, folder / "forward.onnx", 14)
    graphs = export_seq2seq_generation(model, folder / "generation", 14)
    return Exported(kind, model, tokenizer, source, batch, labels, training, graphs, folder)


@dataclass
class Trained:
    losses: list[float]
    weights: dict[str, np.ndarray]
    model: torch.nn.Module            # a copy of the PEFT model holding the trained weights


@pytest.fixture(scope="module")
def trained(exported: Exported) -> Trained:
    """A few AdamW steps with ONNX Runtime's training build on the teacher-forced batch."""
    from onnxruntime.capi import _pybind_state as capi

    vocab = exported.graphs.decoder.shape.vocab_size
    loss = loss_block(SEQ2SEQ.host.loss(vocab), SEQ2SEQ.host.outputs, SEQ2SEQ.host.targets, vocab)
    files = build_training_artifacts(exported.training, loss, exported.folder / "artifacts")
    paths = {key: str(exported.folder / "artifacts" / name) for key, name in files.items()}
    device = capi.OrtDevice(capi.OrtDevice.cpu(), capi.OrtDevice.default_memory(), 0)
    options = capi.SessionOptions()
    options.intra_op_num_threads = 1
    state = capi.load_checkpoint(paths["checkpoint"])
    module = capi.Module(paths["training_model"], state, paths["eval_model"], device, options)
    optimizer = capi.Optimizer(paths["optimizer_model"], state, device, options)
    feeds = exported.batch | {"labels": exported.labels}
    order = list(module.input_names(True))
    losses = []
    for _ in range(40):
        fetches = capi.OrtValueVector()
        optimizer.set_learning_rate(0.03)
        module.train_step([feeds[name] for name in order], fetches)
        optimizer.optimizer_step()
        module.lazy_reset_grad()
        losses.append(float(fetches[0].numpy()))
    weights = {name: state.get_parameter(name).data.numpy().copy() for name in exported.training.trainable}
    del optimizer, module, state  # the optimizer and module point into the state: free them first
    model = copy.deepcopy(exported.model)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(torch.from_numpy(value))
    return Trained(losses, weights, model.eval())


def _generator(exported: Exported) -> Seq2SeqGenerator:
    graphs = exported.graphs
    return Seq2SeqGenerator(_session(graphs.encoder.path), _session(graphs.decoder.path), graphs.to_manifest())


def _hf_generate(model: torch.nn.Module, source: dict[str, np.ndarray], eos: list[int], **settings) -> list[list[int]]:
    """transformers' output without the decoder start token, cut after the first eos (it pads after it)."""
    with torch.no_grad():
        rows = model.generate(input_ids=torch.from_numpy(source["input_ids"]),
                              attention_mask=torch.from_numpy(source["attention_mask"]), max_new_tokens=MAX_NEW,
                              do_sample=False, **settings).tolist()
    cut = []
    for row in rows:
        tokens = row[1:]
        ends = [index for index, token in enumerate(tokens) if token in eos]
        cut.append(tokens[:ends[0] + 1] if ends else tokens)
    return cut


# --- the tiny models ------------------------------------------------------------------------------------


def test_tiny_models_have_consistent_special_ids(exported: Exported) -> None:
    tokenizer, config = exported.tokenizer, exported.model.get_base_model().config
    assert tokenizer.is_fast
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id) == (config.pad_token_id, config.eos_token_id)
    start = config.eos_token_id if exported.kind == "bart" else config.pad_token_id
    assert config.decoder_start_token_id == start
    encoded = tokenizer("the bank")["input_ids"]
    assert encoded[-1] == tokenizer.eos_token_id
    if exported.kind == "bart":
        assert encoded[0] == tokenizer.bos_token_id == config.bos_token_id


def test_teacher_forced_inputs_shift_like_transformers(exported: Exported) -> None:
    labels = torch.from_numpy(exported.labels)
    expected = exported.model.get_base_model().prepare_decoder_input_ids_from_labels(labels=labels)
    np.testing.assert_array_equal(exported.batch["decoder_input_ids"], expected.numpy())
    ragged = teacher_forced_inputs([[5, 6, 1], [7, 1]], decoder_start_token_id=0, pad_id=9)
    np.testing.assert_array_equal(ragged["decoder_input_ids"], [[0, 5, 6], [0, 7, 1]])
    np.testing.assert_array_equal(ragged["labels"], [[5, 6, 1], [7, 1, -100]])
    np.testing.assert_array_equal(ragged["decoder_attention_mask"], [[1, 1, 1], [1, 1, 1]])


# --- ONNX against PyTorch -------------------------------------------------------------------------------


def test_training_graph_matches_torch_with_separate_target_axis(exported: Exported) -> None:
    model_proto = onnx.load(str(exported.training.path), load_external_data=False)
    axes = {node.name: [dim.dim_param or dim.dim_value for dim in node.type.tensor_type.shape.dim]
            for node in [*model_proto.graph.input, *model_proto.graph.output]}
    assert axes["input_ids"] == ["batch", "source"] and axes["decoder_input_ids"] == ["batch", "target"]
    assert axes["logits"][:2] == ["batch", "target"]
    onnx_logits = _session(exported.training.path).run(None, exported.batch)[0]
    with torch.no_grad():
        expected = exported.model(**{name: torch.from_numpy(value) for name, value in exported.batch.items()}).logits
    compare_outputs({"logits": expected.numpy()}, {"logits": onnx_logits}, "training forward")


def test_encoder_and_cached_decoder_match_torch(exported: Exported) -> None:
    differences = check_seq2seq_against_torch(exported.model, exported.graphs, exported.source["input_ids"],
                                              exported.source["attention_mask"], steps=4)
    assert max(differences.values()) < 1e-4
    # The encoder feeds the cross-attention adapters, the decoder step the self- and query-side ones.
    assert any("encoder_attn" in name or "EncDecAttention" in name for name in exported.graphs.encoder.weight_inputs)
    assert set(exported.graphs.encoder.weight_inputs) | set(exported.graphs.decoder.weight_inputs) == set(
        exported.training.trainable)


def test_check_reports_a_disagreeing_decoder(exported: Exported) -> None:
    broken = copy.deepcopy(exported.model)
    with torch.no_grad():
        # A frozen weight (baked into the graph; adapter weights are fed from the model), changed unevenly:
        # a uniform shift would vanish in the next post-LayerNorm of Marian and BART.
        weight = next(p for n, p in broken.named_parameters() if "decoder" in n and (".fc2." in n or ".wo." in n))
        weight.add_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ExportError, match="decoder"):
        check_seq2seq_against_torch(broken, exported.graphs, exported.source["input_ids"],
                                    exported.source["attention_mask"], steps=1)


def test_export_refuses_a_model_with_dropout_on(exported: Exported) -> None:
    noisy = copy.deepcopy(exported.model)
    for module in noisy.modules():  # T5 keeps Dropout modules; BART and Marian keep float rates
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.1
        elif isinstance(getattr(module, "dropout", None), float):
            module.dropout = 0.1
    with pytest.raises(ConfigError, match="dropout"):
        export_seq2seq_generation(noisy, exported.folder / "noisy", 14)


def test_graphs_share_one_weights_file(exported: Exported) -> None:
    folder = exported.folder / "shared"
    folder.mkdir()
    sources = {"forward.onnx": exported.training.path, "encoder.onnx": exported.graphs.encoder.path,
               "decoder.onnx": exported.graphs.decoder.path}
    models = {name: onnx.load(str(path)) for name, path in sources.items()}
    for model_proto in models.values():
        names = {init.name for init in model_proto.graph.initializer}
        # Tied embeddings come out once, under the same name, wherever they are used.
        assert not any("lm_head" in name or "embed_tokens" in name for name in names)
        assert any(name.endswith("shared.weight") for name in names)
    graphs = GraphSet()
    for name, model_proto in models.items():
        graphs.add(name, model_proto)
    graphs.write(folder, "weights.bin")
    generator = _generator(exported)
    weights = {name: p.detach().numpy() for name, p in exported.model.named_parameters() if p.requires_grad}
    ids, mask = exported.source["input_ids"], exported.source["attention_mask"]
    feeds = {"encoder": {"input_ids": ids, "attention_mask": mask}
             | {n: weights[n] for n in exported.graphs.encoder.weight_inputs},
             "forward": exported.batch}
    for name in ("forward", "encoder"):
        before = _session(sources[f"{name}.onnx"]).run(None, feeds[name])
        after = _session(folder / f"{name}.onnx").run(None, feeds[name])
        for first, second in zip(before, after, strict=True):
            np.testing.assert_array_equal(first, second)
    shared = Seq2SeqGenerator(_session(folder / "encoder.onnx"), _session(folder / "decoder.onnx"),
                              exported.graphs.to_manifest())
    assert shared.generate(ids, mask, weights, 4) == generator.generate(ids, mask, weights, 4)


# --- training ------------------------------------------------------------------------------------------


def test_ort_training_reduces_the_teacher_forced_loss(exported: Exported, trained: Trained) -> None:
    with torch.no_grad():
        start = exported.model(**{name: torch.from_numpy(value) for name, value in exported.batch.items()},
                               labels=torch.from_numpy(exported.labels)).loss.item()
    assert trained.losses[0] == pytest.approx(start, abs=1e-4)  # same loss as transformers computes
    assert trained.losses[-1] < 0.5 * trained.losses[0]


# --- generation ----------------------------------------------------------------------------------------


def test_greedy_generation_matches_transformers(exported: Exported, trained: Trained) -> None:
    eos = exported.graphs.generation.eos_token_ids
    ours = _generator(exported).generate(exported.source["input_ids"], exported.source["attention_mask"],
                                         trained.weights, MAX_NEW)
    assert ours == _hf_generate(trained.model, exported.source, eos, num_beams=1)
    # The trained adapter stops early on some rows: eos handling is exercised, not just the length limit.
    assert any(len(row) < MAX_NEW and row[-1] in eos for row in ours)


@pytest.mark.parametrize(("beams", "early_stopping", "length_penalty"),
                         [(3, True, 1.0), (3, False, 1.0), (4, "never", 2.0)])
def test_beam_search_matches_transformers(exported: Exported, trained: Trained, beams: int,
                                          early_stopping: bool | str, length_penalty: float) -> None:
    eos = exported.graphs.generation.eos_token_ids
    settings = {"num_beams": beams, "early_stopping": early_stopping, "length_penalty": length_penalty}
    ours = _generator(exported).generate(exported.source["input_ids"], exported.source["attention_mask"],
                                         trained.weights, MAX_NEW, **settings)
    assert ours == _hf_generate(trained.model, exported.source, eos, **settings)


def test_generation_config_rules_match_transformers(exported: Exported, trained: Trained) -> None:
    """Forced first token, min length and no-repeat n-grams (forced eos and banned tokens come with the
    tiny models' own configs), applied like transformers' logits processors."""
    model = copy.deepcopy(trained.model)
    settings = model.get_base_model().generation_config
    settings.forced_bos_token_id, settings.min_length, settings.no_repeat_ngram_size = 7, 6, 2
    spec = exported.graphs.to_manifest() | {"generation": generation_spec(model).to_manifest()}
    generator = Seq2SeqGenerator(_session(exported.graphs.encoder.path), _session(exported.graphs.decoder.path), spec)
    eos = spec["generation"]["eos_token_ids"]
    for beams in (1, 3):
        ours = generator.generate(exported.source["input_ids"], exported.source["attention_mask"], trained.weights,
                                  MAX_NEW, num_beams=beams)
        assert ours == _hf_generate(model, exported.source, eos, num_beams=beams)
        assert all(row[0] == 7 and len(row) >= 5 for row in ours)


def test_single_row_and_adapter_switch(exported: Exported, trained: Trained) -> None:
    generator = _generator(exported)
    ids, mask = exported.source["input_ids"], exported.source["attention_mask"]
    length = int(mask[1].sum())
    batched = generator.generate(ids, mask, trained.weights, MAX_NEW)
    assert generator.generate(ids[1, :length], None, trained.weights, MAX_NEW) == [batched[1]]
    untrained = {name: p.detach().numpy() for name, p in exported.model.named_parameters() if p.requires_grad}
    assert generator.generate(ids, mask, untrained, MAX_NEW) == _hf_generate(
        exported.model, exported.source, exported.graphs.generation.eos_token_ids, num_beams=1)


def test_generator_rejects_bad_settings_weights_and_specs(exported: Exported, trained: Trained) -> None:
    generator = _generator(exported)
    ids = exported.source["input_ids"]
    with pytest.raises(ConfigError, match="num_beams"):
        generator.generate(ids, None, trained.weights, MAX_NEW, num_beams=0)
    with pytest.raises(ConfigError, match="max_new_tokens"):
        generator.generate(ids, None, trained.weights, 0)
    with pytest.raises(AdapterError, match="lacks weights"):
        generator.generate(ids, None, {}, MAX_NEW)
    spec = exported.graphs.to_manifest()
    del spec["decoder"]["past_self"]
    with pytest.raises(BundleError, match="past_self"):
        Seq2SeqGenerator(generator.encoder, generator.decoder, spec)
