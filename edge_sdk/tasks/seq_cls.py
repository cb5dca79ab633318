"""Text classification (sequence classification): the device-safe part of the task.

Data schema: one record per example with a non-empty ``text`` and, for training or evaluation, a
``label`` that is one of the bundle's label names. Standard library only: no torch on devices.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_sdk.errors import ConfigError, DataError
from edge_sdk.tasks.base import TaskData, cross_entropy, reject_context, softmax
from edge_sdk.tasks.data import Record, read_records
from edge_sdk.tasks.losses import cross_entropy as cross_entropy_loss
from edge_sdk.tasks.spec import HostSpec, TargetSpec, TaskSpec

TASK_NAME = "seq-cls"


@dataclass(frozen=True)
class TextExample:
    """One text with its label index into the bundle's label names (``None`` when unlabelled)."""

    text: str
    label: int | None
    source: str
    line: int


def load_text_examples(
    path: str | os.PathLike[str],
    label_names: Sequence[str],
    require_labels: bool = True,
) -> list[TextExample]:
    """Load text examples and map their labels to indices of ``label_names``.

    Labels may be strings or integers in the file; they are matched by their string form, so label
    names ``"0"``, ``"1"`` accept ``0`` and ``"0"`` alike. With ``require_labels=False`` the label
    field is optional, but a label that is present is still checked: it would otherwise be scored.
    """
    names = [str(name) for name in label_names]
    if not names:
        raise ConfigError("label_names is empty. Pass the bundle's label names (at least one).")
    index_of = {name: i for i, name in enumerate(names)}
    if len(index_of) != len(names):
        duplicates = sorted({name for name in names if names.count(name) > 1})
        raise ConfigError(
            f"label_names repeats {', '.join(repr(d) for d in duplicates)}. Label names must be unique."
        )

    required = ("text", "label") if require_labels else ("text",)
    examples: list[TextExample] = []
    for record in read_records(path, required):
        text = _text_of(record)
        raw_label = record.fields.get("label")
        # An empty CSV cell is how unlabelled rows look in a file that has a label column.
        unlabelled = raw_label is None or (isinstance(raw_label, str) and not raw_label.strip())
        if unlabelled and not require_labels:
            label = None
        elif raw_label is None:
            raise DataError(
                f"{record.source}:{record.line}: label is null. Give every example one of {_allowed(names)}."
            )
        else:
            label = _label_index(raw_label, index_of, names, record)
        examples.append(TextExample(text=text, label=label, source=record.source, line=record.line))
    return examples


def accuracy(predicted: Sequence[int], gold: Sequence[int]) -> float:
    """Fraction of positions where ``predicted`` equals ``gold``."""
    if len(predicted) != len(gold):
        raise DataError(
            f"accuracy got {len(predicted)} predictions for {len(gold)} gold labels. "
            "Predict exactly one label per example."
        )
    if not gold:
        raise DataError(
            "accuracy needs at least one example, but there are no examples. Check the data file."
        )
    correct = sum(1 for p, g in zip(predicted, gold, strict=True) if p == g)
    return correct / len(gold)


def parse_label_list(value: str) -> list[str]:
    """Parse label names from ``"a,b,c"`` or from a text file with one label per line.

    Whitespace around names is stripped and blank entries are ignored. Raises :class:`ConfigError`
    for an empty list or duplicated names.
    """
    candidate = Path(value)
    if candidate.is_file():
        try:
            content = candidate.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{value}: cannot read label file ({exc}). Save it as UTF-8 text.") from None
        labels = [line.strip() for line in content.splitlines() if line.strip()]
        origin = f"label file {value}"
    else:
        # Without this check a mistyped file name would silently become a single label.
        if "," not in value and (os.sep in value or "/" in value or candidate.suffix.lower() == ".txt"):
            raise ConfigError(
                f"label file not found: {value}. Pass an existing file with one label per line, "
                "or a comma-separated list such as 'neg,pos'."
            )
        labels = [item.strip() for item in value.split(",") if item.strip()]
        origin = f"label list {value!r}"
    if not labels:
        raise ConfigError(f"{origin} contains no labels. Give at least one label name.")
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ConfigError(
            f"{origin} repeats label(s) {', '.join(repr(d) for d in duplicates)}. Each label must appear once."
        )
    return labels


def _text_of(record: Record) -> str:
    text = record.fields.get("text")
    if not isinstance(text, str):
        raise DataError(
            f"{record.source}:{record.line}: field 'text' must be a string, found {type(text).__name__}. "
            "Put the text in quotes."
        )
    if not text.strip():
        raise DataError(
            f"{record.source}:{record.line}: field 'text' is empty. Remove the example or add its text."
        )
    return text


def _label_index(raw: object, index_of: dict[str, int], names: list[str], record: Record) -> int:
    # bool is an int subclass; true/false as labels is almost certainly a data mistake.
    if isinstance(raw, bool) or not isinstance(raw, (str, int)):
        raise DataError(
            f"{record.source}:{record.line}: label must be a string or an integer, found {raw!r}. "
            f"Use one of {_allowed(names)}."
        )
    key = raw.strip() if isinstance(raw, str) else str(raw)
    if key not in index_of:
        raise DataError(
            f"{record.source}:{record.line}: unknown label {raw!r}; allowed labels: {_allowed(names)}. "
            "Fix the data, or rebuild the bundle with this label in its label list."
        )
    return index_of[key]


def _allowed(names: list[str]) -> str:
    return ", ".join(repr(name) for name in names)


@dataclass(frozen=True)
class ClassPrediction:
    label: str
    score: float
    probabilities: dict[str, float]

    def to_dict(self) -> dict[str, object]:
        return {"label": self.label, "score": self.score, "probabilities": self.probabilities}

    def to_text(self) -> str:
        return f"{self.label}\t{self.score:.3f}"


class SeqClsTask:
    """Text classification on the device: one label per text, scored by accuracy."""

    name = TASK_NAME
    metric = "accuracy"
    higher_is_better = True

    def __init__(self, labels: Sequence[str], tokenizer) -> None:
        self.labels = list(labels)
        self.tokenizer = tokenizer

    def load(self, path: str | os.PathLike[str], require_targets: bool = True) -> TaskData:
        examples = load_text_examples(path, self.labels, require_labels=require_targets)
        labels = [example.label for example in examples]
        return TaskData(encoded=self.tokenizer.encode_full([example.text for example in examples]),
                        targets=labels if require_targets else None,
                        context=[example.text for example in examples])

    def from_texts(self, texts: Sequence[str], context: str | None = None) -> TaskData:
        reject_context(self.name, context)
        return TaskData(encoded=self.tokenizer.encode_full(list(texts)), targets=None, context=list(texts))

    def reduce_output(self, data: TaskData, row: int, outputs: dict[str, np.ndarray]) -> np.ndarray:
        return outputs["logits"]

    def targets(self, data: TaskData, rows: Sequence[int], length: int) -> dict[str, np.ndarray]:
        return {"labels": np.asarray([data.targets[row] for row in rows], dtype=np.int64)}

    def score(self, data: TaskData, outputs: list[np.ndarray]) -> dict[str, float]:
        logits = np.stack(outputs)
        gold = np.asarray(data.targets, dtype=np.int64)
        return {
            "accuracy": accuracy(logits.argmax(axis=-1).tolist(), gold.tolist()),
            "loss": cross_entropy(logits, gold),
            "examples": len(gold),
        }

    def predict(self, data: TaskData, outputs: list[np.ndarray]) -> list[ClassPrediction]:
        predictions = []
        for row in softmax(np.stack(outputs)):
            best = int(row.argmax())
            predictions.append(ClassPrediction(
                label=self.labels[best], score=float(row[best]),
                probabilities={label: float(p) for label, p in zip(self.labels, row, strict=True)},
            ))
        return predictions


def sample_labels(batch: dict[str, np.ndarray], classes: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"labels": rng.integers(0, classes, size=len(batch["input_ids"])).astype(np.int64)}


SPEC = TaskSpec(
    name=TASK_NAME,
    summary="text classification: one label per text (accuracy)",
    peft_task_type="SEQ_CLS",
    host=HostSpec(auto_model="AutoModelForSequenceClassification", outputs=("logits",), per_token=False,
                  targets=(TargetSpec("labels", "int64", ("batch",)),), loss=cross_entropy_loss,
                  sample_targets=sample_labels),
    device=lambda manifest, tokenizer: SeqClsTask(manifest.labels, tokenizer),
)
