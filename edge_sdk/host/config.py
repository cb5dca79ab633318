"""Build settings: one dataclass that the CLI flags, recipe files and the Python API all produce.

Validation quotes the bad value and the allowed ones, so a typo in a recipe or a flag is fixed in one go.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edge_sdk.bundle.manifest import check_bundle_id, check_bundle_version, default_bundle_id
from edge_sdk.errors import ConfigError
from edge_sdk.profiles import Profile, is_profile_path, load_profile
from edge_sdk.tasks.registry import task_spec

# Two independent axes. How the adapter is parametrised:
ADAPTERS = ("lora", "dora")
# How the frozen base is stored and computes: float32; int8 weights dequantized to float32 products (the
# QLoRA idea, edge_sdk.host.quantize); int8 weights in integer products (edge_sdk.host.int8_matmul).
BASES = ("float32", "int8-storage", "int8-compute")
# The older single method string and the precision flag, still accepted: each names one axis or both.
LEGACY_METHODS = {"lora": ("lora", None), "dora": ("dora", None), "qlora": ("lora", "int8-storage")}
LEGACY_PRECISIONS = {"fp32": "float32", "int8": "int8-compute"}
MIN_OPSET, MAX_OPSET = 14, 15


def resolve_axes(adapter: str | None = None, base: str | None = None, method: str | None = None,
                 precision: str | None = None) -> tuple[str | None, str | None]:
    """(adapter, base) from the new names and the legacy ``method``/``precision`` aliases (None: not named).

    Names that contradict each other are refused rather than one silently winning: ``qlora`` (int8 storage,
    float compute) with ``precision int8`` (int8 compute) used to build float layers where int8 was asked for.
    """
    if method is not None and method not in LEGACY_METHODS:
        raise ConfigError(f"unknown PEFT method {method!r}; choose one of {', '.join(LEGACY_METHODS)} "
                          f"(or --adapter {'|'.join(ADAPTERS)} with --base {'|'.join(BASES)})")
    if precision is not None and precision not in LEGACY_PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {', '.join(LEGACY_PRECISIONS)} "
                          f"(or --base {'|'.join(BASES)})")
    method_adapter, method_base = LEGACY_METHODS[method] if method else (None, None)
    if adapter is not None and method_adapter is not None and adapter != method_adapter:
        raise ConfigError(f"the adapter is named twice: adapter {adapter!r} and method {method!r}; drop the method")
    precision_base = LEGACY_PRECISIONS[precision] if precision else None
    if method_base == "int8-storage" and precision_base == "float32":
        precision_base = None  # qlora computes in float32: "fp32" agrees with it
    named = [(source, value) for source, value in (("base", base), ("method", method_base),
                                                   ("precision", precision_base)) if value is not None]
    if len({value for _, value in named}) > 1:
        raise ConfigError(
            "the frozen base is named more than once, differently: "
            + ", ".join(f"{source} -> {value}" for source, value in named)
            + f" (qlora = int8 storage with float compute; precision int8 = int8 compute); choose one with "
            f"--base {'|'.join(BASES)}")
    return adapter or method_adapter, named[0][1] if named else None


@dataclass(frozen=True)
class LoraSettings:
    """PEFT LoRA settings; ``target_modules=None`` means the architecture's default.

    ``adapter`` "dora" is weight-decomposed LoRA (PEFT ``use_dora=True``): a trainable magnitude per output
    row of each adapted layer on top of the LoRA matrices. How the frozen base is stored is
    ``BuildConfig.base``, a separate axis.

    ``freeze_lora_a`` keeps every LoRA A matrix at its initial value (FFA-LoRA): the adapter is then LoRA B and
    the trained head, so averaging adapters of many devices averages their weight updates exactly."""

    adapter: str = "lora"
    rank: int = 8
    alpha: float = 16.0
    target_modules: tuple[str, ...] | None = None
    freeze_lora_a: bool = False

    def validate(self) -> None:
        if self.adapter not in ADAPTERS:
            raise ConfigError(f"unknown adapter {self.adapter!r}; choose one of {', '.join(ADAPTERS)}")
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ConfigError(f"LoRA rank must be a positive integer, got {self.rank!r}")
        if not isinstance(self.alpha, (int, float)) or self.alpha <= 0:
            raise ConfigError(f"LoRA alpha must be a positive number, got {self.alpha!r}")
        if self.target_modules is not None and not self.target_modules:
            raise ConfigError("target modules is an empty list; name at least one module or omit the setting")
        if not isinstance(self.freeze_lora_a, bool):
            raise ConfigError(f"freeze_lora_a must be true or false, got {self.freeze_lora_a!r}")
        if self.freeze_lora_a and self.adapter == "dora":
            raise ConfigError("--freeze-lora-a (recipe key peft.freeze_lora_a) cannot be combined with --adapter dora: "
                              "DoRA's update is not linear in LoRA B (each row is rescaled to a trained magnitude), "
                              "so averaging B across devices is not exact; use --adapter lora")


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
    # One of BASES: how the frozen base is stored and computes; None: what the profile's precision implies
    # (int8-compute for an int8-dynamic profile such as cpu-int8, else float32). See ``for_profile``.
    base: str | None = None
    # Rollback protection on devices compares versions of one bundle id (None: from the source and task).
    bundle_id: str | None = None
    bundle_version: int = 1
    # Task data (JSONL/CSV) that calibrates the static int8 target graph of an int8-qdq profile (fpga-vitisai).
    calibration_data: Path | None = None
    recipe: Path | None = None  # the recipe file this config came from: a build input (hashed, in the depfile)

    @property
    def resolved_bundle_id(self) -> str:
        """The bundle id the manifest gets: the one set, else the model source's name and the task."""
        return self.bundle_id or default_bundle_id(self.source_description or self.model_dir.name, self.task)

    def validate(self) -> None:
        task_spec(self.task).validate_labels(self.labels)
        if self.bundle_id is not None:
            check_bundle_id(self.bundle_id, "--bundle-id (recipe key bundle_id)", ConfigError)
        check_bundle_version(self.bundle_version, "--bundle-version (recipe key bundle_version)", ConfigError)
        if not isinstance(self.max_length, int) or not 8 <= self.max_length <= 8192:
            raise ConfigError(f"max sequence length must be an integer in 8..8192, got {self.max_length!r}")
        if self.max_batch_size is not None and (not isinstance(self.max_batch_size, int) or self.max_batch_size < 1):
            raise ConfigError(f"max_batch_size must be a positive integer, got {self.max_batch_size!r}")
        if self.opset not in range(MIN_OPSET, MAX_OPSET + 1):
            raise ConfigError(
                f"opset {self.opset!r} is not supported for training export; use {MIN_OPSET} or {MAX_OPSET} "
                "(opset 17 LayerNormalization has no gradient in ONNX Runtime training)"
            )
        if self.base is not None and self.base not in BASES:
            raise ConfigError(f"unknown base {self.base!r}; choose one of {', '.join(BASES)}")
        self.lora.validate()
        self._validate_target(self.for_profile()[1])

    def for_profile(self) -> tuple[BuildConfig, Profile]:
        """The profile this build targets, and this config with the base the profile implies filled in.

        A base that contradicts the profile is refused rather than one silently winning: an int8-dynamic
        profile (cpu-int8) computes in int8, so a float32 base would ship a graph the profile misdescribes;
        a static-int8 target graph (fpga-vitisai) is quantized from the float32 weights, which int8-compute
        no longer keeps. A float32 CPU profile still takes an explicit ``--base int8-compute`` (the older way
        to ask for cpu-int8; the manifest's inference section records the precision either way)."""
        profile = load_profile(self.profile)
        implied = "int8-compute" if profile.precision == "int8-dynamic" else "float32"
        base = self.base or implied
        if profile.precision == "int8-dynamic" and base != "int8-compute":
            raise ConfigError(f"profile {profile.name!r} computes in int8 (precision int8-dynamic), but the base is "
                              f"{base!r}; drop --base (the profile implies int8-compute) or choose a float32 profile "
                              "such as --profile cpu")
        if profile.has_target_graph and base == "int8-compute":
            raise ConfigError(f"profile {profile.name!r} quantizes a static int8 target graph from the float32 "
                              "weights, which --base int8-compute does not keep; use --base float32 or int8-storage")
        if profile.max_sequence_length is not None and self.max_length > profile.max_sequence_length:
            raise ConfigError(f"max sequence length {self.max_length} exceeds profile {profile.name!r}'s limit "
                              f"limits.max_sequence_length = {profile.max_sequence_length}; lower --max-length")
        return replace(self, base=base), profile

    def _validate_target(self, profile: Profile) -> None:
        """A profile with a target graph (precision int8-qdq) needs a static-shaped task, float weights to quantize
        and calibration data: all checked here, before any work."""
        from edge_sdk.targets.static import check_static_task, static_length

        if not profile.has_target_graph:
            return
        check_static_task(self.task, profile)
        static_length(profile, self.max_length)
        if self.calibration_data is None:
            raise ConfigError(f"profile {profile.name!r} builds a static int8 target graph calibrated on task data: "
                              "pass --calibration-data FILE (JSONL or CSV, like training data; recipe key "
                              "calibration_data)")
        if not Path(self.calibration_data).is_file():
            raise ConfigError(f"calibration data {str(self.calibration_data)!r} does not exist (--calibration-data, "
                              "recipe key calibration_data: relative to the recipe file)")

    def with_overrides(self, **changes: Any) -> BuildConfig:
        """A copy with the given non-None fields replaced (CLI flags override recipe values); ``method`` and
        ``precision`` are the legacy aliases of ``adapter`` and ``base``."""
        adapter, base = resolve_axes(changes.pop("adapter", None), changes.pop("base", None),
                                     changes.pop("method", None), changes.pop("precision", None))
        changes |= {"adapter": adapter, "base": base}
        lora_changes = {key: changes.pop(key) for key in ("rank", "alpha", "target_modules", "adapter",
                                                              "freeze_lora_a")
                        if key in changes}
        lora = replace(self.lora, **{k: v for k, v in lora_changes.items() if v is not None})
        return replace(self, lora=lora, **{k: v for k, v in changes.items() if v is not None})


_RECIPE_KEYS = {"model", "task", "labels", "max_length", "max_batch_size", "peft", "profile", "seed", "opset",
                "description", "base", "precision", "bundle_id", "bundle_version", "calibration_data"}
_PEFT_KEYS = {"adapter", "method", "rank", "alpha", "target_modules", "freeze_lora_a"}


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
    try:
        adapter, base = resolve_axes(peft.get("adapter"), data.get("base"), peft.get("method"), data.get("precision"))
    except ConfigError as exc:
        raise ConfigError(f"recipe {str(path)!r}: {exc}") from None
    lora = LoraSettings(
        adapter=adapter or "lora",
        rank=peft.get("rank", 8),
        alpha=peft.get("alpha", 16.0),
        target_modules=tuple(targets) if targets is not None else None,
        freeze_lora_a=peft.get("freeze_lora_a", False),
    )
    model_dir, description, gguf_file = resolve_model_source(data["model"], recipe_dir=path.parent, recipe=path)
    return BuildConfig(
        model_dir=model_dir,
        task=data["task"],
        labels=tuple(str(label) for label in data.get("labels", ())),
        max_length=data.get("max_length", 128),
        max_batch_size=data.get("max_batch_size"),
        lora=lora,
        profile=_recipe_profile(data.get("profile", "cpu"), path),
        seed=data.get("seed", 0),
        opset=data.get("opset", 14),
        base=base,
        source_description=description,
        gguf_file=gguf_file,
        # A recipe names one bundle: by default its id is the recipe's file name and task.
        bundle_id=data.get("bundle_id", default_bundle_id(path.name, str(data["task"]))),
        bundle_version=data.get("bundle_version", 1),
        calibration_data=(path.parent / str(data["calibration_data"])) if "calibration_data" in data else None,
        recipe=path.resolve(),
    )


def _recipe_profile(value: object, recipe: Path) -> str:
    """A recipe's ``profile``: a built-in name, or a profile file's path relative to the recipe."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"recipe {str(recipe)!r}: profile = {value!r} is not a profile name or a .toml path")
    if is_profile_path(value) and not Path(value).is_absolute():
        return str(recipe.parent / value)
    return value
