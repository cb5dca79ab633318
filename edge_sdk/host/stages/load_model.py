"""Load the model and tokenizer for the task and apply the PEFT adapter (LoRA or DoRA)."""

from __future__ import annotations

import edge_sdk
from edge_sdk.bundle.frozen_lora import lora_a_digest
from edge_sdk.bundle.layout import FROZEN_LORA_A, TOKENIZER_FILE
from edge_sdk.host.build_inputs import portable_name
from edge_sdk.host.pipeline import BuildState, Fragment, Stage


def tokenizer_info(tokenizer) -> dict:
    """What the device tokenizer cannot read from tokenizer.json: padding, the special tokens a chat
    template names, and the template itself."""
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    return {
        "file": TOKENIZER_FILE,
        "pad_token_id": int(tokenizer.pad_token_id),
        "padding_side": tokenizer.padding_side,
        "bos_token": tokenizer.bos_token,
        "bos_token_id": tokenizer.bos_token_id,
        # Whether plain text starts with the begin-of-text token (Llama's tokenizers add it, SmolLM2's not).
        "adds_bos": tokenizer.bos_token_id is not None and tokenizer("x").input_ids[:1] == [tokenizer.bos_token_id],
        "eos_token": tokenizer.eos_token,
        "eos_token_id": tokenizer.eos_token_id,
        "chat_template": template,
    }


def _first(config, *names: str) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def model_dimensions(config) -> dict:
    """Width, depth, MLP width, heads and vocabulary of any transformers config (the names differ per family:
    BERT's hidden_size, GPT-2's n_embd, T5's d_model and d_ff, BART's encoder_ffn_dim; transformers maps
    some of them, the rest are listed here). The device's memory estimate reads them
    (edge_sdk/device/memory_budget.py); ``layers`` counts encoder and decoder blocks of seq2seq models."""
    config = getattr(config, "text_config", None) or config
    hidden = _first(config, "hidden_size", "d_model", "n_embd", "dim")
    heads = _first(config, "num_attention_heads", "encoder_attention_heads", "num_heads", "n_head")
    encoder = _first(config, "num_hidden_layers", "encoder_layers", "num_layers", "n_layer", "n_layers")
    decoder = _first(config, "decoder_layers", "num_decoder_layers") if config.is_encoder_decoder else None
    intermediate = _first(config, "intermediate_size", "d_ff", "encoder_ffn_dim", "ffn_dim", "n_inner",
                          "hidden_dim")
    return {
        "hidden_size": hidden,
        "layers": (encoder or 0) + (decoder or 0) or None,
        "intermediate_size": intermediate or (4 * hidden if hidden else None),  # GPT-2 leaves n_inner unset: 4x
        "attention_heads": heads,
        "vocab_size": _first(config, "vocab_size"),
    }


def _run(state: BuildState, _writer, _draft) -> Fragment:

    from edge_sdk.host.model_loading import load_for_task

    config = state.config
    state.loaded = loaded = load_for_task(config)
    head = loaded.model.get_output_embeddings()
    # The outputs' class axis: the user's labels, or the vocabulary of a language model.
    state.classes = len(config.labels) if state.spec.uses_labels else (
        int(head.weight.shape[0]) if head is not None else 0)
    state.initial = {name: p.detach().numpy().copy() for name, p in loaded.model.named_parameters()
                     if p.requires_grad}
    # The float values, taken before any stage quantizes the frozen base (an int8 profile may quantize A's
    # products too): they are what PEFT export re-adds and what devices compare.
    state.frozen_lora_a = {name: p.detach().numpy().astype("float32") for name, p in loaded.model.named_parameters()
                           if ".lora_A." in name} if config.lora.freeze_lora_a else {}
    frozen = {"freeze_lora_a": True, "frozen_lora_a": {"file": FROZEN_LORA_A,
                                                       "sha256": lora_a_digest(state.frozen_lora_a)}
              } if config.lora.freeze_lora_a else {}
    return {
        "bundle_id": config.resolved_bundle_id,
        "version": config.bundle_version,
        "task": config.task,
        "labels": list(config.labels),
        "max_length": config.max_length,
        "model": {
            "source": portable_name(config.source_description or str(config.model_dir)),
            "model_type": loaded.model_type,
            "architecture": type(loaded.model.get_base_model()).__name__,
            "parameters": int(sum(p.numel() for p in loaded.model.parameters())),
            "dimensions": model_dimensions(loaded.model.get_base_model().config),
        },
        "tokenizer": tokenizer_info(loaded.tokenizer),
        "peft": {
            "adapter": config.lora.adapter,
            "base": config.base,
            # Read by devices of SDK <= 0.x, which knew one method string; "dora" is the value they act on.
            "method": config.lora.adapter,
            "rank": config.lora.rank,
            "alpha": config.lora.alpha,
            "target_modules": loaded.target_modules,
            "modules_to_save": loaded.modules_to_save,
            "trainable_parameters": int(sum(v.size for v in state.initial.values())),
        } | frozen,
        "profile": state.profile.to_dict() | {"source": portable_name(state.profile.source)},
        "sdk_version": edge_sdk.__version__,
        "build": {"seed": config.seed, "opset": config.opset},
    }



STAGE = Stage("load-model", "loading the model and applying the PEFT adapter", _run)
