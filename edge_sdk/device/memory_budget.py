"""Peak-memory estimate of on-device training, and the largest batch size that fits a budget.

The estimate is structural: each part is a formula over what the manifest records (the model's width,
depth, MLP width, attention heads and vocabulary in ``model.dimensions``; the trainable tensors; the
output shape; the sizes of the files a backend loads), multiplied by a few constants calibrated by
measuring personalization runs of a BERT-like encoder and a Llama-like decoder on both backends (see
docs/memory-budget.md). Stdlib only (ONNX Runtime is not imported): it runs before anything heavy is loaded.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edge_sdk.bundle.manifest import Manifest
from edge_sdk.errors import ConfigError, MemoryBudgetError

if TYPE_CHECKING:  # only for the hints: this module stays stdlib-only at run time
    from edge_sdk.tasks.base import TaskData

log = logging.getLogger(__name__)
MIB = 1 << 20
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_FLOAT = 4  # bytes of a float32: activations, logits, optimizer state and trainable weights are float32


@dataclass(frozen=True)
class BackendConstants:
    """Per-backend constants of the estimate, calibrated by tools/memory_budget_check.py (numbers there)."""

    runtime_mib: float           # interpreter, numpy, ONNX Runtime, tokenizers and the SDK, before any bundle file
    tokenizer_factor: float      # in-memory tokenizer per byte of tokenizer.json
    weights_factor: float        # resident bytes per byte of the frozen weights file the backend loads
    load_factor: float           # transient peak while the backend loads its weights, per byte of that file
    state_copies: int            # float32 copies of each trainable parameter: itself, gradient, AdamW m and v, …
    activation_scale: float      # measured / textbook float32 activations kept for the backward pass
    logits_copies: float         # per-token output copies alive at once: logits, log-softmax, its gradient, …
    workspace_mib: float         # a step's fixed working set: arena blocks, kernels' scratch, the loss graph
    checkpoint_factor: float     # transient bytes while a checkpoint is written, per byte of the frozen weights file


# Why the two differ: the portable step maps the frozen weights file and keeps two sets of state buffers
# (a step reads one and writes the other); ONNX Runtime's training API parses the whole checkpoint (a
# second copy of the weights while the sessions are created) and keeps the parameters, their gradients
# and the AdamW moments in its checkpoint state. The portable step's lowered cross-entropy holds more
# full-vocabulary tensors at once (softmax, its gradient and the masked products): SmolLM2 measured 7.5 copies.
# A checkpoint (every N steps and after the last) costs the portable step nothing beyond its state buffers,
# but ONNX Runtime serializes its whole checkpoint state, frozen weights included, in memory first: MiniLM
# measured 0.9-1.6 times its checkpoint file on top of the training peak.
BACKENDS: dict[str, BackendConstants] = {
    "portable": BackendConstants(runtime_mib=42.0, tokenizer_factor=11.0, weights_factor=1.0, load_factor=1.0,
                                 state_copies=7, activation_scale=0.85, logits_copies=7.5, workspace_mib=30.0,
                                 checkpoint_factor=0.0),
    "ort-training": BackendConstants(runtime_mib=42.0, tokenizer_factor=11.0, weights_factor=1.65,
                                     load_factor=2.55, state_copies=4, activation_scale=0.85, logits_copies=4.0,
                                     workspace_mib=30.0, checkpoint_factor=1.4),
}


def parse_size(value: str | int, flag: str = "--memory-budget") -> int:
    """Bytes in ``value``: a plain number of bytes or a number with a unit (``512MiB``, ``1.5GiB``, ``800MB``,
    ``64KiB``; binary units are powers of 1024, decimal ones of 1000)."""
    if isinstance(value, bool):
        raise ConfigError(f"{flag}: expected a size such as 512MiB, got {value!r}")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.match(str(value))
        unit = match.group(2).lower() if match else None
        if not match or unit not in _UNITS:
            raise ConfigError(f"{flag}: {value!r} is not a size; write bytes or a number with a unit "
                              "(B, KB, MB, GB, KiB, MiB, GiB), e.g. 512MiB, 1.5GiB or 800MB")
        size = int(float(match.group(1)) * _UNITS[unit])
    if size <= 0:
        raise ConfigError(f"{flag}: the budget must be more than 0 bytes, got {value!r}")
    return size


def format_mib(size: float) -> str:
    return f"{size / MIB:,.0f} MiB"


# --- what the model looks like ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelDimensions:
    """The model facts the estimate needs; ``derived`` says they were inferred (a bundle of an older SDK)."""

    hidden_size: int
    layers: int                  # all transformer blocks whose activations are kept (encoder + decoder)
    intermediate_size: int
    attention_heads: int
    vocab_size: int
    derived: bool = False


def model_dimensions(manifest: Manifest) -> ModelDimensions:
    """The dimensions the build recorded in ``model.dimensions``, else inferred from the trainable tensors'
    names and shapes, the parameter count and the output shape."""
    recorded = manifest.model.get("dimensions")
    if isinstance(recorded, dict) and all(recorded.get(key) for key in ("hidden_size", "layers")):
        hidden = int(recorded["hidden_size"])
        return ModelDimensions(hidden_size=hidden, layers=int(recorded["layers"]),
                               intermediate_size=int(recorded.get("intermediate_size") or 4 * hidden),
                               attention_heads=int(recorded.get("attention_heads") or max(1, hidden // 64)),
                               vocab_size=int(recorded.get("vocab_size") or 0))
    return _derived_dimensions(manifest)


def _derived_dimensions(manifest: Manifest) -> ModelDimensions:
    # LoRA's A matrices are [rank, in_features]; the most common input width of the adapted projections is
    # the model's width (attention projections read the hidden state).
    widths = Counter(int(spec.shape[1]) for spec in manifest.trainable
                     if "lora_A" in spec.name and len(spec.shape) == 2 and isinstance(spec.shape[1], int))
    if not widths:
        widths = Counter(int(dim) for spec in manifest.trainable for dim in spec.shape[-1:] if isinstance(dim, int))
    hidden = widths.most_common(1)[0][0] if widths else 768
    # Adapted blocks are numbered in the parameter names ("layer.3.", "layers.17.", "block.2."): count them.
    numbers = {int(found) for spec in manifest.trainable for found in re.findall(r"\.(\d+)\.", spec.name)}
    parameters = int(manifest.model.get("parameters") or 0)
    layers = len(numbers) or max(1, round(parameters / (12 * hidden * hidden)))
    vocab = _vocabulary(manifest)
    return ModelDimensions(hidden_size=hidden, layers=layers, intermediate_size=4 * hidden,
                           attention_heads=max(1, hidden // 64), vocab_size=vocab, derived=True)


def _vocabulary(manifest: Manifest) -> int:
    shape = manifest.outputs[0].shape if manifest.outputs else []
    per_token = len(shape) >= 3 and isinstance(shape[-1], int)
    return int(shape[-1]) if per_token else 0


def _output_classes(manifest: Manifest) -> tuple[int, bool]:
    """Values per output row and whether the first output has one row per token (language models, tagging)."""
    shape = manifest.outputs[0].shape if manifest.outputs else ["batch", 1]
    classes = 1
    for dim in shape[1:]:
        if isinstance(dim, int):
            classes *= dim
    return classes, any(isinstance(dim, str) for dim in shape[1:])


# --- the estimate ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated peak resident memory of one training run, with the parts it is made of (bytes)."""

    backend: str
    batch_size: int
    sequence_length: int
    parts: dict[str, int]
    load_peak: int               # while the backend loads its weights, before any step
    dimensions: ModelDimensions = field(repr=False)

    @property
    def steady(self) -> int:
        return sum(self.parts.values())

    @property
    def total(self) -> int:
        return max(self.steady, self.load_peak)

    def breakdown(self) -> str:
        parts = ", ".join(f"{name} {format_mib(size)}" for name, size in self.parts.items() if size)
        text = f"{format_mib(self.total)} at batch {self.batch_size} x {self.sequence_length} tokens ({parts})"
        if self.load_peak > self.steady:
            text += f"; loading the weights peaks at {format_mib(self.load_peak)}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "batch_size": self.batch_size, "sequence_length": self.sequence_length,
                "total_bytes": self.total, "load_peak_bytes": self.load_peak,
                "parts_bytes": dict(self.parts)}


def _file_size(manifest: Manifest, path: str | None) -> int:
    if not path:
        return 0
    try:
        return manifest.file(path).size
    except Exception:  # noqa: BLE001 - a bundle without the entry loads no such file: nothing to count
        return 0


def frozen_weights_file(manifest: Manifest, backend: str) -> int:
    """Bytes of the file holding the frozen weights as ``backend`` loads them."""
    if backend == "ort-training":
        return _file_size(manifest, manifest.ort_training_files.get("checkpoint"))
    step = manifest.training.get("portable") or {}
    # A step without a separate weights file carries them inside the graph.
    return _file_size(manifest, step.get("weights")) or _file_size(manifest, step.get("model"))


def estimate_training_peak(manifest: Manifest, backend_name: str, batch_size: int, sequence_length: int,
                           output_length: int | None = None) -> MemoryEstimate:
    """Peak resident memory of training with ``backend_name`` (``portable`` or ``ort-training``) on batches of
    ``batch_size`` rows padded to ``sequence_length`` tokens (``output_length``: a seq2seq model's decoder
    length, which its per-token logits follow; default the input length)."""
    if backend_name not in BACKENDS:
        raise ConfigError(f"no memory estimate for backend {backend_name!r}; it knows {', '.join(BACKENDS)}")
    if batch_size < 1 or sequence_length < 1:
        raise ConfigError(f"batch size and sequence length must be positive, got {batch_size} x {sequence_length}")
    constants = BACKENDS[backend_name]
    dims = model_dimensions(manifest)
    tokens = batch_size * sequence_length
    weights_file = frozen_weights_file(manifest, backend_name)
    runtime = constants.runtime_mib * MIB + constants.tokenizer_factor * _file_size(manifest,
                                                                                  manifest.tokenizer_spec.file)
    trainable = sum(_elements(spec.shape) for spec in manifest.trainable)
    # Kept for the backward pass, per token and block (textbook count for frozen projections with adapters):
    # the normalizations' and adapted projections' inputs and q, k, v (about 6 widths), the MLP's input of
    # its nonlinearity and output (2 MLP widths) and the attention scores and probabilities (2 per head and
    # key position).
    per_token_block = 6 * dims.hidden_size + 2 * dims.intermediate_size + 2 * dims.attention_heads * sequence_length
    activations = constants.activation_scale * _FLOAT * tokens * dims.layers * per_token_block
    classes, per_token_output = _output_classes(manifest)
    rows = batch_size * ((output_length or sequence_length) if per_token_output else 1)
    logits = constants.logits_copies * _FLOAT * rows * classes
    parts = {
        "runtime": int(runtime),
        "frozen weights": int(constants.weights_factor * weights_file),
        "trainable + optimizer": int(constants.state_copies * _FLOAT * trainable),
        "activations": int(activations),
        "logits": int(logits),
        "workspace": int(constants.workspace_mib * MIB),
        "checkpoint write": int(constants.checkpoint_factor * weights_file),
    }
    load_peak = int(runtime + constants.load_factor * weights_file)
    return MemoryEstimate(backend=backend_name, batch_size=batch_size, sequence_length=sequence_length, parts=parts,
                          load_peak=load_peak, dimensions=dims)


def _elements(shape: list) -> int:
    count = 1
    for dim in shape:
        count *= int(dim) if isinstance(dim, int) else 1
    return count


# --- the fit ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BatchFit:
    """The batch size to train with under a budget and the estimate at it."""

    requested: int
    batch_size: int
    budget: int
    estimate: MemoryEstimate
    at_requested: MemoryEstimate

    @property
    def reduced(self) -> bool:
        return self.batch_size < self.requested

    def to_dict(self) -> dict[str, Any]:
        return {"budget_bytes": self.budget, "requested_batch_size": self.requested,
                "batch_size": self.batch_size, "estimate": self.estimate.to_dict(),
                "estimate_at_requested_bytes": self.at_requested.total}

    def note(self) -> str:
        return (f"memory budget {format_mib(self.budget)}: batch size {self.requested} would need about "
                f"{format_mib(self.at_requested.total)}; training with batch size "
                f"{self.batch_size} (estimated {self.estimate.breakdown()})")


def fit_batch_size(manifest: Manifest, backend_name: str, requested: int, sequence_length: int, budget: int,
                   output_length: int | None = None, where: str = "--memory-budget") -> BatchFit:
    """The largest batch size up to ``requested`` whose estimated peak fits ``budget`` bytes; raises
    :class:`MemoryBudgetError` with the estimates at ``requested`` and at 1 when not even one row fits."""
    def estimate(batch: int) -> MemoryEstimate:
        return estimate_training_peak(manifest, backend_name, batch, sequence_length, output_length)

    at_requested = estimate(requested)
    if at_requested.total <= budget:
        return BatchFit(requested, requested, budget, at_requested, at_requested)
    # The estimate grows with the batch: bisect for the largest batch that fits.
    low, high = 0, requested
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if estimate(middle).total <= budget else (low, middle)
    if low == 0:
        at_one = estimate(1)
        raise MemoryBudgetError(
            f"training would not fit the memory budget of {format_mib(budget)} with the {backend_name} backend: "
            f"estimated {at_requested.breakdown()}; even batch size 1 needs {at_one.breakdown()}. Raise "
            f"{where} to at least {format_mib(_rounded_up(at_one.total))}, shorten the examples (the "
            f"longest is {sequence_length} tokens) or train on a device with more memory")
    return BatchFit(requested, low, budget, estimate(low), at_requested)


def _rounded_up(size: int) -> int:
    """``size`` rounded up to the next 16 MiB, so the suggested budget is a number a user would type."""
    step = 16 * MIB
    return -(-size // step) * step


# --- the data's side ------------------------------------------------------------------------------------

def padded_lengths(manifest: Manifest, data: TaskData) -> tuple[int, int | None]:
    """The longest padded batch the data can produce: its longest example (the tokenizer already cut it to
    ``max_length``), and for per-token outputs along another axis than the input (a seq2seq decoder's
    targets, which start with the decoder's start token) the longest target."""
    longest = min(max((len(ids) for ids, _ in data.encoded), default=1), max(1, manifest.max_length))
    shape = manifest.outputs[0].shape if manifest.outputs else []
    separate_axis = len(shape) >= 2 and isinstance(shape[1], str) and shape[1] != "sequence"
    if separate_axis and data.targets and all(hasattr(target, "__len__") for target in data.targets):
        return longest, max(len(target) for target in data.targets) + 1
    return longest, None


def budget_from(flag: str | int | None, profile: dict[str, Any]) -> tuple[int | None, str]:
    """The budget in bytes and where it came from: the flag wins over the bundle profile's ``memory_budget``."""
    if flag is not None:
        return parse_size(flag), "--memory-budget"
    # Profiles keep it under [limits]; manifests written before that, at the top.
    limits = profile.get("limits")
    configured = limits.get("memory_budget") if isinstance(limits, dict) else profile.get("memory_budget")
    if configured is None:
        return None, ""
    where = f"profile {profile.get('name', '?')!r} memory_budget"
    return parse_size(configured, where), where


def fit_training_memory(manifest: Manifest, backend: str, batch_size: int, data: TaskData,
                        budget: int | str | None) -> BatchFit | None:
    """The runtime's one call: ``None`` without a budget (flag or profile), else the fit for the data's longest
    padded batch with the backend ``backend`` resolves to; a reduced batch is logged as a warning."""
    from edge_sdk.device.backends import resolve_backend_name

    size, where = budget_from(budget, manifest.profile)
    if size is None:
        return None
    length, output_length = padded_lengths(manifest, data)
    fit = fit_batch_size(manifest, resolve_backend_name(backend, manifest.training_backends), batch_size, length,
                         size, output_length, where)
    if fit.reduced:
        log.warning(fit.note())
    return fit
