"""ONNX export of a causal LM as a "decoder with cache" graph, and its check against PyTorch generation.

One graph serves prefill (past length 0) and every decode step (past length > 0):

    inputs   input_ids [batch, new], attention_mask [batch, past+new] (1 = real token, left padding allowed),
             position_ids [batch, new], past.{i}.key / past.{i}.value [batch, kv_heads, past, head_dim],
             then the trainable (LoRA) weights, so one session serves every adapter
    outputs  logits [batch, vocab] for the last position only, present.{i}.key / .value [batch, kv_heads,
             past+new, head_dim]

Parameters keep the PEFT ``named_parameters`` names exactly as ``export.export_training_graph`` writes them:
the decoder graph and the training graph share one external weights file, where the same name must mean
the same bytes. Hence the same exporter settings (TorchScript, TRAINING mode, no constant folding: in EVAL
mode equal-valued initializers are merged under one name) and the same wrapper attribute (``model``).
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from transformers import DynamicCache

from edge_sdk.errors import ExportError
from edge_sdk.graph.prune import prune_unused
from edge_sdk.host.export import (
    compare_outputs,
    model_mode,
    position_ids_from_mask,
    trace_to_onnx,
    weights_loaded,
)
from edge_sdk.host.inference_graph import inference_model
from edge_sdk.host.ort_session import cpu_session

log = logging.getLogger(__name__)

MANIFEST_KIND = "decoder-with-cache"
LOGITS = "logits"

# Trace shapes: a past length > 0 puts the cache Concat in the graph; sizes that differ from each other
# (and from head counts and dims) keep the tracer from tying two axes together by coincidence.
_TRACE_BATCH, _TRACE_PAST, _TRACE_NEW = 2, 3, 5


@dataclass
class DecoderGraph:
    path: Path
    num_layers: int
    num_kv_heads: int
    head_dim: int
    past_names: list[str]      # graph inputs, ordered past.0.key, past.0.value, past.1.key, ...
    present_names: list[str]   # graph outputs, same order: present.0.key, ...
    input_names: list[str] = field(default_factory=list)   # token inputs the graph takes, in graph order
    weight_names: list[str] = field(default_factory=list)  # trainable weights that are graph inputs

    def to_manifest(self, relative_model_path: str) -> dict:
        """What the device needs to drive the graph: file, input and output names, cache geometry."""
        return {
            "kind": MANIFEST_KIND,
            "file": relative_model_path,
            "inputs": list(self.input_names),
            "logits": LOGITS,
            "num_layers": self.num_layers,
            "num_kv_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "cache_dtype": "float32",
            "past_names": list(self.past_names),
            "present_names": list(self.present_names),
            "weight_inputs": list(self.weight_names),
        }


@dataclass(frozen=True)
class _CacheLayout:
    num_layers: int
    num_kv_heads: int
    head_dim: int


def _cache_names(num_layers: int, prefix: str) -> list[str]:
    return [f"{prefix}.{layer}.{kind}" for layer in range(num_layers) for kind in ("key", "value")]


def _forward_parameters(peft_model: torch.nn.Module) -> set[str]:
    return set(inspect.signature(peft_model.get_base_model().forward).parameters)


def _cache_keyword(peft_model: torch.nn.Module) -> str:
    # transformers 5.x renamed ``past_key_values`` to ``cache``; accept models written either way.
    parameters = _forward_parameters(peft_model)
    for name in ("cache", "past_key_values"):
        if name in parameters:
            return name
    raise ExportError(f"{type(peft_model.get_base_model()).__name__}.forward takes no KV cache argument "
                      "(neither `cache` nor `past_key_values`); it cannot be exported for cached generation")


def _returned_cache(output):
    return getattr(output, "cache", None) if getattr(output, "cache", None) is not None else output.past_key_values


def _layer_tensors(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) per layer of a transformers cache; refuse caches that hold anything else."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise ExportError(f"the model returned a {type(cache).__name__}, not a layered transformers Cache")
    tensors = []
    for index, layer in enumerate(layers):
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        if not (isinstance(keys, torch.Tensor) and isinstance(values, torch.Tensor) and keys.dim() == 4
                and keys.shape == values.shape):
            raise ExportError(
                f"cache layer {index} ({type(layer).__name__}) does not hold key/value tensors of one shape "
                "[batch, kv_heads, length, head_dim] (recurrent or linear-attention state?): this architecture "
                "cannot use the decoder-with-cache export"
            )
        tensors.append((keys, values))
    return tensors


def _probe_cache_layout(peft_model: torch.nn.Module) -> _CacheLayout:
    """Read layers, KV heads and head size off a real forward pass: configs name them in too many ways
    (num_key_value_heads, n_head, head_dim, multi_query, ...) to trust one of them."""
    tokens = torch.zeros((1, 2), dtype=torch.long)
    with torch.no_grad():
        output = peft_model(input_ids=tokens, attention_mask=torch.ones_like(tokens), use_cache=True)
    cache = _returned_cache(output)
    if cache is None:
        raise ExportError("the model returned no KV cache with use_cache=True; it cannot be exported for cached "
                          "generation")
    tensors = _layer_tensors(cache)
    if not tensors:
        raise ExportError("the model's KV cache has no layers")
    # Lengths may differ (sliding-window layers keep fewer positions); the geometry must not.
    geometry = {(keys.shape[1], keys.shape[3]) for keys, _ in tensors}
    if len(geometry) != 1:
        raise ExportError(f"cache layers differ in (kv_heads, head_dim): {sorted(geometry)}; per-layer cache "
                          "geometry is not supported by the decoder-with-cache export")
    heads, head_dim = geometry.pop()
    return _CacheLayout(num_layers=len(tensors), num_kv_heads=heads, head_dim=head_dim)


def _dynamic_cache(past: tuple[torch.Tensor, ...]) -> DynamicCache:
    # No config: every layer is a plain growing DynamicLayer, so "present" is always past + new. For
    # sliding-window models the window is still applied, by the attention mask, over the full cache.
    return DynamicCache(ddp_cache_data=[(past[i], past[i + 1]) for i in range(0, len(past), 2)])


class _DecoderWrapper(torch.nn.Module):
    """Flat tensors in and out; the attribute is ``model`` like export.py's wrapper, so names agree."""

    def __init__(self, model: torch.nn.Module, token_inputs: list[str], cache_keyword: str,
                 keep_last_logits: bool) -> None:
        super().__init__()
        self.model = model
        self.token_inputs = token_inputs
        self.cache_keyword = cache_keyword
        self.keep_last_logits = keep_last_logits

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        count = len(self.token_inputs)
        kwargs = dict(zip(self.token_inputs, inputs[:count], strict=True))
        kwargs[self.cache_keyword] = _dynamic_cache(inputs[count:])
        if self.keep_last_logits:
            kwargs["logits_to_keep"] = 1  # lm_head on the last position only, also in prefill
        output = self.model(**kwargs, use_cache=True)
        presents = [tensor for pair in _layer_tensors(_returned_cache(output)) for tensor in pair]
        return (output.logits[:, -1, :], *presents)


def _trace_inputs(peft_model: torch.nn.Module, token_inputs: list[str], layout: _CacheLayout) -> tuple:
    generator = torch.Generator().manual_seed(0)
    vocab = peft_model.get_base_model().get_input_embeddings().num_embeddings
    total = _TRACE_PAST + _TRACE_NEW
    mask = torch.ones((_TRACE_BATCH, total), dtype=torch.long)
    values = {
        "input_ids": torch.randint(0, vocab, (_TRACE_BATCH, _TRACE_NEW), generator=generator),
        "attention_mask": mask,
        "position_ids": torch.arange(_TRACE_PAST, total).repeat(_TRACE_BATCH, 1),
    }
    dtype = next(peft_model.parameters()).dtype
    shape = (_TRACE_BATCH, layout.num_kv_heads, _TRACE_PAST, layout.head_dim)
    past = [torch.randn(shape, generator=generator).to(dtype) for _ in range(2 * layout.num_layers)]
    return (*(values[name] for name in token_inputs), *past)


def _dynamic_axes(token_inputs: list[str], past_names: list[str], present_names: list[str]) -> dict:
    axes = {"input_ids": {0: "batch", 1: "new"}, "attention_mask": {0: "batch", 1: "total"},
            "position_ids": {0: "batch", 1: "new"}}
    axes = {name: axes[name] for name in token_inputs}
    axes[LOGITS] = {0: "batch"}
    axes.update({name: {0: "batch", 2: "past"} for name in past_names})
    axes.update({name: {0: "batch", 2: "total"} for name in present_names})
    return axes


def export_decoder_with_cache(peft_model: torch.nn.Module, path: Path, opset: int,
                              trainable: list[str]) -> DecoderGraph:
    """Export ``peft_model`` (a PEFT causal LM, eager attention, float32) as a decoder-with-cache graph at
    ``path``, with the ``trainable`` parameters as graph inputs."""
    path = Path(path)
    parameters = _forward_parameters(peft_model)
    token_inputs = [name for name in ("input_ids", "attention_mask", "position_ids") if name in parameters]
    if token_inputs[:2] != ["input_ids", "attention_mask"]:
        raise ExportError(f"{type(peft_model.get_base_model()).__name__}.forward lacks input_ids or attention_mask")
    keep_last = "logits_to_keep" in parameters
    if not keep_last:
        log.warning("the model has no logits_to_keep argument: prefill computes logits for every position")
    with model_mode(peft_model, False):
        layout = _probe_cache_layout(peft_model)
    past_names = _cache_names(layout.num_layers, "past")
    present_names = _cache_names(layout.num_layers, "present")
    wrapper = _DecoderWrapper(peft_model, token_inputs, _cache_keyword(peft_model), keep_last)
    args = _trace_inputs(peft_model, token_inputs, layout)
    # TRAINING mode like the training graph: EVAL mode merges equal initializers. Dropout nodes become
    # identities in the inference graph.
    model_proto = trace_to_onnx(wrapper, args, path, [*token_inputs, *past_names], [LOGITS, *present_names],
                                _dynamic_axes(token_inputs, past_names, present_names), opset,
                                "the decoder with cache")
    _finish_graph(model_proto, path, trainable)
    return DecoderGraph(path=path, num_layers=layout.num_layers, num_kv_heads=layout.num_kv_heads,
                        head_dim=layout.head_dim, past_names=past_names, present_names=present_names,
                        input_names=token_inputs, weight_names=list(trainable))


def _finish_graph(model_proto: onnx.ModelProto, path: Path, trainable: list[str]) -> None:
    """Check the trainable parameters are there, promote them to inputs, drop dead nodes, save."""
    present = {init.name for init in model_proto.graph.initializer}
    missing = [name for name in trainable if name not in present]
    if missing:
        raise ExportError("trainable parameters are missing from the decoder graph (renamed or folded by the "
                          "exporter): " + ", ".join(missing[:10]))
    inference_model(model_proto, trainable)
    prune_unused(model_proto.graph)
    onnx.save(model_proto, str(path))


# --- check against PyTorch ---------------------------------------------------------------------------


def _onnx_step(session, graph: DecoderGraph, tokens: dict[str, np.ndarray], past: list[np.ndarray],
               weights: dict[str, np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    feeds = {name: tokens[name] for name in graph.input_names}
    feeds.update(zip(graph.past_names, past, strict=True))
    feeds.update({name: np.asarray(weights[name], dtype=np.float32) for name in graph.weight_names})
    logits, *present = session.run([LOGITS, *graph.present_names], feeds)
    return logits, present


def _torch_step(peft_model: torch.nn.Module, graph: DecoderGraph, tokens: dict[str, np.ndarray], cache):
    kwargs = {name: torch.from_numpy(tokens[name]) for name in graph.input_names}
    if cache is not None:
        kwargs[_cache_keyword(peft_model)] = cache
    with torch.no_grad():
        output = peft_model(**kwargs, use_cache=True)
    cache = _returned_cache(output)
    present = [tensor.numpy() for pair in _layer_tensors(cache) for tensor in pair]
    return output.logits[:, -1, :].numpy(), present, cache


def check_decoder_against_torch(peft_model: torch.nn.Module, graph: DecoderGraph, input_ids: np.ndarray,
                                attention_mask: np.ndarray, weights: dict[str, np.ndarray],
                                decode_steps: int = 3) -> float:
    """Greedy prefill + ``decode_steps`` steps through the ONNX graph and through PyTorch with its own
    cache; return the largest logits difference, raise ExportError beyond atol 1e-4 / rtol 1e-3.

    Both follow PyTorch's greedy tokens, so a near-tie cannot send them down different paths. Where
    PyTorch's cache keeps fewer positions (a sliding window), the graph's cache, which keeps them all and
    applies the window in the attention mask, is compared on its most recent positions.
    """
    missing = [name for name in graph.weight_names if name not in weights]
    if missing:
        raise ExportError(f"weights for the check lack graph inputs: {', '.join(missing[:10])}")
    session = cpu_session(graph.path)
    mask = np.asarray(attention_mask, dtype=np.int64)
    tokens = {"input_ids": np.asarray(input_ids, dtype=np.int64), "attention_mask": mask,
              "position_ids": position_ids_from_mask(mask)}
    past = [np.zeros((mask.shape[0], graph.num_kv_heads, 0, graph.head_dim), np.float32)
            for _ in graph.past_names]
    worst, cache = 0.0, None
    with model_mode(peft_model, False), weights_loaded(peft_model, weights):
        for step in range(decode_steps + 1):
            what = "prefill" if step == 0 else f"decode step {step}"
            logits, present = _onnx_step(session, graph, tokens, past, weights)
            expected, expected_present, cache = _torch_step(peft_model, graph, tokens, cache)
            present_tails = [ours[:, :, ours.shape[2] - theirs.shape[2]:] if theirs.shape[2] < ours.shape[2] else ours
                             for ours, theirs in zip(present, expected_present, strict=True)]
            differences = compare_outputs(
                {LOGITS: expected, **dict(zip(graph.present_names, expected_present, strict=True))},
                {LOGITS: logits, **dict(zip(graph.present_names, present_tails, strict=True))},
                f"the decoder graph ({what})",
            )
            worst = max(worst, differences[LOGITS])
            tokens, past = _next_tokens(tokens, expected), present
    return worst


def _next_tokens(tokens: dict[str, np.ndarray], logits: np.ndarray) -> dict[str, np.ndarray]:
    chosen = np.argmax(logits, axis=-1).astype(np.int64)[:, None]
    mask = np.concatenate([tokens["attention_mask"], np.ones_like(chosen)], axis=1)
    return {"input_ids": chosen, "attention_mask": mask, "position_ids": tokens["position_ids"][:, -1:] + 1}
