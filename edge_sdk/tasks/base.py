"""What every task gives the device runtime: data → features, targets per batch, metrics, predictions.

Device-safe: numpy only. The runtime owns tokenization, batching, the inference session and training;
a task only knows its data schema and what its outputs mean (its interfaces: spec.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from edge_sdk.errors import ConfigError

# The label that carries no loss and no gradient (padding, a token-cls word's later sub-tokens, a prompt in
# causal-lm). -100 is the ignore_index of PyTorch's and ONNX's cross-entropy and transformers' convention,
# so the host's training graphs and the device's batches and metrics must all use this one value; it lives
# here because the device side is torch-free and may not import host code, while the host may import this.
IGNORE_INDEX = -100


@dataclass
class TaskData:
    """Examples tokenized for the graph: (ids, type ids) per example, the task's targets (None when
    unlabelled) and whatever the task needs to turn outputs back into answers."""

    encoded: list[tuple[np.ndarray, np.ndarray]]
    targets: list[Any] | None
    context: list[Any] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.encoded)


class Prediction(Protocol):
    def to_dict(self) -> dict[str, Any]: ...

    def to_text(self) -> str: ...


def reject_context(task: str, context: str | None) -> None:
    if context is not None:
        raise ConfigError(f"a context text is for question answering; this bundle's task is {task}")


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def cross_entropy(logits: np.ndarray, labels: np.ndarray, ignore_index: int = IGNORE_INDEX) -> float:
    """Mean cross-entropy over the rows whose label is not ``ignore_index`` (as the training graph)."""
    keep = labels != ignore_index
    logits, labels = logits[keep], labels[keep]
    if not len(labels):
        return 0.0
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def token_nll(logits: np.ndarray, labels: np.ndarray, ignore_index: int = IGNORE_INDEX) -> tuple[float, int]:
    """Summed negative log-likelihood of the ``labels`` that are not ``ignore_index``, and their count
    (``logits`` [positions, vocabulary] aligned with ``labels`` [positions])."""
    keep = labels != ignore_index
    chosen = logits[:len(labels)][keep].astype(np.float64)
    shifted = chosen - chosen.max(axis=-1, keepdims=True)
    nll = np.log(np.exp(shifted).sum(axis=-1)) - shifted[np.arange(len(chosen)), labels[keep]]
    return float(nll.sum()), int(keep.sum())


def perplexity_scores(outputs: list[tuple[float, int]]) -> dict[str, float]:
    """Token-weighted mean loss over examples' (summed NLL, token count) and its perplexity."""
    tokens = sum(count for _, count in outputs)
    loss = sum(nll for nll, _ in outputs) / max(tokens, 1)
    return {"perplexity": float(math.exp(min(loss, 700.0))), "loss": float(loss), "tokens": tokens,
            "examples": len(outputs)}


def padded_token_targets(targets: list[np.ndarray], length: int, left: bool,
                         ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Per-token targets of a batch padded to ``length`` on the tokenizer's padding side (``ignore_index``
    at the padding, which carries no loss)."""
    labels = np.full((len(targets), length), ignore_index, dtype=np.int64)
    for row, target in enumerate(targets):
        if left:
            labels[row, length - len(target):] = target
        else:
            labels[row, :len(target)] = target
    return labels
