"""Multi-label text classification: any number of the bundle's labels per text (topics a digest covers,
entity types a tweet mentions), one sigmoid per label, trained with binary cross-entropy.

Data schema: one record per example with a non-empty ``text`` and, for training or evaluation,
``labels``: a JSON list of label names (possibly empty), or in CSV a cell of ``;``-separated names
(an empty cell: no label). ``evaluate`` reports micro- and macro-F1 and subset accuracy (every label of
the example right) at the decision threshold, and the loss training minimises (below); ``infer``
returns the labels whose probability reaches the threshold (``--threshold``, default 0.5) with every
label's probability. Device-safe: numpy only.

Labels are usually rare (a tweet names a film far less often than it names nobody), and plain binary
cross-entropy then learns to predict no label at all: on the tweets data set (5% of tweet-type pairs
positive) MiniLM sat at micro-F1 0.0 for 8 epochs. So the loss weighs each label's positives by how rare
they are in the training data, PyTorch's ``pos_weight`` as its documentation recommends (negatives /
positives of that label; a label without positives keeps weight 1). The weights are a target input
computed on the device from the data being trained on, so the same bundle adapts to any data's balance.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from edge_sdk.errors import ConfigError, DataError
from edge_sdk.tasks.base import TaskData, reject_context
from edge_sdk.tasks.data import Record, read_records, text_field
from edge_sdk.tasks.losses import LossGraph, LossNode
from edge_sdk.tasks.spec import HostSpec, PredictOption, TargetSpec, TaskSpec

TASK_NAME = "multi-label"
CSV_SEPARATOR = ";"
DEFAULT_THRESHOLD = 0.5


def _label_names(record: Record) -> list[str]:
    raw = record.fields.get("labels")
    where = f"{record.source}:{record.line}"
    if raw is None:
        raise DataError(f"{where}: labels is null; give a list of label names ([] for none)")
    if isinstance(raw, str):  # a CSV cell
        return [name.strip() for name in raw.split(CSV_SEPARATOR) if name.strip()]
    if not isinstance(raw, list) or not all(isinstance(name, str) for name in raw):
        raise DataError(f"{where}: labels must be a list of label names, e.g. [\"a\", \"c\"] (or a "
                        f"'{CSV_SEPARATOR}'-separated cell in CSV), found {raw!r}")
    return [name.strip() for name in raw]


def multi_hot(names: Sequence[str], index_of: dict[str, int], record: Record) -> np.ndarray:
    """The label names of one record as a float32 0/1 vector over the bundle's labels."""
    vector = np.zeros(len(index_of), dtype=np.float32)
    for name in names:
        if name not in index_of:
            raise DataError(f"{record.source}:{record.line}: unknown label {name!r}; allowed labels: "
                            f"{', '.join(repr(label) for label in index_of)}. Fix the data, or rebuild the bundle "
                            "with this label in its label list")
        vector[index_of[name]] = 1.0
    return vector


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * logits))  # tanh form: no overflow for large |logits|


def binary_cross_entropy(logits: np.ndarray, targets: np.ndarray, weights: np.ndarray | float = 1.0) -> float:
    """Mean over examples and labels of w*y*softplus(-x) + (1-y)*softplus(x), as the training graph computes
    it (``weights`` w: the positives' weight per label); with w = 1 the plain binary cross-entropy."""
    x = logits.astype(np.float64)
    softplus = np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))
    weighted = weights * targets
    return float(np.mean(softplus * (1 - targets + weighted) - weighted * x))


def multi_label_scores(predicted: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """Micro-F1 (over every example-label decision), macro-F1 (the mean of per-label F1 over the labels
    that occur in the gold or the predictions: a label absent from both has no defined F1 and is left
    out rather than counted as 0 or 1) and subset accuracy, for 0/1 arrays [examples, labels]."""
    predicted, gold = predicted.astype(bool), gold.astype(bool)
    true_positive = (predicted & gold).sum(axis=0)
    predicted_count, gold_count = predicted.sum(axis=0), gold.sum(axis=0)
    denominator = predicted_count.sum() + gold_count.sum()
    micro = 2.0 * true_positive.sum() / denominator if denominator else 1.0
    seen = (predicted_count + gold_count) > 0
    per_label = 2.0 * true_positive[seen] / (predicted_count[seen] + gold_count[seen])
    return {"micro_f1": float(micro), "macro_f1": float(per_label.mean()) if seen.any() else 1.0,
            "subset_accuracy": float(np.mean(np.all(predicted == gold, axis=1)))}


def positive_weights(targets: list[np.ndarray], classes: int) -> np.ndarray:
    """Per label, negatives / positives in ``targets`` (1 for a label with no positive or no negative)."""
    if not targets:
        return np.ones(classes, dtype=np.float32)
    matrix = np.stack(targets)
    positives = matrix.sum(axis=0)
    negatives = len(matrix) - positives
    weights = np.where((positives > 0) & (negatives > 0), negatives / np.maximum(positives, 1), 1.0)
    return weights.astype(np.float32)


@dataclass
class MultiLabelData(TaskData):
    positive_weights: np.ndarray = field(default_factory=lambda: np.ones(0, np.float32))


@dataclass(frozen=True)
class LabelSet:
    labels: list[str]
    probabilities: dict[str, float]
    threshold: float

    def to_dict(self) -> dict[str, object]:
        return {"labels": self.labels, "probabilities": self.probabilities, "threshold": self.threshold}

    def to_text(self) -> str:
        return ", ".join(f"{label} {self.probabilities[label]:.3f}" for label in self.labels) or "(no label)"


def _check_threshold(threshold: float) -> float:
    if not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"--threshold must be a probability in 0..1, got {threshold!r}")
    return float(threshold)


class MultiLabelTask:
    name = TASK_NAME
    metric = "micro_f1"
    higher_is_better = True

    def __init__(self, labels: Sequence[str], tokenizer) -> None:
        self.labels = list(labels)
        self.index_of = {label: i for i, label in enumerate(self.labels)}
        self.tokenizer = tokenizer

    def load(self, path: str | os.PathLike[str], require_targets: bool = True) -> TaskData:
        records = read_records(path, ("text", "labels") if require_targets else ("text",))
        texts = [text_field(record, "text") for record in records]
        targets = [multi_hot(_label_names(record), self.index_of, record) for record in records] \
            if require_targets else None
        return MultiLabelData(encoded=self.tokenizer.encode_full(texts), targets=targets, context=texts,
                              positive_weights=positive_weights(targets or [], len(self.labels)))

    def from_texts(self, texts: Sequence[str], context: str | None = None) -> TaskData:
        reject_context(self.name, context)
        return TaskData(encoded=self.tokenizer.encode_full(list(texts)), targets=None, context=list(texts))

    def targets(self, data: MultiLabelData, rows: Sequence[int], length: int) -> dict[str, np.ndarray]:
        return {"labels": np.stack([data.targets[row] for row in rows]).astype(np.float32),
                "positive_weights": data.positive_weights}

    def reduce_output(self, data: TaskData, row: int, outputs: dict[str, np.ndarray]) -> np.ndarray:
        return outputs["logits"]

    def score(self, data: MultiLabelData, outputs: list[np.ndarray]) -> dict[str, float]:
        logits, gold = np.stack(outputs), np.stack(data.targets)
        # The loss is the objective training minimises, weighted by the evaluated data's own label balance.
        return multi_label_scores(sigmoid(logits) >= DEFAULT_THRESHOLD, gold) | {
            "loss": binary_cross_entropy(logits, gold, data.positive_weights), "examples": len(gold)}

    def predict(self, data: TaskData, outputs: list[np.ndarray],
                threshold: float = DEFAULT_THRESHOLD) -> list[LabelSet]:
        threshold = _check_threshold(threshold)
        predictions = []
        for row in sigmoid(np.stack(outputs)):
            chosen = [label for label, p in zip(self.labels, row, strict=True) if p >= threshold]
            predictions.append(LabelSet(
                labels=sorted(chosen, key=lambda label: -row[self.index_of[label]]),
                probabilities={label: float(p) for label, p in zip(self.labels, row, strict=True)},
                threshold=threshold))
        return predictions


def check_labels(labels: Sequence[str]) -> None:
    separated = [label for label in labels if CSV_SEPARATOR in label]
    if separated:
        raise ConfigError(f"multi-label labels cannot contain {CSV_SEPARATOR!r} (it separates labels in CSV "
                          f"data): {', '.join(separated)}")


def binary_cross_entropy_loss(_classes: int) -> LossGraph:
    """Mean weighted binary cross-entropy of [batch, classes] ``logits`` against 0/1 float ``labels``, the
    positives of label j weighed by ``positive_weights[j]`` (w): per element softplus(x)*(1 - y + w*y) - w*y*x,
    i.e. w*softplus(-x) for a positive and softplus(x) for a negative, with softplus(x) = relu(x) +
    log(1 + exp(-|x|)) and |x| = relu(x) + relu(-x). Stable for any logit (onnxblock's BCEWithLogitsLoss
    takes log(sigmoid), which reaches log(0)), and made of ops whose gradients ONNX Runtime builds and the
    portable step lowers (Relu's included)."""
    return LossGraph(
        nodes=(LossNode("Relu", ("logits",), ("loss.positive",)),
               LossNode("Neg", ("logits",), ("loss.negated",)),
               LossNode("Relu", ("loss.negated",), ("loss.negative",)),
               LossNode("Add", ("loss.positive", "loss.negative"), ("loss.magnitude",)),
               LossNode("Neg", ("loss.magnitude",), ("loss.minus_magnitude",)),
               LossNode("Exp", ("loss.minus_magnitude",), ("loss.tail",)),
               LossNode("Add", ("loss.one", "loss.tail"), ("loss.one_plus_tail",)),
               LossNode("Log", ("loss.one_plus_tail",), ("loss.log_term",)),
               LossNode("Add", ("loss.positive", "loss.log_term"), ("loss.softplus",)),
               LossNode("Mul", ("labels", "positive_weights"), ("loss.weighted_labels",)),
               LossNode("Sub", ("loss.one", "labels"), ("loss.negatives",)),
               LossNode("Add", ("loss.negatives", "loss.weighted_labels"), ("loss.softplus_factor",)),
               LossNode("Mul", ("loss.softplus", "loss.softplus_factor"), ("loss.softplus_term",)),
               LossNode("Mul", ("loss.weighted_labels", "logits"), ("loss.agreement",)),
               LossNode("Sub", ("loss.softplus_term", "loss.agreement"), ("loss.elementwise",)),
               LossNode("ReduceMean", ("loss.elementwise",), ("loss.mean",), {"keepdims": 0})),
        output="loss.mean",
        constants={"loss.one": np.asarray(1.0, np.float32)},
    )


def sample_label_sets(batch: dict[str, np.ndarray], classes: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    labels = (rng.random((len(batch["input_ids"]), classes)) < 0.3).astype(np.float32)
    return {"labels": labels, "positive_weights": rng.uniform(1.0, 4.0, classes).astype(np.float32)}


SPEC = TaskSpec(
    name=TASK_NAME,
    summary="multi-label text classification: any number of labels per text (micro/macro F1)",
    peft_task_type="SEQ_CLS",
    host=HostSpec(auto_model="AutoModelForSequenceClassification", outputs=("logits",), per_token=False,
                  targets=(TargetSpec("labels", "float32", ("batch", "classes")),
                           TargetSpec("positive_weights", "float32", ("classes",))), loss=binary_cross_entropy_loss,
                  sample_targets=sample_label_sets,
                  # transformers' own loss for this head is then BCE too, as the graphs train.
                  model_config=(("problem_type", "multi_label_classification"),)),
    device=lambda manifest, tokenizer: MultiLabelTask(manifest.labels, tokenizer),
    min_labels=1,
    check_labels=check_labels,
    predict_options=(PredictOption("threshold", float, DEFAULT_THRESHOLD,
                                   "report the labels whose probability reaches this value"),),
)
