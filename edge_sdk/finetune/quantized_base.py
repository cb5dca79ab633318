"""QLoRA on the host: a frozen base whose Linear layers are stored 8-bit or 4-bit (NF4) by bitsandbytes.

``quantize_frozen_base`` swaps every ``nn.Linear`` of a loaded transformers model (except the head, see below)
for bitsandbytes' ``Linear8bitLt`` (int8, a float32 scale per output row) or ``Linear4bit`` (NF4, an absmax per
64 weights, double-quantized) and marks the model ``is_loaded_in_8bit`` / ``is_loaded_in_4bit``, which is what
PEFT reads to wrap those layers with its bitsandbytes LoRA/DoRA layers (``peft.tuners.lora.bnb``). The adapter
then trains in float32 while the base stays quantized, and its state dict has the same keys as over a float base:
the saved adapter is a normal PEFT adapter that loads on the float model.

Why bitsandbytes: PEFT has LoRA layers for it in both modes, and its CPU backend (0.50) runs int8 and NF4
quantize, dequantize and matmul on CPU. transformers' ``BitsAndBytesConfig`` loading route refuses CPU, so the
layers are built here from the loaded float weights. The CPU library picks AVX-512 kernels at run time (cpuid)
and falls back to AVX2/scalar code, and int8 matmul uses ``torch._int_mm`` only where torch reports AVX-512.

What is not quantized: modules named in ``skip`` (matched as a dotted sub-path, so ``classifier`` covers
``classifier.dense`` too), by default the task heads, which train whole (``modules_to_save``) or are tied to
the embeddings (``lm_head``); and any Linear whose weight is shared with another module (tied weights), since
quantizing one side would untie them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from edge_sdk.errors import ConfigError, DependencyError

MODES = ("int8", "4bit")
# Task heads of transformers' AutoModelFor* classes (PEFT's modules_to_save for them) and the LM head.
DEFAULT_SKIP = ("classifier", "score", "qa_outputs", "lm_head")
_INSTALL = 'pip install "edge-sdk[quantized]"'


@dataclass(frozen=True)
class QuantizedBaseReport:
    library: str
    version: str
    mode: str
    layers: tuple[str, ...]  # full module names that were quantized
    skipped: tuple[str, ...]  # Linear layers left in float (head, tied, modules_to_save)
    base_bytes_before: int  # all parameters and buffers of the model, quantization state included
    base_bytes_after: int
    layer_bytes_before: int  # the quantized layers' weights only
    layer_bytes_after: int


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ConfigError(f"unknown quantized base mode {mode!r}; choose one of: {', '.join(MODES)}")


def _import_bnb():
    try:
        import bitsandbytes as bnb  # its CPU backend's start-up warning is silenced in edge_sdk/__init__.py
    except ImportError as exc:
        raise DependencyError(f"a quantized base (--base int8|4bit) needs bitsandbytes: {_INSTALL} ({exc})") from exc
    return bnb


@functools.cache
def _int8_linear_class(bnb) -> type:
    """``bnb.nn.Linear8bitLt`` that keeps its row scales when its weight is re-wrapped.

    PEFT's DoRA dequantizes the base weight on every forward pass and, on CPU, re-assigns ``weight.to("cpu")``: a
    new ``Int8Params`` without ``SCB`` (the first forward moved the scales to ``layer.state``). The next forward's
    ``init_8bit_state`` then copies that ``None`` over the scales and the matmul fails ("'NoneType' object has no
    attribute 'unsqueeze'", bitsandbytes 0.50.2 + peft 0.21.2). Keeping the known scales fixes that; it stays a
    Linear8bitLt subclass, so PEFT still wraps it with its bitsandbytes LoRA layer.
    """

    class Int8Linear(bnb.nn.Linear8bitLt):
        def init_8bit_state(self) -> None:
            scales = self.state.SCB
            super().init_8bit_state()
            if self.state.SCB is None:
                self.state.SCB = scales

    return Int8Linear


def _quantized_linear(bnb, linear: torch.nn.Linear, mode: str) -> torch.nn.Linear:
    """A bitsandbytes layer holding ``linear``'s weight quantized on the CPU; the bias stays float and frozen."""
    # The new layer's constructor draws a random initial weight (nn.Linear's); a private RNG stream keeps the
    # caller's seeded stream where it was, so LoRA's initial weights are the same as over a float base.
    with torch.random.fork_rng(devices=[]):
        return _build_quantized_linear(bnb, linear, mode)


def _build_quantized_linear(bnb, linear: torch.nn.Linear, mode: str) -> torch.nn.Linear:
    weight = linear.weight.detach().to(torch.float32).clone()
    has_bias = linear.bias is not None
    if mode == "int8":
        # has_fp16_weights=False keeps only the int8 weight (and its row scales); threshold=0 turns off the
        # mixed-precision outlier path, which would keep float columns next to the int8 ones.
        layer = _int8_linear_class(bnb)(linear.in_features, linear.out_features, bias=has_bias,
                                        has_fp16_weights=False, threshold=0.0)
        layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    else:
        layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=has_bias,
                                  compute_dtype=torch.float32, quant_type="nf4")
        layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4")
        # On CPUs with AVX-512 BF16, an eval-mode forward without grad would repack the weight in place into a
        # bf16-kernel layout; a later training forward then fails ("a view of a leaf Variable that requires grad
        # is being used in an in-place operation") and the frozen weight is no longer the one quantized. Off,
        # every machine takes the same dequantize + float matmul path.
        layer.support_avx512bf16_for_cpu = False
    if has_bias:
        layer.bias = torch.nn.Parameter(linear.bias.detach().to(torch.float32).clone(), requires_grad=False)
    # Quantization happens when the parameter is moved to a device; the CPU backend does it on "cpu".
    return layer.to("cpu")


def quantization_tensors(module: torch.nn.Module) -> list[torch.Tensor]:
    """The tensors a bitsandbytes layer keeps outside its parameters: int8 row scales (on the weight until the
    first forward pass, then on ``module.state``), NF4 absmax values and lookup tables (nested when
    double-quantized)."""
    tensors = []
    weight = getattr(module, "weight", None)
    for holder in (weight, getattr(module, "state", None)):
        pair = (getattr(holder, "CB", None), getattr(holder, "SCB", None))
        tensors += [t for t in pair if isinstance(t, torch.Tensor)]
    state = getattr(weight, "quant_state", None)
    while state is not None:
        tensors += [t for t in (getattr(state, "absmax", None), getattr(state, "code", None))
                    if isinstance(t, torch.Tensor)]
        state = getattr(state, "state2", None)
    return tensors


def tensor_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers, bitsandbytes' scales and absmax values included; tensors
    that share storage (tied weights, the int8 weight and its ``CB`` alias) count once."""
    seen: set[int] = set()
    total = 0
    tensors = [*module.parameters(), *module.buffers()]
    for sub in module.modules():
        tensors += quantization_tensors(sub)
    for t in tensors:
        if t.numel() and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def _matches(name: str, skip: Sequence[str]) -> bool:
    return any(f".{s}." in f".{name}." for s in skip)


def _tied_linears(model: torch.nn.Module) -> set[str]:
    owners: dict[int, list[str]] = {}
    for name, module in model.named_modules():
        for pname, param in module.named_parameters(recurse=False):
            owners.setdefault(id(param), []).append(f"{name}.{pname}")
    shared = {n.rsplit(".", 1)[0] for names in owners.values() if len(names) > 1 for n in names}
    return {name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and name in shared}


@functools.cache
def check_quantized_base_supported(mode: str) -> str:
    """Raise unless ``mode`` works on this machine; returns bitsandbytes' version. Cheap enough for the CLI to call
    before loading a model: it quantizes one small layer and runs it forward and backward."""
    _check_mode(mode)
    bnb = _import_bnb()
    try:
        import peft.tuners.lora.bnb  # noqa: F401 - PEFT's LoRA layers for bitsandbytes must import too

        with torch.random.fork_rng(devices=[]):  # the caller's seeded stream must not move
            torch.manual_seed(0)
            linear = torch.nn.Linear(64, 64)
            x = torch.randn(3, 64, requires_grad=True)
        layer = _quantized_linear(bnb, linear, mode)
        out = layer(x)
        out.sum().backward()
        error = (out - linear(x)).abs().max().item()
    except Exception as exc:  # bitsandbytes reports a missing kernel as RuntimeError/NotImplementedError/…
        raise ConfigError(
            f"bitsandbytes {bnb.__version__} cannot run a {mode} base on this machine (CPU: "
            f"{torch.backends.cpu.get_cpu_capability()}): {type(exc).__name__}: {exc}; train with a float base "
            f"instead{' or try --base int8' if mode == '4bit' else ''}"
        ) from exc
    if not error < 0.5:  # a broken kernel (wrong results, not an error) must not train silently
        raise ConfigError(f"bitsandbytes {bnb.__version__} gives wrong {mode} results on this machine "
                          f"(max error {error:.3g} on a test layer); train with a float base instead")
    return bnb.__version__


def quantize_frozen_base(model: torch.nn.Module, mode: str, skip: Sequence[str] = DEFAULT_SKIP) -> QuantizedBaseReport:
    """Replace ``model``'s Linear layers (not those matching ``skip``, nor tied ones) by frozen bitsandbytes int8 or
    NF4 layers, in place, before PEFT wraps the model. Call on a float32 CPU model."""
    version = check_quantized_base_supported(mode)
    bnb = _import_bnb()
    before = tensor_bytes(model)
    tied = _tied_linears(model)
    done: list[str] = []
    skipped: list[str] = []
    layer_before = layer_after = 0
    for name, module in list(model.named_modules()):
        if not isinstance(module, torch.nn.Linear) or isinstance(module, (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit)):
            continue  # bitsandbytes layers subclass nn.Linear: never quantize twice
        if _matches(name, skip) or name in tied:
            skipped.append(name)
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        layer = _quantized_linear(bnb, module, mode)
        setattr(parent, child, layer)
        layer_before += module.weight.numel() * module.weight.element_size()
        layer_after += tensor_bytes(layer) - (layer.bias.numel() * 4 if layer.bias is not None else 0)
        done.append(name)
    if not done:
        raise ConfigError(f"no Linear layer to quantize (all matched skip={list(skip)} or are tied)")
    # PEFT picks its bitsandbytes LoRA layers only when the model says it was loaded quantized.
    setattr(model, "is_loaded_in_8bit" if mode == "int8" else "is_loaded_in_4bit", True)
    return QuantizedBaseReport(library="bitsandbytes", version=version, mode=mode, layers=tuple(done),
                               skipped=tuple(skipped), base_bytes_before=before, base_bytes_after=tensor_bytes(model),
                               layer_bytes_before=layer_before, layer_bytes_after=layer_after)
