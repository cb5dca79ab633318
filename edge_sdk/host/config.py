"""Build settings: one dataclass that the CLI flags, recipe files and the Python API all produce.

Validation quotes the bad value and the allowed ones, so a typo in a recipe or a flag is fixed in one go.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edge_sdk.errors import ConfigError
from edge_sdk.tasks.registry import TASK_NAMES

PEFT_METHODS = ("lora", "dora", "qlora")
PRECISIONS = ("fp32", "int8")  # how the frozen linear layers compute (edge_sdk.host.int8_matmul)
MIN_OPSET, MAX_OPSET = 14, 15


@dataclass(frozen=True)
class LoraSettings:
    """PEFT LoRA settings; ``target_modules=None`` means the architecture's default.

    ``method`` "dora" is weight-decomposed LoRA (PEFT ``use_dora=True``): a trainable magnitude per output
    row of each adapted layer on top of the LoRA matrices.
    ``method`` "qlora" is LoRA over an int8 base: the frozen weights of the adapted layers are stored as int8
    with a scale per output channel (``edge_sdk.host.quantize``)."""

    method: str = "lora"
    rank: int = 8
    alpha: float = 16.0
    target_modules: tuple[str, ...] | None = None

    def validate(self) -> None:
        if self.method not in PEFT_METHODS:
            raise ConfigError(f"unknown PEFT method {self.method!r}; choose one of {', '.join(PEFT_METHODS)}")
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ConfigError(f"LoRA rank must be a positive integer, got {self.rank!r}")
        if not isinstance(self.alpha, (int, float)) or self.alpha <= 0:
            raise ConfigError(f"LoRA alpha must be a positive number, got {self.alpha!r}")
        if self.target_modules is not None and not self.target_modules:
            raise ConfigError("target modules is an empty list; name at least one module or omit the setting")


@dataclass(frozen=True)
class BuildConfig:
    """Everything `edge-sdk build` needs to turn a model into a bundle."""

    model_dir: Path
    task: str
    labels: tuple[str, ...]
    max_length: int = 128
    max_batch_size: int | None = None  # largest training batch the device may use (bounds its memory)
    lora: LoraSettings = field(default_factory=LoraSettings)
    profile: str = "cpu"
    seed: int = 0
    opset: int = 14
    source_description: str = ""
    gguf_file: str | None = None  # the model is this GGUF file in model_dir (dequantized when loaded)
    adapter_from: Path | None = None  # a PEFT adapter folder whose weights become the initial adapter
    precision: str = "fp32"  # "int8": frozen linear layers in int8 in the inference graphs and the portable step

    def validate(self) -> None:
        if self.task not in TASK_NAMES:
            raise ConfigError(f"unknown task {self.task!r}; choose one of {', '.join(TASK_NAMES)}")
        from edge_sdk.host.tasks import host_task

        if not host_task(self.task).uses_labels:
            if self.labels:
                raise ConfigError(f"task {self.task} takes no labels (got {', '.join(self.labels)}); drop --labels")
        elif len(self.labels) < 2:
            raise ConfigError(
                f"task {self.task} needs at least two labels, got {list(self.labels)!r}; "
                "pass --labels a,b,... or a label file"
            )
        if self.task == "token-cls":
            not_bio = [label for label in self.labels if label != "O" and label[:2] not in ("B-", "I-")]
            if not_bio:
                raise ConfigError(
                    f"token-cls labels must be BIO tags ('O', 'B-TYPE', 'I-TYPE'); not BIO: {', '.join(not_bio)}"
                )
        duplicates = sorted({label for label in self.labels if self.labels.count(label) > 1})
        if duplicates:
            raise ConfigError(f"labels must be unique; repeated: {', '.join(duplicates)}")
        if not isinstance(self.max_length, int) or not 8 <= self.max_length <= 8192:
            raise ConfigError(f"max sequence length must be an integer in 8..8192, got {self.max_length!r}")
        if self.max_batch_size is not None and (not isinstance(self.max_batch_size, int) or self.max_batch_size < 1):
            raise ConfigError(f"max_batch_size must be a positive integer, got {self.max_batch_size!r}")
        if self.opset not in range(MIN_OPSET, MAX_OPSET + 1):
            raise ConfigError(
                f"opset {self.opset!r} is not supported for training export; use {MIN_OPSET} or {MAX_OPSET} "
                "(opset 17 LayerNormalization has no gradient in ONNX Runtime training)"
            )
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        self.lora.validate()

    def with_overrides(self, **changes: Any) -> BuildConfig:
        """A copy with the given non-None fields replaced (CLI flags override recipe values)."""
        lora_changes = {key: changes.pop(key) for key in ("rank", "alpha", "target_modules", "method")
                        if key in changes}
        lora = replace(self.lora, **{k: v for k, v in lora_changes.items() if v is not None})
        return replace(self, lora=lora, **{k: v for k, v in changes.items() if v is not None})


_RECIPE_KEYS = {"model", "task", "labels", "max_length", "max_batch_size", "peft", "profile", "seed", "opset",
                "description", "precision"}
_PEFT_KEYS = {"method", "rank", "alpha", "target_modules"}


def load_recipe(path: str | os.PathLike) -> BuildConfig:
    """Read a recipe TOML file (see ``models/``) into a BuildConfig, resolving its model source."""
    from edge_sdk.host.model_source import resolve_model_source

    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"recipe {str(path)!r} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"recipe {str(path)!r} is not valid TOML: {exc}") from exc
    unknown = sorted(set(data) - _RECIPE_KEYS)
    if unknown:
        raise ConfigError(
            f"recipe {str(path)!r}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_RECIPE_KEYS))}"
        )
    for required in ("model", "task"):
        if required not in data:
            raise ConfigError(f"recipe {str(path)!r} has no {required!r} key")
    peft = data.get("peft", {})
    unknown_peft = sorted(set(peft) - _PEFT_KEYS)
    if unknown_peft:
        raise ConfigError(
            f"recipe {str(path)!r}: unknown [peft] key(s) {', '.join(unknown_peft)}; "
            f"allowed: {', '.join(sorted(_PEFT_KEYS))}"
        )
    targets = peft.get("target_modules")
    lora = LoraSettings(
        method=peft.get("method", "lora"),
        rank=peft.get("rank", 8),
        alpha=peft.get("alpha", 16.0),
        target_modules=tuple(targets) if targets is not None else None,
    )
    model_dir, description, gguf_file = resolve_model_source(data["model"], recipe_dir=path.parent, recipe=path)
    return BuildConfig(
        model_dir=model_dir,
        task=data["task"],
        labels=tuple(str(label) for label in data.get("labels", ())),
        max_length=data.get("max_length", 128),
        max_batch_size=data.get("max_batch_size"),
        lora=lora,
        profile=data.get("profile", "cpu"),
        seed=data.get("seed", 0),
        opset=data.get("opset", 14),
        precision=data.get("precision", "fp32"),
        source_description=description,
        gguf_file=gguf_file,
    )
