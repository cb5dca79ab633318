"""ONNX export of a PEFT encoder-decoder (Marian, T5, BART, …) for training and cached generation.

Three graphs, all naming their parameters exactly like the PEFT model's ``named_parameters`` so that they
share one external weights file (``GraphSet.write``) and one adapter store:

- the training forward: input_ids, attention_mask, decoder_input_ids, decoder_attention_mask → logits
  [batch, target, vocab], trained by ONNX Runtime with a flattening cross-entropy loss;
- the encoder: input_ids, attention_mask → encoder_hidden_states plus every decoder layer's cross-attention
  keys and values. Those depend only on the source, so they are computed once per ``generate`` and fed
  to every step, instead of being recomputed from the encoder states at each step (measured on a
  Marian-base-sized model, 6+6 layers, d_model 512, source 64, 2 CPU threads: 14.5 vs 23.8 ms per step
  at batch 1, 22.7 vs 56.9 ms at 4 rows, as in 4-beam search; same logits);
- the decoder step: decoder_input_ids [batch, new], encoder_attention_mask, past self-attention and
  cross-attention keys/values → logits of the last position [batch, vocab] and the present self-attention
  keys/values [batch, heads, past + new, head_dim].

Every graph is traced through the model's own Hugging Face modules (no re-implementation per family):
positions (Marian/BART absolute, T5 relative bias) come from the cache length that transformers reads
off the past tensors, which the TorchScript tracer records as a Shape op, so they stay right at every
step. Why TorchScript in TRAINING mode without constant folding: see docs/training-export.md and export.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from transformers.cache_utils import DynamicCache, DynamicLayer, EncoderDecoderCache

from edge_sdk.errors import ConfigError, ExportError
from edge_sdk.graph.prune import prune_unused
from edge_sdk.host.export import ExportedGraph, compare_outputs, trace_to_onnx
from edge_sdk.host.inference_graph import inference_model
from edge_sdk.host.ort_session import cpu_session

log = logging.getLogger(__name__)

TRAINING_INPUTS = ["input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask"]
ENCODER_INPUTS = ["input_ids", "attention_mask"]
ENCODER_OUTPUT = "encoder_hidden_states"

# Sizes of the example inputs the tracer runs on. None may be 1: the tracer would bake a size-1 dimension
# into broadcasts, and a trace over an empty past would skip the cache concatenation paths.
_TRACE_BATCH, _TRACE_SOURCE, _TRACE_PAST, _TRACE_NEW = 2, 5, 3, 2

# Logits rules of a generation config that the device loop does not implement.
_UNSUPPORTED_RULES = ("repetition_penalty", "encoder_no_repeat_ngram_size", "min_new_tokens", "sequence_bias",
                      "begin_suppress_tokens", "exponential_decay_length_penalty", "renormalize_logits",
                      "encoder_repetition_penalty", "diversity_penalty")


def _self_names(layers: int, prefix: str) -> list[str]:
    return [f"{prefix}.{i}.decoder.{kind}" for i in range(layers) for kind in ("key", "value")]


def _cross_names(layers: int, prefix: str) -> list[str]:
    return [f"{prefix}.{i}.encoder.{kind}" for i in range(layers) for kind in ("key", "value")]


@dataclass
class Seq2SeqShape:
    """What the device needs to size the caches: decoder layers, attention heads and the width of one head."""

    layers: int
    heads: int
    head_dim: int
    d_model: int
    vocab_size: int
    max_positions: int | None        # longest source/target absolute position tables allow (None: T5, relative)


@dataclass
class Seq2SeqEncoderGraph:
    path: Path
    input_names: list[str]
    output_names: list[str]           # encoder_hidden_states, then present.{i}.encoder.{key,value}
    weight_inputs: list[str]          # trainable parameters fed as inputs (those this graph uses)

    def to_manifest(self) -> dict:
        return {"file": self.path.name, "inputs": list(self.input_names), "outputs": list(self.output_names),
                "weight_inputs": list(self.weight_inputs)}


@dataclass
class Seq2SeqDecoderGraph:
    path: Path
    input_names: list[str]            # decoder_input_ids, encoder_attention_mask, self past, cross past
    output_names: list[str]           # logits, then present.{i}.decoder.{key,value}
    weight_inputs: list[str]
    shape: Seq2SeqShape

    @property
    def past_self(self) -> list[str]:
        return _self_names(self.shape.layers, "past_key_values")

    @property
    def present_self(self) -> list[str]:
        return _self_names(self.shape.layers, "present")

    @property
    def past_cross(self) -> list[str]:
        return _cross_names(self.shape.layers, "past_key_values")

    def to_manifest(self) -> dict:
        return {"file": self.path.name, "inputs": list(self.input_names), "outputs": list(self.output_names),
                "weight_inputs": list(self.weight_inputs), "past_self": self.past_self,
                "present_self": self.present_self, "past_cross": self.past_cross,
                "layers": self.shape.layers, "heads": self.shape.heads, "head_dim": self.shape.head_dim,
                "vocab_size": self.shape.vocab_size, "max_positions": self.shape.max_positions}


@dataclass
class GenerationSpec:
    """The generation config's ids and the logits rules the device loop applies, plus the model's own
    search defaults (num_beams, length_penalty, early_stopping, max_length) for callers to pass on."""

    decoder_start_token_id: int
    eos_token_ids: list[int]
    pad_token_id: int
    forced_bos_token_id: int | None = None
    forced_eos_token_ids: list[int] = field(default_factory=list)
    suppress_token_ids: list[int] = field(default_factory=list)
    min_length: int = 0
    no_repeat_ngram_size: int = 0
    defaults: dict = field(default_factory=dict)

    def to_manifest(self) -> dict:
        return {key: (dict(value) if isinstance(value, dict) else list(value) if isinstance(value, list) else value)
                for key, value in self.__dict__.items()}


@dataclass
class Seq2SeqGraphs:
    """The encoder and decoder-step graphs plus generation ids: ``to_manifest()`` is the device's spec."""

    encoder: Seq2SeqEncoderGraph
    decoder: Seq2SeqDecoderGraph
    generation: GenerationSpec

    def to_manifest(self) -> dict:
        encoder = self.encoder.to_manifest()
        # Which encoder output feeds which decoder input, so the device never guesses from names.
        encoder["cross_outputs"] = _cross_names(self.decoder.shape.layers, "present")
        return {"encoder": encoder, "decoder": self.decoder.to_manifest(),
                "generation": self.generation.to_manifest()}


# --------------------------------------------------------------------------------------------------------------
# Model facts


def seq2seq_shape(peft_model: torch.nn.Module) -> Seq2SeqShape:
    """Decoder depth and attention geometry, read from the transformers config of any seq2seq family."""
    config = peft_model.get_base_model().config
    layers = getattr(config, "decoder_layers", None) or getattr(config, "num_decoder_layers", None) \
        or getattr(config, "num_layers", None)
    heads = getattr(config, "decoder_attention_heads", None) or getattr(config, "num_heads", None)
    d_model = getattr(config, "d_model", None) or getattr(config, "hidden_size", None)
    if not (layers and heads and d_model):
        raise ExportError(f"cannot read decoder layers/heads/width from the {config.model_type!r} config")
    head_dim = getattr(config, "d_kv", None) or d_model // heads  # T5 sets the head width itself
    vocab = getattr(config, "decoder_vocab_size", None) or config.vocab_size
    positions = getattr(config, "max_position_embeddings", None)
    return Seq2SeqShape(layers=int(layers), heads=int(heads), head_dim=int(head_dim), d_model=int(d_model),
                        vocab_size=int(vocab), max_positions=int(positions) if positions else None)


def _as_list(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list | tuple) else [int(value)]


def generation_spec(peft_model: torch.nn.Module) -> GenerationSpec:
    """The generation config's ids and the rules the device implements (banned tokens, min length, no-repeat
    n-grams, forced bos/eos); rules it does not implement are reported, since the device output would differ."""
    model = peft_model.get_base_model()
    generation = model.generation_config
    start = generation.decoder_start_token_id
    if start is None:
        start = model.config.decoder_start_token_id
    eos = _as_list(generation.eos_token_id if generation.eos_token_id is not None else model.config.eos_token_id)
    pad = generation.pad_token_id if generation.pad_token_id is not None else model.config.pad_token_id
    if start is None or not eos or pad is None:
        raise ExportError(f"the model's generation config lacks decoder_start_token_id ({start}), eos_token_id "
                          f"({eos}) or pad_token_id ({pad}); set them in generation_config.json")
    bad_words = generation.bad_words_ids or []
    longer = [ids for ids in bad_words if len(ids) != 1]
    if longer:
        raise ExportError(f"bad_words_ids with more than one token ({longer[:3]}) are not supported on the device")
    # transformers never bans an eos token through bad_words_ids.
    suppress = {ids[0] for ids in bad_words if ids[0] not in eos} | set(generation.suppress_tokens or [])
    ignored = [name for name in _UNSUPPORTED_RULES if getattr(generation, name, None) not in (None, 0, 1.0, False)]
    if ignored:
        log.warning("the device generation loop ignores these generation settings of the model: %s",
                    ", ".join(f"{name}={getattr(generation, name)!r}" for name in ignored))
    # transformers 5 leaves unset settings as None and applies its defaults (1, 1.0, False) at generate time.
    defaults = {"num_beams": int(generation.num_beams or 1),
                "length_penalty": 1.0 if generation.length_penalty is None else float(generation.length_penalty),
                "early_stopping": bool(generation.early_stopping) if generation.early_stopping != "never" else "never",
                "max_length": generation.max_length}
    return GenerationSpec(decoder_start_token_id=int(start), eos_token_ids=eos, pad_token_id=int(pad),
                          forced_bos_token_id=generation.forced_bos_token_id,
                          forced_eos_token_ids=_as_list(generation.forced_eos_token_id),
                          suppress_token_ids=sorted(suppress), min_length=int(generation.min_length or 0),
                          no_repeat_ngram_size=int(generation.no_repeat_ngram_size or 0), defaults=defaults)


# --------------------------------------------------------------------------------------------------------------
# Export plumbing


def _export(wrapper: torch.nn.Module, args: tuple, path: Path, input_names: list[str], output_names: list[str],
            dynamic_axes: dict, opset: int) -> onnx.ModelProto:
    """Trace ``wrapper`` in training mode (no initializer merging) and name parameters like PEFT does."""
    _check_no_dropout(wrapper)
    return trace_to_onnx(wrapper, args, path, input_names, output_names, dynamic_axes, opset, path.name)


def _check_no_dropout(module: torch.nn.Module) -> None:
    """A training-mode trace keeps dropout (and layer drop, decided once by the tracer's dice): with a rate
    above 0 the graphs would be random or wrong. transformers' BART/Marian layers keep their rates as
    float attributes, T5 as Dropout modules."""
    active = []
    for name, sub in module.named_modules():
        rates = {"p": sub.p} if isinstance(sub, torch.nn.Dropout) else {
            key: value for key, value in vars(sub).items()
            if key.endswith(("dropout", "layerdrop")) and type(value) in (float, int)}
        active += [f"{name.removeprefix('model.')}.{key}={value}" for key, value in rates.items() if value > 0]
    if active:
        raise ConfigError(f"the model has dropout or layer drop switched on ({', '.join(active[:3])}); load it with "
                          "those rates of its config set to 0 before exporting")


def _promote_weights(model_proto: onnx.ModelProto, trainable: list[str], path: Path) -> list[str]:
    """Make the trainable parameters this graph uses into inputs; returns their names (model order)."""
    present = {init.name for init in model_proto.graph.initializer}
    used = [name for name in trainable if name in present]
    inference_model(model_proto, used)
    prune_unused(model_proto.graph)
    onnx.save(model_proto, str(path))
    return used


def _trainable(peft_model: torch.nn.Module) -> list[str]:
    return [name for name, p in peft_model.named_parameters() if p.requires_grad]


def _example_ids(peft_model: torch.nn.Module, shape: tuple[int, int]) -> torch.Tensor:
    vocab = seq2seq_shape(peft_model).vocab_size
    return torch.randint(3, vocab, shape, generator=torch.Generator().manual_seed(0), dtype=torch.int64)


def _example_mask(batch: int, length: int) -> torch.Tensor:
    mask = torch.ones(batch, length, dtype=torch.int64)
    mask[-1, -1] = 0  # one padded position: the mask path must be traced, not skipped
    return mask


# --------------------------------------------------------------------------------------------------------------
# Training forward


class _TrainingForward(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, decoder_input_ids, decoder_attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                          decoder_attention_mask=decoder_attention_mask, use_cache=False).logits


def export_seq2seq_training_graph(peft_model: torch.nn.Module, batch: dict[str, np.ndarray], path: Path,
                                  opset: int) -> ExportedGraph:
    """Export the teacher-forced forward pass (logits [batch, target, vocab]) ready for gradient building.

    ``batch`` holds the four TRAINING_INPUTS as int64 arrays. Unlike ``export.export_training_graph``, the
    decoder inputs get their own symbolic ``target`` axis: source and target lengths differ.
    """
    missing = [name for name in TRAINING_INPUTS if name not in batch]
    if missing:
        raise ConfigError(f"the seq2seq training batch lacks {', '.join(missing)}; it needs {TRAINING_INPUTS}")
    args = tuple(torch.from_numpy(np.asarray(batch[name], dtype=np.int64)) for name in TRAINING_INPUTS)
    axes = {"input_ids": {0: "batch", 1: "source"}, "attention_mask": {0: "batch", 1: "source"},
            "decoder_input_ids": {0: "batch", 1: "target"}, "decoder_attention_mask": {0: "batch", 1: "target"},
            "logits": {0: "batch", 1: "target"}}
    model_proto = _export(_TrainingForward(peft_model), args, path, TRAINING_INPUTS, ["logits"], axes, opset)
    initializers = [init.name for init in model_proto.graph.initializer]
    trainable = _trainable(peft_model)
    absent = sorted(set(trainable) - set(initializers))
    if absent:
        raise ExportError("trainable parameters are missing from the exported graph (renamed or folded by the "
                          "exporter): " + ", ".join(absent[:10]))
    frozen = [name for name in initializers if name not in set(trainable)]
    return ExportedGraph(model=model_proto, path=path, input_names=list(TRAINING_INPUTS), output_names=["logits"],
                         trainable=trainable, frozen=frozen)


# --------------------------------------------------------------------------------------------------------------
# Encoder (+ cross-attention keys/values)


def _filled_cache(tensors: list[torch.Tensor]) -> DynamicCache:
    """A DynamicCache holding ``tensors`` (key, value per layer) as is.

    Filling it through ``update`` would concatenate onto an empty 1-D tensor, which ONNX Concat rejects.
    """
    cache = DynamicCache()
    cache.layers = []
    for index in range(0, len(tensors), 2):
        layer = DynamicLayer()
        layer.lazy_initialization(tensors[index], tensors[index + 1])
        layer.keys, layer.values = tensors[index], tensors[index + 1]
        cache.layers.append(layer)
    return cache


class _EncoderForward(torch.nn.Module):
    """Encoder output plus each decoder layer's cross keys/values, taken from one decoder pass over a start token.

    Only the cross-attention projections of that pass feed an output; the exporter drops the rest of it
    as dead code (its parameters included), so this stays family-agnostic without extra cost.
    """

    def __init__(self, model: torch.nn.Module, start_token: int) -> None:
        super().__init__()
        self.model = model
        self.start_token = start_token

    def forward(self, input_ids, attention_mask):
        hidden = self.model.get_base_model().get_encoder()(input_ids=input_ids, attention_mask=attention_mask)
        hidden = hidden.last_hidden_state
        start = torch.full((input_ids.shape[0], 1), self.start_token, dtype=torch.int64)
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        self.model(encoder_outputs=(hidden,), attention_mask=attention_mask, decoder_input_ids=start, cache=cache,
                   use_cache=True)
        cross = cache.cross_attention_cache
        return (hidden, *[tensor for layer in cross.layers for tensor in (layer.keys, layer.values)])


def export_encoder(peft_model: torch.nn.Module, path: Path, opset: int,
                   trainable: list[str] | None = None) -> Seq2SeqEncoderGraph:
    """Export input_ids, attention_mask → encoder_hidden_states and present.{i}.encoder.{key,value}."""
    shape = seq2seq_shape(peft_model)
    spec = generation_spec(peft_model)
    ids = _example_ids(peft_model, (_TRACE_BATCH, _TRACE_SOURCE))
    mask = _example_mask(_TRACE_BATCH, _TRACE_SOURCE)
    cross = _cross_names(shape.layers, "present")
    outputs = [ENCODER_OUTPUT, *cross]
    axes = {name: {0: "batch", 1: "source"} for name in [*ENCODER_INPUTS, ENCODER_OUTPUT]}
    axes |= {name: {0: "batch", 2: "source"} for name in cross}
    wrapper = _EncoderForward(peft_model, spec.decoder_start_token_id)
    model_proto = _export(wrapper, (ids, mask), path, ENCODER_INPUTS, outputs, axes, opset)
    weights = _promote_weights(model_proto, _trainable(peft_model) if trainable is None else trainable, path)
    return Seq2SeqEncoderGraph(path=path, input_names=list(ENCODER_INPUTS), output_names=outputs,
                               weight_inputs=weights)


# --------------------------------------------------------------------------------------------------------------
# Decoder step with cache


class _DecoderStep(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, layers: int) -> None:
        super().__init__()
        self.model = model
        self.layers = layers

    def forward(self, decoder_input_ids, encoder_attention_mask, *past):
        self_past, cross_past = list(past[: 2 * self.layers]), list(past[2 * self.layers:])
        self_cache = _filled_cache(self_past)
        cache = EncoderDecoderCache(self_cache, _filled_cache(cross_past))
        cache.is_updated = dict.fromkeys(range(self.layers), True)  # cross keys/values are final: never recompute
        # The decoder reads only the source length and dtype off the encoder states when the cross cache is
        # filled (T5 also needs them non-None to run cross-attention at all): a stand-in saves an input.
        stand_in = encoder_attention_mask.unsqueeze(-1).to(cross_past[0].dtype)
        logits = self.model(encoder_outputs=(stand_in,), attention_mask=encoder_attention_mask,
                            decoder_input_ids=decoder_input_ids, cache=cache, use_cache=True).logits
        present = [tensor for layer in self_cache.layers for tensor in (layer.keys, layer.values)]
        return (logits[:, -1, :], *present)


def export_decoder_with_cache(peft_model: torch.nn.Module, path: Path, opset: int,
                              trainable: list[str] | None = None) -> Seq2SeqDecoderGraph:
    """Export one cached decoding step; see the module docstring for its inputs and outputs."""
    shape = seq2seq_shape(peft_model)
    past_self, past_cross = _self_names(shape.layers, "past_key_values"), _cross_names(shape.layers, "past_key_values")
    present = _self_names(shape.layers, "present")
    input_names = ["decoder_input_ids", "encoder_attention_mask", *past_self, *past_cross]
    output_names = ["logits", *present]
    generator = torch.Generator().manual_seed(1)

    def states(length: int) -> torch.Tensor:
        return torch.randn(_TRACE_BATCH, shape.heads, length, shape.head_dim, generator=generator)

    args = (_example_ids(peft_model, (_TRACE_BATCH, _TRACE_NEW)), _example_mask(_TRACE_BATCH, _TRACE_SOURCE),
            *[states(_TRACE_PAST) for _ in past_self], *[states(_TRACE_SOURCE) for _ in past_cross])
    axes = {"decoder_input_ids": {0: "batch", 1: "new"}, "encoder_attention_mask": {0: "batch", 1: "source"},
            "logits": {0: "batch"}}
    axes |= {name: {0: "batch", 2: "past"} for name in past_self}
    axes |= {name: {0: "batch", 2: "source"} for name in past_cross}
    axes |= {name: {0: "batch", 2: "total"} for name in present}
    model_proto = _export(_DecoderStep(peft_model, shape.layers), args, path, input_names, output_names, axes, opset)
    weights = _promote_weights(model_proto, _trainable(peft_model) if trainable is None else trainable, path)
    return Seq2SeqDecoderGraph(path=path, input_names=input_names, output_names=output_names, weight_inputs=weights,
                               shape=shape)


def export_seq2seq_generation(peft_model: torch.nn.Module, folder: Path, opset: int,
                              trainable: list[str] | None = None) -> Seq2SeqGraphs:
    """Export encoder.onnx and decoder.onnx into ``folder`` (weights still inside each graph)."""
    folder.mkdir(parents=True, exist_ok=True)
    encoder = export_encoder(peft_model, folder / "encoder.onnx", opset, trainable)
    decoder = export_decoder_with_cache(peft_model, folder / "decoder.onnx", opset, trainable)
    return Seq2SeqGraphs(encoder=encoder, decoder=decoder, generation=generation_spec(peft_model))


# --------------------------------------------------------------------------------------------------------------
# Check against PyTorch


def _weights(peft_model: torch.nn.Module, names: list[str]) -> dict[str, np.ndarray]:
    params = dict(peft_model.named_parameters())
    return {name: params[name].detach().numpy() for name in names}


def _torch_next_logits(peft_model: torch.nn.Module, ids: np.ndarray, mask: np.ndarray,
                       tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return peft_model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                          decoder_input_ids=torch.from_numpy(tokens), use_cache=False).logits[:, -1].numpy()


def check_seq2seq_against_torch(peft_model: torch.nn.Module, graphs: Seq2SeqGraphs, input_ids: np.ndarray,
                                attention_mask: np.ndarray, steps: int = 4, atol: float = 1e-4,
                                rtol: float = 1e-3) -> dict[str, float]:
    """Run the encoder and cached decoder steps in ONNX Runtime beside the uncached PyTorch forward.

    The decoder first takes two 2-token chunks (new > 1 over an empty, then a non-empty cache: positions
    and the causal mask within a chunk), using source ids as a stand-in prefix, then ``steps`` greedy
    single-token steps. The encoder output and every step's logits must agree within tolerance
    (ExportError otherwise). Returns the largest difference per output.
    """
    encoder, decoder = cpu_session(graphs.encoder.path), cpu_session(graphs.decoder.path)
    weights = _weights(peft_model, graphs.encoder.weight_inputs + graphs.decoder.weight_inputs)
    ids, mask = np.asarray(input_ids, np.int64), np.asarray(attention_mask, np.int64)
    outputs = encoder.run(None, {"input_ids": ids, "attention_mask": mask}
                          | {name: weights[name] for name in graphs.encoder.weight_inputs})
    peft_model.eval()
    with torch.no_grad():
        expected = peft_model.get_base_model().get_encoder()(input_ids=torch.from_numpy(ids),
                                                             attention_mask=torch.from_numpy(mask)).last_hidden_state
    worst = compare_outputs({ENCODER_OUTPUT: expected.numpy()}, {ENCODER_OUTPUT: outputs[0]}, "the ONNX encoder",
                            atol, rtol)
    shape = graphs.decoder.shape
    fixed = {"encoder_attention_mask": mask} | dict(zip(graphs.decoder.past_cross, outputs[1:], strict=True))
    fixed |= {name: weights[name] for name in graphs.decoder.weight_inputs}
    past = {name: np.zeros((len(ids), shape.heads, 0, shape.head_dim), np.float32) for name in graphs.decoder.past_self}
    prefix = np.resize(ids[:, :3], (len(ids), 3))
    start = np.full((len(ids), 1), graphs.generation.decoder_start_token_id, np.int64)
    tokens = new = np.concatenate([start, prefix[:, :1]], axis=1)
    worst["logits"] = 0.0
    for step in range(2 + steps):
        logits, *present = decoder.run(None, {"decoder_input_ids": new} | fixed | past)
        diff = compare_outputs({"logits": _torch_next_logits(peft_model, ids, mask, tokens)}, {"logits": logits},
                               f"the ONNX decoder at step {step} ({new.shape[1]} new tokens)", atol, rtol)
        worst["logits"] = max(worst["logits"], diff["logits"])
        past = dict(zip(graphs.decoder.past_self, present, strict=True))
        new = prefix[:, 1:] if step == 0 else logits.argmax(-1)[:, None].astype(np.int64)
        tokens = np.concatenate([tokens, new], axis=1)
    return worst
