"""Token classification (named-entity recognition) on the device: a BIO tag per word, scored by
entity-level F1.

Words are split into sub-word tokens by the bundle's tokenizer; as in Hugging Face's recipe, a word's
tag trains and is read at its first sub-token, and the other sub-tokens carry no target.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge_sdk.errors import ConfigError
from edge_sdk.tasks.base import IGNORE_INDEX, TaskData, cross_entropy, padded_token_targets, reject_context
from edge_sdk.tasks.losses import token_cross_entropy
from edge_sdk.tasks.ner import entities, entity_f1, load_tagged_sentences
from edge_sdk.tasks.spec import HostSpec, TargetSpec, TaskSpec

TASK_NAME = "token-cls"


@dataclass(frozen=True)
class TaggedText:
    words: list[str]
    tags: list[str]
    entities: list[dict[str, object]]

    def to_dict(self) -> dict[str, object]:
        return {"words": self.words, "tags": self.tags, "entities": self.entities}

    def to_text(self) -> str:
        return "; ".join(f"{e['type']}: {e['text']}" for e in self.entities) or "(no entities)"


def _first_subtokens(word_ids: list[int | None]) -> dict[int, int]:
    """Word index -> position of its first sub-token (words cut off by truncation are absent)."""
    first: dict[int, int] = {}
    for position, word in enumerate(word_ids):
        if word is not None and word not in first:
            first[word] = position
    return first


class TokenClsTask:
    name = TASK_NAME
    metric = "f1"
    higher_is_better = True

    def __init__(self, labels: Sequence[str], tokenizer) -> None:
        self.labels = list(labels)
        self.tokenizer = tokenizer

    def _data(self, sentences: list[list[str]], tags: list[list[int]] | None) -> TaskData:
        encoded = self.tokenizer.encode_words(sentences)
        targets = None
        if tags is not None:
            targets = []
            for (ids, _, word_ids), word_tags in zip(encoded, tags, strict=True):
                target = np.full(len(ids), IGNORE_INDEX, dtype=np.int64)
                for word, position in _first_subtokens(word_ids).items():
                    target[position] = word_tags[word]
                targets.append(target)
        return TaskData(encoded=[(ids, types) for ids, types, _ in encoded], targets=targets,
                        context=[(words, word_ids) for words, (_, _, word_ids) in zip(sentences, encoded, strict=True)])

    def load(self, path: str | os.PathLike[str], require_targets: bool = True) -> TaskData:
        sentences = load_tagged_sentences(path, self.labels, require_tags=require_targets)
        data = self._data([s.tokens for s in sentences], [s.tags for s in sentences] if require_targets else None)
        # Keep every word's gold tag, also of words truncation cut off: they count as missed entities.
        data.context = [(words, word_ids, [self.labels[t] for t in s.tags] if s.tags else None)
                        for (words, word_ids), s in zip(data.context, sentences, strict=True)]
        return data

    def from_texts(self, texts: Sequence[str], context: str | None = None) -> TaskData:
        reject_context(self.name, context)
        return self._data([text.split() for text in texts], None)

    def reduce_output(self, data: TaskData, row: int, outputs: dict[str, np.ndarray]) -> np.ndarray:
        return outputs["logits"]

    def targets(self, data: TaskData, rows: Sequence[int], length: int) -> dict[str, np.ndarray]:
        return {"labels": padded_token_targets([data.targets[row] for row in rows], length,
                                               self.tokenizer.left_padding)}

    def _word_tags(self, word_ids: list[int | None], n_words: int, logits: np.ndarray) -> list[str]:
        tags = ["O"] * n_words
        for word, position in _first_subtokens(word_ids).items():
            tags[word] = self.labels[int(logits[position].argmax())]
        return tags

    def score(self, data: TaskData, outputs: list[np.ndarray]) -> dict[str, float]:
        gold, predicted = [], []
        for (words, word_ids, gold_tags), logits in zip(data.context, outputs, strict=True):
            gold.append(gold_tags)
            predicted.append(self._word_tags(word_ids, len(words), logits))
        scores = entity_f1(gold, predicted)
        return {
            "f1": scores["f1"],
            "precision": scores["precision"],
            "recall": scores["recall"],
            "loss": cross_entropy(np.concatenate(outputs), np.concatenate(data.targets)),
            "examples": len(outputs),
        }

    def predict(self, data: TaskData, outputs: list[np.ndarray]) -> list[TaggedText]:
        results = []
        for (words, word_ids), logits in zip(data.context, outputs, strict=True):
            tags = self._word_tags(word_ids, len(words), logits)
            spans = [{"type": kind, "text": " ".join(words[start:end]), "start": start, "end": end}
                     for kind, start, end in entities(tags)]
            results.append(TaggedText(words=words, tags=tags, entities=spans))
        return results


def check_bio_labels(labels: Sequence[str]) -> None:
    not_bio = [label for label in labels if label != "O" and label[:2] not in ("B-", "I-")]
    if not_bio:
        raise ConfigError(f"token-cls labels must be BIO tags ('O', 'B-TYPE', 'I-TYPE'); not BIO: {', '.join(not_bio)}")


def sample_token_labels(batch: dict[str, np.ndarray], classes: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    labels = rng.integers(0, classes, size=batch["input_ids"].shape).astype(np.int64)
    labels[batch["attention_mask"] == 0] = IGNORE_INDEX
    return {"labels": labels}


SPEC = TaskSpec(
    name=TASK_NAME,
    summary="named-entity recognition: a BIO tag per word (entity F1)",
    peft_task_type="TOKEN_CLS",
    host=HostSpec(auto_model="AutoModelForTokenClassification", outputs=("logits",), per_token=True,
                  targets=(TargetSpec("labels", "int64", ("batch", "sequence")),), loss=token_cross_entropy,
                  sample_targets=sample_token_labels),
    device=lambda manifest, tokenizer: TokenClsTask(manifest.labels, tokenizer),
    check_labels=check_bio_labels,
)
