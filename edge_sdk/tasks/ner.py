"""Token classification (named-entity recognition with BIO tags): the device-safe part of the task.

Data schema: JSON Lines, one sentence per line, ``{"tokens": ["Paris", "is", "nice"], "tags": ["B-LOC",
"O", "O"]}``; ``tags`` is needed for training and evaluation and has one tag per token, each one of the
bundle's tag names. Tags follow BIO (IOB2): ``O`` outside any entity, ``B-TYPE`` begins an entity, ``I-TYPE``
continues it. Standard library only: no torch on devices.

The metric is entity-level F1 with the semantics of CoNLL's ``conlleval`` script (and ``seqeval``'s default
mode): an entity counts as correct only when its type, start and end all match a gold entity.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edge_sdk.errors import ConfigError, DataError
from edge_sdk.tasks.data import CSV_SUFFIXES, Record, read_records

OUTSIDE = "O"
BEGIN = "B-"
INSIDE = "I-"


@dataclass(frozen=True)
class TaggedSentence:
    """One tokenised sentence with tag indices into the bundle's tag names (``None`` when untagged)."""

    tokens: list[str]
    tags: list[int] | None
    source: str
    line: int


def load_tagged_sentences(
    path: str | os.PathLike[str],
    tag_names: Sequence[str],
    require_tags: bool = True,
) -> list[TaggedSentence]:
    """Load tagged sentences from a JSON Lines file and map their tags to indices of ``tag_names``.

    ``tag_names`` must be unique BIO tags (``O``, ``B-X``, ``I-X``); otherwise :class:`ConfigError`.
    With ``require_tags=False`` the ``tags`` field is optional (``null`` counts as absent), but tags
    that are present are still checked: they would otherwise be scored. Every data problem raises
    :class:`DataError` naming file and line.
    """
    names = _check_tag_names(tag_names)
    index_of = {name: i for i, name in enumerate(names)}
    required = ("tokens", "tags") if require_tags else ("tokens",)
    sentences: list[TaggedSentence] = []
    for record in _read_jsonl(path, required):
        tokens = _tokens_of(record)
        raw_tags = record.fields.get("tags")
        if raw_tags is None and not require_tags:
            tags = None
        else:
            tag_strings = _tags_of(record, len(tokens))
            tags = [_tag_index(tag, position, index_of, names, record) for position, tag in enumerate(tag_strings)]
        sentences.append(TaggedSentence(tokens=tokens, tags=tags, source=record.source, line=record.line))
    return sentences


def tag_names_from_file(path: str | os.PathLike[str]) -> list[str]:
    """Tag names for a bundle built from a JSON Lines training file, in a stable order.

    The order is ``O`` first, then one ``B-TYPE``, ``I-TYPE`` pair per entity type, types sorted:
    ``["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]``. ``O`` and both tags of a pair are included even when
    the file lacks them: a training file whose ``X`` entities all happen to be one token long must not
    give a bundle that rejects (or can never predict) a longer ``X`` entity at evaluation time.
    """
    types: set[str] = set()
    for record in _read_jsonl(path, ("tokens", "tags")):
        tokens = _tokens_of(record)
        for position, tag in enumerate(_tags_of(record, len(tokens))):
            parsed = _parse_tag(tag)
            if parsed is None:
                raise DataError(
                    f"{record.source}:{record.line}: tag {tag!r} (token {position + 1}) is not a BIO tag. "
                    f"Use {OUTSIDE!r}, 'B-TYPE' or 'I-TYPE' (for example 'B-PER', 'I-PER')."
                )
            if parsed[1]:
                types.add(parsed[1])
    return [OUTSIDE] + [f"{prefix}{entity_type}" for entity_type in sorted(types) for prefix in (BEGIN, INSIDE)]


def entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Entity spans ``(type, start, end_exclusive)`` of a BIO/IOB2 tag sequence, in order.

    Follows ``conlleval``: ``B-X`` always starts an entity; ``I-X`` continues the entity before it only
    when that entity has type ``X``, and otherwise starts a new one (so ill-formed sequences such as
    ``O I-PER`` still yield an entity, as a model's raw predictions may); ``O`` ends an entity.
    Raises :class:`ConfigError` for a tag that is neither ``O`` nor ``B-``/``I-`` plus a type.
    """
    spans: list[tuple[str, int, int]] = []
    current_type: str | None = None
    start = 0
    for position, tag in enumerate(tags):
        parsed = _parse_tag(tag)
        if parsed is None:
            raise ConfigError(
                f"tag {tag!r} at position {position} is not a BIO tag. Tag names must be {OUTSIDE!r}, "
                "'B-TYPE' or 'I-TYPE' (for example 'B-PER'); rebuild the bundle with BIO tag names."
            )
        prefix, entity_type = parsed
        continues = prefix == INSIDE and entity_type == current_type
        if continues:
            continue
        if current_type is not None:
            spans.append((current_type, start, position))
        current_type = entity_type or None
        start = position
    if current_type is not None:
        spans.append((current_type, start, len(tags)))
    return spans


def entity_f1(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict[str, float]:
    """Micro-averaged entity-level ``{"f1", "precision", "recall"}`` over all sentences.

    A predicted entity is correct only when type, start and end all equal a gold entity's; partial
    overlaps count as one false positive and one false negative. As in ``conlleval`` and ``seqeval``,
    a ratio whose denominator is zero is 0.0: no predicted entities gives precision 0.0, no gold entities
    gives recall 0.0, so a data set without any gold or predicted entity scores 0.0 everywhere, not 1.0.
    Raises :class:`DataError` when the sentence counts or any sentence's lengths differ, or there are no
    sentences.
    """
    true_positives, n_gold, n_predicted = 0, 0, 0
    for gold_spans, predicted_spans in _spans_per_sentence(gold, predicted, "entity_f1"):
        true_positives += len(gold_spans & predicted_spans)
        n_gold += len(gold_spans)
        n_predicted += len(predicted_spans)
    return _scores(true_positives, n_gold, n_predicted)


def entity_f1_by_type(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict[str, dict[str, float]]:
    """Entity-level scores per entity type: ``{type: {"f1", "precision", "recall", "support"}}``.

    ``support`` is the number of gold entities of the type. Types seen in gold or in the predictions are
    listed, sorted; a type only ever predicted has recall and F1 0.0. Same matching, zero-division rule
    and errors as :func:`entity_f1`.
    """
    counts: dict[str, list[int]] = {}  # type -> [true positives, gold, predicted]
    for gold_spans, predicted_spans in _spans_per_sentence(gold, predicted, "entity_f1_by_type"):
        for span in gold_spans:
            counts.setdefault(span[0], [0, 0, 0])[1] += 1
        for span in predicted_spans:
            counts.setdefault(span[0], [0, 0, 0])[2] += 1
        for span in gold_spans & predicted_spans:
            counts[span[0]][0] += 1
    return {
        entity_type: {**_scores(tp, n_gold, n_predicted), "support": n_gold}
        for entity_type, (tp, n_gold, n_predicted) in sorted(counts.items())
    }


def _spans_per_sentence(
    gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]], caller: str
) -> list[tuple[set[tuple[str, int, int]], set[tuple[str, int, int]]]]:
    if len(gold) != len(predicted):
        raise DataError(
            f"{caller} got {len(predicted)} predicted sentences for {len(gold)} gold sentences. "
            "Predict one tag sequence per sentence."
        )
    if not gold:
        raise DataError(f"{caller} needs at least one sentence, but there are none. Check the data file.")
    pairs = []
    for index, (gold_tags, predicted_tags) in enumerate(zip(gold, predicted, strict=True)):
        # A plain string is a Sequence[str] too; it would be split into one-character "tags".
        for name, tags in (("gold", gold_tags), ("predicted", predicted_tags)):
            if isinstance(tags, str):
                raise DataError(
                    f"{caller}: {name} sentence {index} is the string {tags!r}, not a list of tags. "
                    "Pass one list of tag strings per sentence."
                )
        if len(gold_tags) != len(predicted_tags):
            raise DataError(
                f"{caller}: sentence {index} has {len(gold_tags)} gold tags but {len(predicted_tags)} predicted "
                "tags. Predict exactly one tag per token."
            )
        pairs.append((set(entities(gold_tags)), set(entities(predicted_tags))))
    return pairs


def _scores(true_positives: int, n_gold: int, n_predicted: int) -> dict[str, float]:
    precision = true_positives / n_predicted if n_predicted else 0.0
    recall = true_positives / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"f1": f1, "precision": precision, "recall": recall}


def _parse_tag(tag: object) -> tuple[str, str] | None:
    """``(prefix, type)`` of a BIO tag, ``("O", "")`` for outside; ``None`` when it is not one."""
    if tag == OUTSIDE:
        return OUTSIDE, ""
    if isinstance(tag, str) and tag.startswith((BEGIN, INSIDE)) and tag[2:].strip():
        return tag[:2], tag[2:]
    return None


def _check_tag_names(tag_names: Sequence[str]) -> list[str]:
    # A plain string would be read as one tag per character.
    if isinstance(tag_names, str):
        raise ConfigError(f"tag_names is the string {tag_names!r}; pass a list of tag names such as ['O', 'B-PER'].")
    names = list(tag_names)
    if not names:
        raise ConfigError("tag_names is empty. Pass the bundle's tag names (at least 'O').")
    invalid = [name for name in names if _parse_tag(name) is None]
    if invalid:
        raise ConfigError(
            f"tag_names has non-BIO tag(s) {', '.join(repr(name) for name in invalid)}. "
            f"Use {OUTSIDE!r}, 'B-TYPE' and 'I-TYPE' names, e.g. from tag_names_from_file on the training data."
        )
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(f"tag_names repeats {', '.join(repr(d) for d in duplicates)}. Tag names must be unique.")
    return names


def _read_jsonl(path: str | os.PathLike[str], required: Sequence[str]) -> list[Record]:
    # read_records would accept CSV, but a CSV cell cannot hold a token list without an ad-hoc encoding
    # whose splitting rules would silently disagree with the user's tokenisation.
    source = os.fspath(path)
    if Path(source).suffix.lower() in CSV_SUFFIXES:
        raise DataError(
            f"{source}: CSV is not supported for named-entity recognition: a row cannot hold a list of "
            'tokens and tags. Use JSON Lines (.jsonl), one sentence per line: {"tokens": ["Paris", "is", '
            '"nice"], "tags": ["B-LOC", "O", "O"]}.'
        )
    return read_records(source, required)


def _tokens_of(record: Record) -> list[str]:
    where = f"{record.source}:{record.line}"
    tokens = record.fields.get("tokens")
    if not isinstance(tokens, list):
        raise DataError(
            f"{where}: field 'tokens' must be a JSON array of strings, found {_kind(tokens)}. "
            'Split the sentence into tokens, e.g. "tokens": ["Paris", "is", "nice"].'
        )
    if not tokens:
        raise DataError(f"{where}: field 'tokens' is empty. Remove the sentence or add its tokens.")
    for position, token in enumerate(tokens):
        # Whitespace inside a token is allowed (some corpora keep "New York" as one token); an empty
        # token is not, since it has no text a tokenizer could map to the tag.
        if not isinstance(token, str) or not token.strip():
            raise DataError(
                f"{where}: token {position + 1} of {len(tokens)} is {token!r}; every token must be a non-empty "
                "string. Remove empty tokens (and their tags) or put the token in quotes."
            )
    return tokens


def _tags_of(record: Record, n_tokens: int) -> list[str]:
    where = f"{record.source}:{record.line}"
    tags = record.fields.get("tags")
    if tags is None:
        raise DataError(f"{where}: field 'tags' is null. Give one tag per token, e.g. ['B-LOC', 'O', 'O'].")
    if not isinstance(tags, list):
        raise DataError(
            f"{where}: field 'tags' must be a JSON array of tag strings, found {_kind(tags)}. "
            'Give one tag per token, e.g. "tags": ["B-LOC", "O", "O"].'
        )
    if len(tags) != n_tokens:
        raise DataError(
            f"{where}: field 'tags' has {len(tags)} tags but field 'tokens' has {n_tokens} tokens. "
            "Give exactly one tag per token."
        )
    for position, tag in enumerate(tags):
        if not isinstance(tag, str):
            raise DataError(
                f"{where}: tag {position + 1} is {tag!r}, not a string. Write tags as names such as 'B-PER' or 'O'."
            )
    return tags


def _tag_index(tag: str, position: int, index_of: dict[str, int], names: list[str], record: Record) -> int:
    if tag not in index_of:
        raise DataError(
            f"{record.source}:{record.line}: unknown tag {tag!r} (token {position + 1}); allowed tags: "
            f"{', '.join(repr(name) for name in names)}. Fix the data, or rebuild the bundle with this tag in "
            "its tag list."
        )
    return index_of[tag]


def _kind(value: object) -> str:
    # JSON's names ("string", "object"), which is what users see in their files.
    names = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean"}
    return "null" if value is None else f"{names.get(type(value), type(value).__name__)} {value!r}"
