"""Text generation on the device with the decoder-with-cache graph (numpy + onnxruntime only).

The graph (edge_sdk.host.decoder_export) takes the new tokens and the key/value cache of the tokens before
them and returns the next-token logits and the grown cache. Here: prefill the prompt once, then feed one
token per step with the cache handed back through ONNX Runtime's IO binding, so the cache stays in
ORT-owned memory between steps instead of being copied out to numpy and back in.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edge_sdk.errors import AdapterError, BundleError, ConfigError

REPLACEMENT_CHAR = "\ufffd"
_SPEC_KEYS = ("inputs", "logits", "num_kv_heads", "head_dim", "past_names", "present_names")


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 64
    temperature: float = 0.0      # 0 = greedy
    top_k: int = 0                # 0 = off
    top_p: float = 1.0            # 1 = off
    stop: tuple[str, ...] = ()    # stop strings; the returned text ends before the stop string
    seed: int | None = None

    def validate(self) -> None:
        """Raise ConfigError naming the bad value and the allowed range."""
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        if not _is_number(self.temperature) or not math.isfinite(self.temperature) or self.temperature < 0:
            raise ConfigError(f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature!r}")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise ConfigError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if not _is_number(self.top_p) or not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be a number in (0, 1] (1 = off), got {self.top_p!r}")
        if isinstance(self.stop, str) or not all(isinstance(s, str) and s for s in self.stop):
            raise ConfigError(f"stop must be a sequence of non-empty strings, got {self.stop!r}")
        if self.seed is not None and (not _is_int(self.seed) or self.seed < 0):
            raise ConfigError(f"seed must be an integer >= 0 or None, got {self.seed!r}")


def _is_int(value) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


# --- sampling ---------------------------------------------------------------------------------------


def next_token(logits: np.ndarray, settings: GenerationSettings, rng: np.random.Generator) -> int:
    """The next token id from one position's logits [vocab]: argmax at temperature 0, else a draw from the
    temperature-scaled distribution cut to the top_k tokens and then to the top_p nucleus."""
    scores = np.asarray(logits, dtype=np.float64).reshape(-1)
    if settings.temperature == 0:
        return int(np.argmax(scores))
    scores = scores / settings.temperature
    candidates = _top_k(scores, settings.top_k)
    probabilities = _softmax(scores[candidates])
    candidates, probabilities = _top_p(candidates, probabilities, settings.top_p)
    # Inverse-CDF draw with one uniform number: reproducible for a seed, independent of numpy's choice().
    cumulative = np.cumsum(probabilities)
    index = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
    return int(candidates[min(index, len(candidates) - 1)])


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best scores, best first (all of them when k is 0 or covers the vocabulary)."""
    if 0 < k < scores.size:
        chosen = np.argpartition(-scores, k - 1)[:k]
    else:
        chosen = np.arange(scores.size)
    return chosen[np.argsort(-scores[chosen], kind="stable")]


def _softmax(scores: np.ndarray) -> np.ndarray:
    weights = np.exp(scores - scores.max())
    return weights / weights.sum()


def _top_p(candidates: np.ndarray, probabilities: np.ndarray, top_p: float) -> tuple[np.ndarray, np.ndarray]:
    """Keep the smallest best-first prefix whose probability reaches top_p (always at least one token)."""
    if top_p >= 1:
        return candidates, probabilities
    before = np.cumsum(probabilities) - probabilities  # mass of the better tokens
    keep = max(1, int(np.count_nonzero(before < top_p)))
    return candidates[:keep], probabilities[:keep]


# --- streaming text -----------------------------------------------------------------------------------


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Characters at the end of ``text`` that might begin a stop string still to be completed."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


def _find_stop(text: str, stops: tuple[str, ...]) -> int:
    """Index of the earliest stop string in ``text``, or -1."""
    found = [index for index in (text.find(stop) for stop in stops) if index >= 0]
    return min(found) if found else -1


class _TextStream:
    """Turns the full decoded text after each token into new, safe-to-show pieces.

    A piece never ends in a half-decoded character (U+FFFD at the very end) or in text that could still
    become a stop string, so the pieces concatenate to the final text.
    """

    def __init__(self, stops: tuple[str, ...], on_text: Callable[[str], None] | None) -> None:
        self.stops = stops
        self.on_text = on_text
        self.emitted = ""

    def update(self, text: str) -> None:
        safe = text.rstrip(REPLACEMENT_CHAR)
        safe = safe[:len(safe) - _held_back(safe, self.stops)]
        self._emit_up_to(safe)

    def finish(self, text: str) -> None:
        self._emit_up_to(text)

    def _emit_up_to(self, text: str) -> None:
        # Tokenizers may rewrite earlier text as more ids arrive (rare); never emit what contradicts a piece.
        if self.on_text is not None and len(text) > len(self.emitted) and text.startswith(self.emitted):
            self.on_text(text[len(self.emitted):])
            self.emitted = text


# --- the generation loop -------------------------------------------------------------------------------


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]      # generated ids, without the prompt and without the end-of-sequence id
    prompt_tokens: int
    new_tokens: int           # len(token_ids)
    stop_reason: str          # "eos" | "stop" | "length"
    seconds: float

    def to_text(self) -> str:
        return self.text

    def to_dict(self) -> dict:
        rate = self.new_tokens / self.seconds if self.seconds > 0 else 0.0
        return {"text": self.text, "tokens": {"prompt": self.prompt_tokens, "generated": self.new_tokens},
                "stop_reason": self.stop_reason, "seconds": self.seconds, "tokens_per_second": rate}


class CausalGenerator:
    """Batch-1 generation over one ONNX Runtime session of the decoder-with-cache graph."""

    def __init__(self, session, spec: dict, eos_ids: set[int], decode: Callable[[list[int]], str]) -> None:
        missing = [key for key in _SPEC_KEYS if key not in spec]
        if missing:
            raise BundleError(f"the decoder description lacks {', '.join(missing)}; rebuild the bundle")
        self.session = session
        self.spec = spec
        self.eos_ids = {int(token) for token in eos_ids}
        self.decode = decode
        self.past_names = list(spec["past_names"])
        self.present_names = list(spec["present_names"])
        graph_inputs = [node.name for node in session.get_inputs()]
        cache = set(self.past_names)
        self.token_inputs = [name for name in graph_inputs if name in set(spec["inputs"])]
        self.weight_inputs = [name for name in graph_inputs if name not in cache and name not in spec["inputs"]]
        self._check_graph(graph_inputs, [node.name for node in session.get_outputs()])

    def _check_graph(self, graph_inputs: list[str], graph_outputs: list[str]) -> None:
        absent = [name for name in self.past_names if name not in graph_inputs]
        absent += [name for name in [self.spec["logits"], *self.present_names] if name not in graph_outputs]
        if absent or "input_ids" not in self.token_inputs or len(self.past_names) != len(self.present_names):
            raise BundleError("the decoder graph does not match its description (missing "
                              f"{', '.join(absent) or 'input_ids'}); rebuild the bundle")

    def generate(self, prompt_ids: np.ndarray, weights: dict[str, np.ndarray], settings: GenerationSettings,
                 on_text: Callable[[str], None] | None = None) -> GenerationResult:
        """Generate from ``prompt_ids`` (one sequence) with the adapter ``weights``; ``on_text`` gets the
        text in pieces as it is produced."""
        settings.validate()
        prompt = np.asarray(prompt_ids, dtype=np.int64).reshape(-1)
        if prompt.size == 0:
            raise ConfigError("the prompt is empty: generation needs at least one prompt token")
        missing = [name for name in self.weight_inputs if name not in weights]
        if missing:
            raise AdapterError(f"the adapter lacks weights the model needs: {', '.join(missing[:5])}")
        started = time.perf_counter()
        rng = np.random.default_rng(settings.seed)
        stream = _TextStream(tuple(settings.stop), on_text)
        steps = _CacheSteps(self, weights)
        logits = steps.prefill(prompt)
        generated: list[int] = []
        text, reason = "", "length"
        while len(generated) < settings.max_new_tokens:
            token = next_token(logits, settings, rng)
            if token in self.eos_ids:
                reason = "eos"
                break
            generated.append(token)
            text = self.decode(generated)
            cut = _find_stop(text, settings.stop)
            if cut >= 0:
                text, reason = text[:cut], "stop"
                break
            stream.update(text)
            if len(generated) < settings.max_new_tokens:
                logits = steps.decode(token)
        stream.finish(text)
        return GenerationResult(text=text, token_ids=generated, prompt_tokens=int(prompt.size),
                                new_tokens=len(generated), stop_reason=reason,
                                seconds=time.perf_counter() - started)


class _CacheSteps:
    """One generation's graph calls: the weights are bound once, each present cache is bound as the next
    past without leaving ONNX Runtime's memory."""

    def __init__(self, generator: CausalGenerator, weights: dict[str, np.ndarray]) -> None:
        import onnxruntime as ort

        self._ort = ort
        self.generator = generator
        self.binding = generator.session.io_binding()
        # An OrtValue made from numpy borrows the array's memory: keep both alive while they are bound.
        self._weights = [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(weights[name], dtype=np.float32))
                         for name in generator.weight_inputs]
        for name, value in zip(generator.weight_inputs, self._weights, strict=True):
            self.binding.bind_ortvalue_input(name, value)
        self._bound: dict[str, object] = {}  # numpy-backed inputs, alive until the next value replaces them
        self.length = 0         # tokens in the cache

    def _bind_array(self, name: str, value: np.ndarray) -> None:
        ort_value = self._ort.OrtValue.ortvalue_from_numpy(value)
        self._bound[name] = ort_value
        self.binding.bind_ortvalue_input(name, ort_value)

    def _run(self, tokens: np.ndarray, positions: np.ndarray) -> np.ndarray:
        spec_inputs = self.generator.token_inputs
        self.length += tokens.size
        arrays = {"input_ids": tokens[None, :], "attention_mask": np.ones((1, self.length), np.int64),
                  "position_ids": positions[None, :]}
        for name in spec_inputs:
            self._bind_array(name, np.ascontiguousarray(arrays[name]))
        # Re-bound every step: a bound output keeps last step's buffer, whose shape no longer fits (the cache
        # grew), and which is now bound as this step's past.
        logits_name = self.generator.spec["logits"]
        self.binding.bind_output(logits_name)
        for name in self.generator.present_names:
            self.binding.bind_output(name)
        self.generator.session.run_with_iobinding(self.binding)
        logits, *present = self.binding.get_outputs()
        for name, value in zip(self.generator.past_names, present, strict=True):
            self.binding.bind_ortvalue_input(name, value)  # ORT-owned: the binding keeps it alive
            self._bound.pop(name, None)
        return logits.numpy()[0]

    def prefill(self, prompt: np.ndarray) -> np.ndarray:
        spec = self.generator.spec
        empty = np.zeros((1, int(spec["num_kv_heads"]), 0, int(spec["head_dim"])), np.float32)
        for name in self.generator.past_names:
            self._bind_array(name, empty)
        return self._run(prompt, np.arange(prompt.size, dtype=np.int64))

    def decode(self, token: int) -> np.ndarray:
        return self._run(np.array([token], np.int64), np.array([self.length], np.int64))
