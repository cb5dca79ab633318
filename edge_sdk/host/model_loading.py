"""Load a Hugging Face model for a task and wrap it with PEFT LoRA, ready for a training export."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from edge_sdk.errors import ConfigError, ModelSourceError, TargetModuleError
from edge_sdk.host.config import BuildConfig
from edge_sdk.host.dora import prepare_dora_layers
from edge_sdk.tasks.registry import task_spec

log = logging.getLogger(__name__)

# Attention projection names of common architectures that PEFT's default table does not list.
_FALLBACK_TARGETS = (("query", "value"), ("q_proj", "v_proj"), ("q_lin", "v_lin"), ("q", "v"), ("c_attn",),
                     ("query_key_value",), ("Wqkv",))


@dataclass
class LoadedModel:
    model: PeftModel
    tokenizer: PreTrainedTokenizerBase
    model_type: str
    target_modules: list[str]
    modules_to_save: list[str]


def _zero_dropout_config(config) -> None:
    # Dropout in a training-mode export would make the ONNX graph random and unverifiable; the device
    # trains tiny adapters on little data, where dropout buys little.
    for key, value in config.to_dict().items():
        if ("dropout" in key or key.endswith(("_pdrop", "layerdrop"))) and isinstance(value, float):
            setattr(config, key, 0.0)


def _zero_dropout_modules(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """Short names (last path component) of every Linear layer, the names LoRA targets match."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear) and name})


def default_target_modules(model_type: str, model: torch.nn.Module) -> list[str]:
    known = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
    if known:
        return list(known)
    present = set(linear_module_names(model))
    for candidate in _FALLBACK_TARGETS:
        if set(candidate) <= present:
            return list(candidate)
    raise TargetModuleError(
        f"no default LoRA target modules for model type {model_type!r}; pass --target-modules with some of "
        f"its linear layers: {', '.join(sorted(present))}"
    )


def _check_targets(targets: list[str], model: torch.nn.Module) -> None:
    present = set(linear_module_names(model))
    all_names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name}
    missing = [t for t in targets if t not in all_names]
    if missing:
        raise TargetModuleError(
            f"target module(s) {', '.join(missing)} do not exist in this model; linear layers that LoRA can "
            f"target: {', '.join(sorted(present))}"
        )
    not_linear = [t for t in targets if t not in present]
    if not_linear:
        raise TargetModuleError(
            f"target module(s) {', '.join(not_linear)} are not linear layers; choose from: {', '.join(sorted(present))}"
        )


def _new_modules(missing_keys: list[str], model: torch.nn.Module) -> list[str]:
    """Top-level submodules whose weights the checkpoint did not provide (a new head, a new pooler).

    Those start random, so they must train with the adapter or they would feed noise to the classifier.
    """
    module_names = {name for name, _ in model.named_modules() if name}
    found = set()
    for key in missing_keys:
        parts = key.split(".")[:-1]
        # The shortest missing module path that is not the whole base model identifies what is new.
        for depth in range(1, len(parts) + 1):
            prefix = ".".join(parts[:depth])
            if prefix in module_names and prefix != model.base_model_prefix:
                found.add(prefix)
                break
    return sorted(found)


def load_for_task(config: BuildConfig,
                  before_peft: Callable[[torch.nn.Module, list[str]], None] | None = None) -> LoadedModel:
    """Load tokenizer and model from ``config.model_dir`` and apply LoRA per ``config.lora``.

    ``before_peft(model, modules_to_save)``, when given, runs on the loaded model (dropout already zeroed) just
    before PEFT wraps it, e.g. to quantize the frozen base (edge_sdk.finetune.quantized_base) so that PEFT picks
    its LoRA layers for the quantized ones; ``modules_to_save`` are the newly initialised modules that will train
    whole and so must stay float.
    """
    # transformers reports new heads and loading progress on stdout/stderr; the build reports what
    # matters (which modules train) itself.
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    model_dir = Path(config.model_dir)
    gguf = {"gguf_file": config.gguf_file} if config.gguf_file else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, **gguf)
    except Exception as exc:  # transformers raises many types for an unusable tokenizer folder
        raise ModelSourceError(f"cannot load a tokenizer from {str(model_dir)!r}: {exc}") from exc
    if not tokenizer.is_fast:
        raise ModelSourceError(
            f"the tokenizer in {str(model_dir)!r} has no fast (tokenizer.json) version; the device runtime needs "
            "tokenizer.json — convert it with transformers' AutoTokenizer(use_fast=True).save_pretrained"
        )
    try:
        hf_config = AutoConfig.from_pretrained(model_dir, **gguf)
    except Exception as exc:
        raise ModelSourceError(f"cannot read the model config in {str(model_dir)!r}: {exc}") from exc
    spec = task_spec(config.task)
    _zero_dropout_config(hf_config)
    for key, value in spec.host.model_config:
        setattr(hf_config, key, value)
    if spec.uses_labels:
        labels = list(config.labels)
        hf_config.num_labels = len(labels)
        hf_config.id2label = dict(enumerate(labels))
        hf_config.label2id = {label: i for i, label in enumerate(labels)}
    if tokenizer.pad_token_id is None and spec.host.pad_with_eos and tokenizer.eos_token is not None:
        # Padding positions carry no loss and are masked, so the end-of-text token can stand in for padding.
        tokenizer.pad_token = tokenizer.eos_token
    if hf_config.pad_token_id is None and tokenizer.pad_token_id is not None:
        hf_config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(config.seed)
    # GGUF dequantization draws its own tqdm bar on stderr, which transformers' switch above does not reach.
    quiet = contextlib.redirect_stderr(io.StringIO()) if gguf else contextlib.nullcontext()
    try:
        with quiet:
            model, info = getattr(transformers, spec.host.auto_model).from_pretrained(
                model_dir, config=hf_config, attn_implementation="eager", ignore_mismatched_sizes=True,
                output_loading_info=True, dtype=torch.float32, **gguf,
            )
    except ValueError as exc:
        raise ConfigError(
            f"model type {hf_config.model_type!r} has no {config.task} head in transformers: {exc}"
        ) from exc
    except Exception as exc:
        raise ModelSourceError(f"cannot load the model weights in {str(model_dir)!r}: {exc}") from exc
    _zero_dropout_modules(model)
    if tokenizer.pad_token_id is None:
        raise ModelSourceError(
            f"the tokenizer in {str(model_dir)!r} has no padding token; set one (e.g. tokenizer.pad_token = "
            "tokenizer.eos_token) and save it again"
        )

    targets = list(config.lora.target_modules) if config.lora.target_modules else default_target_modules(
        hf_config.model_type, model)
    _check_targets(targets, model)
    new_modules = _new_modules(list(info.get("missing_keys", [])) + [k for k, *_ in info.get("mismatched_keys", [])],
                               model)
    log.info("LoRA targets %s; newly initialised modules that train too: %s", targets, new_modules)
    if before_peft is not None:
        before_peft(model, new_modules)
    lora_config = LoraConfig(
        task_type=TaskType[spec.peft_task_type], r=config.lora.rank, lora_alpha=config.lora.alpha, lora_dropout=0.0,
        target_modules=targets, modules_to_save=new_modules or None, use_dora=config.lora.adapter == "dora",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecations inside PEFT/transformers internals
        peft_model = get_peft_model(model, lora_config)
    if lora_config.use_dora:
        prepare_dora_layers(peft_model)
    if config.adapter_from is not None:
        from edge_sdk.host.adapter_import import load_adapter_weights

        load_adapter_weights(peft_model, config.adapter_from)
    if config.lora.freeze_lora_a:
        # FFA-LoRA: A stays at its initial value on every device, so the export, the training graphs and the
        # inference graph bake it in as a frozen weight and the adapter is B plus the head (averaged exactly).
        for name, parameter in peft_model.named_parameters():
            if ".lora_A." in name:
                parameter.requires_grad_(False)
    # PEFT adds the task's head names ("classifier", "score") itself; record the ones this model has.
    trained_modules = sorted({name.split(".modules_to_save.")[0].removeprefix("base_model.model.")
                              for name, p in peft_model.named_parameters()
                              if p.requires_grad and ".modules_to_save." in name})
    return LoadedModel(model=peft_model, tokenizer=tokenizer, model_type=hf_config.model_type,
                       target_modules=targets, modules_to_save=trained_modules)
