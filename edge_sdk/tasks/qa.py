"""Extractive question answering on the device: the answer is a span of the context, found from
per-token start and end scores; scored by SQuAD's exact match and token F1.

Data schema, one record per question: ``question`` and ``context`` (non-empty strings) and the answer
as either ``answer`` (a string of the context, optionally with ``answer_start``; ``""`` when the context
holds no answer) or SQuAD-style ``answers`` (``{"text": [...], "answer_start": [...]}`` or a list of
``{"text", "answer_start"}``). The first answer trains; every listed answer counts as correct.

Contexts longer than the bundle's max length are cut into overlapping windows (the question is kept
whole in each); a window that does not hold the whole answer learns to point at its first token,
which is how SQuAD 2.0 models say "no answer here".
"""

from __future__ import annotations

import os
import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from edge_sdk.errors import ConfigError, DataError
from edge_sdk.tasks.base import TaskData, cross_entropy
from edge_sdk.tasks.data import Record, read_records, text_field
from edge_sdk.tasks.losses import span_cross_entropy
from edge_sdk.tasks.spec import HostSpec, TargetSpec, TaskSpec

TASK_NAME = "qa"
MAX_ANSWER_TOKENS = 30
_CANDIDATES = 20  # best start and end positions per window combined into spans


@dataclass(frozen=True)
class QaExample:
    question: str
    context: str
    answers: list[tuple[str, int]]  # (text, character offset in the context); empty: no answer
    origin: str | None = None       # "file:line" for errors about this example


@dataclass
class QaData(TaskData):
    examples: list[QaExample] = field(default_factory=list)


@dataclass(frozen=True)
class Answer:
    text: str
    score: float
    start: int  # character span in the context; -1 when the model finds no answer
    end: int

    def to_dict(self) -> dict[str, object]:
        return {"answer": self.text, "score": self.score, "start": self.start, "end": self.end}

    def to_text(self) -> str:
        return self.text or "(no answer)"


def _locate(record: Record, context: str, text: object, start: object) -> tuple[str, int]:
    where = f"{record.source}:{record.line}"
    if not isinstance(text, str):
        raise DataError(f"{where}: an answer must be a string, found {text!r}")
    if isinstance(start, str) and record.source.lower().endswith(".csv"):
        # Every CSV cell is text: an answer_start column holds "30", and an empty cell means "not given".
        cell = start.strip()
        start = int(cell) if cell.isdecimal() and len(cell) < 19 else None if not cell else start
    if start is None:
        start = context.find(text)
        if start < 0:
            raise DataError(f"{where}: the answer {text!r} does not occur in the context; extractive QA answers "
                            "must be copied from the context (or give answer_start)")
    elif isinstance(start, bool) or not isinstance(start, int) or not 0 <= start <= len(context) - len(text):
        raise DataError(f"{where}: answer_start {start!r} is not a position in the context")
    elif context[start:start + len(text)] != text:
        raise DataError(f"{where}: the context at answer_start {start} reads "
                        f"{context[start:start + len(text)]!r}, not the answer {text!r}")
    return text, start


def _answers(record: Record, context: str) -> list[tuple[str, int]]:
    fields = record.fields
    if "answer" in fields:
        if fields["answer"] == "":
            return []
        return [_locate(record, context, fields["answer"], fields.get("answer_start"))]
    raw = fields["answers"]
    if isinstance(raw, dict) and isinstance(raw.get("text"), list):
        starts = raw.get("answer_start") or [None] * len(raw["text"])
        if not isinstance(starts, list):
            raise DataError(f"{record.source}:{record.line}: answers.answer_start must be a list of character "
                            f"offsets, one per answer text, found {starts!r}")
        if len(starts) != len(raw["text"]):
            raise DataError(f"{record.source}:{record.line}: answers has {len(raw['text'])} texts but "
                            f"{len(starts)} answer_start values")
        pairs = list(zip(raw["text"], starts, strict=True))
    elif isinstance(raw, list) and all(isinstance(item, dict) for item in raw):
        pairs = [(item.get("text"), item.get("answer_start")) for item in raw]
    else:
        raise DataError(f"{record.source}:{record.line}: answers must be {{\"text\": [...], \"answer_start\": "
                        f"[...]}} or a list of {{\"text\", \"answer_start\"}}, found {raw!r}")
    return [_locate(record, context, text, start) for text, start in pairs]


def load_qa_examples(path: str | os.PathLike[str], require_answers: bool = True) -> list[QaExample]:
    examples = []
    for record in read_records(path, ("question", "context")):
        context = text_field(record, "context")
        has_answer = "answer" in record.fields or "answers" in record.fields
        if require_answers and not has_answer:
            raise DataError(f"{record.source}:{record.line}: no answer; give 'answer' (a span of the context, "
                            "\"\" for none) or SQuAD-style 'answers'")
        examples.append(QaExample(question=text_field(record, "question"), context=context,
                                  answers=_answers(record, context) if has_answer else [],
                                  origin=f"{record.source}:{record.line}"))
    return examples


# --- SQuAD scoring -------------------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalization: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def answer_f1(predicted: str, gold: str) -> float:
    predicted_tokens, gold_tokens = normalize_answer(predicted).split(), normalize_answer(gold).split()
    if not predicted_tokens or not gold_tokens:
        return float(predicted_tokens == gold_tokens)
    common = sum((Counter(predicted_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted_tokens), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: Sequence[str], golds: Sequence[Sequence[str]]) -> dict[str, float]:
    """Exact match and F1, each the best over an example's gold answers (``[""]`` for no answer)."""
    exact = [max(float(normalize_answer(p) == normalize_answer(g)) for g in gold) for p, gold in
             zip(predictions, golds, strict=True)]
    f1 = [max(answer_f1(p, g) for g in gold) for p, gold in zip(predictions, golds, strict=True)]
    return {"exact_match": float(np.mean(exact)), "f1": float(np.mean(f1))}


# --- the task ------------------------------------------------------------------------------------------

def _span_targets(window, answer: tuple[str, int] | None) -> tuple[int, int]:
    """Token positions of the answer in ``window``, or (0, 0) when the window does not hold all of it."""
    if answer is None:
        return 0, 0
    text, char_start = answer
    char_end = char_start + len(text)
    context_tokens = [i for i, sequence in enumerate(window.sequence_ids) if sequence == 1]
    if not context_tokens:
        return 0, 0
    first, last = context_tokens[0], context_tokens[-1]
    if window.offsets[first][0] > char_start or window.offsets[last][1] < char_end:
        return 0, 0
    start = next(i for i in context_tokens if window.offsets[i][1] > char_start)
    end = next(i for i in reversed(context_tokens) if window.offsets[i][0] < char_end)
    return start, max(start, end)


class QaTask:
    name = TASK_NAME
    metric = "f1"
    higher_is_better = True

    def __init__(self, tokenizer, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.stride = max(8, max_length // 4)

    def _data(self, examples: list[QaExample], with_targets: bool) -> QaData:
        windows = self.tokenizer.encode_pairs([e.question for e in examples], [e.context for e in examples],
                                              self.stride, [e.origin or f"question {i + 1}"
                                                            for i, e in enumerate(examples)])
        encoded, targets, context = [], [], []
        for index, (example, pieces) in enumerate(zip(examples, windows, strict=True)):
            for window in pieces:
                encoded.append((window.ids, window.type_ids))
                context.append((index, window))
                if with_targets:
                    targets.append(_span_targets(window, example.answers[0] if example.answers else None))
        return QaData(encoded=encoded, targets=targets if with_targets else None, context=context, examples=examples)

    def load(self, path: str | os.PathLike[str], require_targets: bool = True) -> QaData:
        return self._data(load_qa_examples(path, require_answers=require_targets), require_targets)

    def from_texts(self, texts: Sequence[str], context: str | None = None) -> QaData:
        if not context or not context.strip():
            raise ConfigError("a qa bundle answers questions about a context: give the context text "
                              "(--context TEXT or --context-file FILE)")
        return self._data([QaExample(question=q, context=context, answers=[]) for q in texts], False)

    def targets(self, data: TaskData, rows: Sequence[int], length: int) -> dict[str, np.ndarray]:
        positions = np.asarray([data.targets[row] for row in rows], dtype=np.int64).reshape(len(rows), 2)
        if self.tokenizer.left_padding:
            positions += np.asarray([length - len(data.encoded[row][0]) for row in rows], dtype=np.int64)[:, None]
        return {"start_positions": positions[:, 0].copy(), "end_positions": positions[:, 1].copy()}

    def reduce_output(self, data: TaskData, row: int, outputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        return outputs["start_logits"], outputs["end_logits"]

    def _best_answers(self, data: QaData, outputs: list[tuple[np.ndarray, np.ndarray]]) -> list[Answer]:
        best: list[Answer | None] = [None] * len(data.examples)
        null: list[float] = [np.inf] * len(data.examples)
        for (index, window), (start_logits, end_logits) in zip(data.context, outputs, strict=True):
            null[index] = min(null[index], float(start_logits[0] + end_logits[0]))
            in_context = np.asarray([sequence == 1 for sequence in window.sequence_ids])
            starts = np.where(in_context, start_logits, -np.inf)
            ends = np.where(in_context, end_logits, -np.inf)
            context_text = data.examples[index].context
            for s in np.argsort(starts)[::-1][:_CANDIDATES]:
                if not in_context[s]:
                    break
                for e in np.argsort(ends)[::-1][:_CANDIDATES]:
                    if not in_context[e]:
                        break
                    if e < s or e - s + 1 > MAX_ANSWER_TOKENS:
                        continue
                    score = float(starts[s] + ends[e])
                    if best[index] is None or score > best[index].score:
                        char_start, char_end = window.offsets[s][0], window.offsets[e][1]
                        best[index] = Answer(context_text[char_start:char_end], score, char_start, char_end)
        return [answer if answer is not None and answer.score >= null[i] else Answer("", null[i], -1, -1)
                for i, answer in enumerate(best)]

    def score(self, data: QaData, outputs: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
        losses = [(cross_entropy(start[None], np.asarray([s])) + cross_entropy(end[None], np.asarray([e]))) / 2
                  for (start, end), (s, e) in zip(outputs, data.targets, strict=True)]
        predicted = [answer.text for answer in self._best_answers(data, outputs)]
        golds = [[text for text, _ in example.answers] or [""] for example in data.examples]
        return squad_scores(predicted, golds) | {"loss": float(np.mean(losses)), "examples": len(data.examples)}

    def predict(self, data: QaData, outputs: list[tuple[np.ndarray, np.ndarray]]) -> list[Answer]:
        return self._best_answers(data, outputs)


def sample_spans(batch: dict[str, np.ndarray], _classes: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    rows, length = batch["input_ids"].shape
    start = rng.integers(0, length, size=rows)
    return {"start_positions": start.astype(np.int64),
            "end_positions": np.minimum(start + rng.integers(0, 3, size=rows), length - 1).astype(np.int64)}


SPEC = TaskSpec(
    name=TASK_NAME,
    summary="extractive question answering: an answer span in a context (exact match, F1)",
    peft_task_type="QUESTION_ANS",
    host=HostSpec(auto_model="AutoModelForQuestionAnswering", outputs=("start_logits", "end_logits"),
                  per_token=True, targets=(TargetSpec("start_positions", "int64", ("batch",)),
                                           TargetSpec("end_positions", "int64", ("batch",))),
                  loss=span_cross_entropy, sample_targets=sample_spans, class_axis=False),
    device=lambda manifest, tokenizer: QaTask(tokenizer, manifest.max_length),
    uses_labels=False,
)
