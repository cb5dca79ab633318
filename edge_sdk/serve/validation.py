"""Validate an uploaded training file at upload time, with the task's own readers and no tokenizer or model.

``POST /v1/files`` saves the upload under a temporary name (with the upload's suffix) and calls
:func:`validate_data_file`; a :class:`DataError` becomes a 400 whose message names the user's file and line.
The task is detected from the first record's fields when not given; label names come from the file itself
when not given, so nothing but the standard readers is needed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from edge_sdk.errors import ConfigError, DataError
from edge_sdk.tasks import causal_lm, multi_label, ner, qa, seq2seq, seq_cls, token_cls
from edge_sdk.tasks.data import SUPPORTED_SUFFIXES, Record, read_records, text_field
from edge_sdk.tasks.registry import task_spec

# What each task reads, in the words of the error that lists them.
ACCEPTED_FIELDS = (
    ("text + label", seq_cls.TASK_NAME),
    ("text + labels (a list of names)", multi_label.TASK_NAME),
    ("tokens + tags (JSON Lines only)", token_cls.TASK_NAME),
    ("question + context + answer (or SQuAD-style answers)", qa.TASK_NAME),
    ("text, or prompt + response", causal_lm.TASK_NAME),
    ("source + target", seq2seq.TASK_NAME),
)


@dataclass(frozen=True)
class DataSummary:
    """What an uploaded file holds for its task."""

    task: str                  # the task the file was validated for
    examples: int              # number of examples
    labels: list[str] | None   # label / tag names found in the file, sorted; None for tasks without labels

    def to_dict(self) -> dict:
        return {"task": self.task, "examples": self.examples,
                "labels": list(self.labels) if self.labels is not None else None}


def detect_task(path: str | os.PathLike[str], display_name: str | None = None) -> str:
    """The task whose fields the first record of ``path`` has (DataError naming the file and line otherwise)."""
    with _shown_as(path, display_name):
        return _detect(_records(path, display_name)[0])


def validate_data_file(path: str | os.PathLike[str], task: str | None = None, labels: Sequence[str] | None = None,
                       display_name: str | None = None) -> DataSummary:
    """Check every record of ``path`` with ``task``'s reader (``task=None``: detected from the first record).

    With ``labels`` given, a label (tag) outside them is an error naming the line; without, the names are
    taken from the file. Raises :class:`DataError` whose message names ``display_name`` (the uploaded file's
    name, shown instead of the temporary ``path``) and the 1-based line, and says what to fix;
    :class:`ConfigError` for an unknown ``task`` or ``labels`` that do not suit the task.
    """
    if task is not None:
        task_spec(task)  # an unknown task is a ConfigError before the file is read
    given = None if labels is None else [str(label) for label in labels]
    with _shown_as(path, display_name):
        records = _records(path, display_name)
        task = task or _detect(records[0])
        spec = task_spec(task)
        if given is not None:
            spec.validate_labels(given)
        examples, names = _VALIDATORS[task](path, records, given)
        if names is not None and given is None:
            if len(names) < spec.min_labels:
                found = ", ".join(repr(name) for name in names) or "none"
                raise DataError(f"{os.fspath(path)}: the file has {len(names)} distinct label(s) ({found}), but "
                                f"{task} needs at least {spec.min_labels}; add examples of the other classes")
            try:
                spec.validate_labels(names)
            except ConfigError as exc:
                raise DataError(f"{os.fspath(path)}: the file's labels do not suit {task}: {exc}") from None
        return DataSummary(task=task, examples=examples, labels=names)


# --- detection ---------------------------------------------------------------------------------------------

def _detect(record: Record) -> str:
    fields = record.fields
    where = f"{record.source}:{record.line}"
    if "tokens" in fields or "tags" in fields:
        return token_cls.TASK_NAME
    if "question" in fields or "context" in fields:
        return qa.TASK_NAME
    if "source" in fields or "target" in fields:
        return seq2seq.TASK_NAME
    if "labels" in fields:
        return multi_label.TASK_NAME
    if "label" in fields:
        if isinstance(fields["label"], list):
            raise DataError(f"{where}: 'label' is a list; for multi-label classification name the field 'labels' "
                            '(e.g. {"text": "...", "labels": ["a", "c"]}), for one class per text give one label')
        return seq_cls.TASK_NAME
    if "messages" in fields:
        raise DataError(f"{where}: chat 'messages' records are not supported; write each exchange as "
                        '{"prompt": "...", "response": "..."} (or {"text": "..."}) for causal-lm')
    if "text" in fields or "prompt" in fields or "response" in fields:
        return causal_lm.TASK_NAME
    accepted = "; ".join(f"{names} ({name})" for names, name in ACCEPTED_FIELDS)
    raise DataError(f"{where}: fields {', '.join(repr(key) for key in fields) or '(none)'} match no task. "
                    f"Accepted fields: {accepted}")


# --- one validator per task: (path, records read without required fields, given labels) -> (count, labels) ---

def _seq_cls(path, records: list[Record], labels: list[str] | None) -> tuple[int, list[str]]:
    names = labels if labels is not None else sorted({key for record in records
                                                     if (key := _label_key(record.fields.get("label")))})
    if not names:  # no record has a usable label: the reader's missing-field error first, else the first label
        record = read_records(path, ("text", "label"))[0]
        raise DataError(f"{record.source}:{record.line}: label must be a non-empty string or an integer, found "
                        f"{record.fields.get('label')!r}. Give every example its class name")
    examples = seq_cls.load_text_examples(path, names)
    return len(examples), sorted({names[example.label] for example in examples})


def _label_key(raw: object) -> str | None:
    # The reader's own matching: strings stripped, integers by their string form; anything else it rejects.
    if isinstance(raw, str):
        return raw.strip() or None
    if isinstance(raw, int) and not isinstance(raw, bool):
        return str(raw)
    return None


def _multi_label(path, records: list[Record], labels: list[str] | None) -> tuple[int, list[str]]:
    records = read_records(path, ("text", "labels"))
    per_record = []
    for record in records:
        text_field(record, "text")
        names = multi_label._label_names(record)
        if any(not name for name in names):
            raise DataError(f"{record.source}:{record.line}: labels holds an empty name; remove it")
        per_record.append(names)
    allowed = labels if labels is not None else sorted({name for names in per_record for name in names})
    index_of = {name: i for i, name in enumerate(allowed)}
    for record, names in zip(records, per_record, strict=True):
        multi_label.multi_hot(names, index_of, record)
    return len(records), sorted({name for names in per_record for name in names})


def _token_cls(path, records: list[Record], labels: list[str] | None) -> tuple[int, list[str]]:
    names = labels if labels is not None else ner.tag_names_from_file(path)
    sentences = ner.load_tagged_sentences(path, names)
    return len(sentences), sorted({names[tag] for sentence in sentences for tag in sentence.tags or ()})


def _qa(path, records: list[Record], labels: list[str] | None) -> tuple[int, None]:
    return len(qa.load_qa_examples(path, require_answers=True)), None


def _causal_lm(path, records: list[Record], labels: list[str] | None) -> tuple[int, None]:
    # CausalLmTask.load's field rules; its token checks need the bundle's tokenizer and run at training.
    for record in records:
        if "text" in record.fields:
            text_field(record, "text")
        elif "prompt" in record.fields and "response" in record.fields:
            text_field(record, "prompt")
            text_field(record, "response")
        else:
            raise DataError(f"{record.source}:{record.line}: a causal-lm example needs 'text', or 'prompt' and "
                            f"'response'; found fields {', '.join(sorted(record.fields)) or '(none)'}")
    return len(records), None


def _seq2seq(path, records: list[Record], labels: list[str] | None) -> tuple[int, None]:
    records = read_records(path, ("source", "target"))  # Seq2SeqTask.load's fields
    for record in records:
        text_field(record, "source")
        text_field(record, "target")
    return len(records), None


_VALIDATORS = {
    seq_cls.TASK_NAME: _seq_cls,
    multi_label.TASK_NAME: _multi_label,
    token_cls.TASK_NAME: _token_cls,
    qa.TASK_NAME: _qa,
    causal_lm.TASK_NAME: _causal_lm,
    seq2seq.TASK_NAME: _seq2seq,
}


# --- the user's file name in messages ----------------------------------------------------------------------

def _records(path: str | os.PathLike[str], display_name: str | None) -> list[Record]:
    shown = display_name or os.fspath(path)
    suffix = Path(shown).suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataError(f"{shown}: unsupported data file extension {suffix or '(none)'!r}. Use one of "
                        f"{', '.join(SUPPORTED_SUFFIXES)} (JSON Lines for .jsonl/.json/.ndjson, CSV with a header "
                        "row for .csv).")
    return read_records(path, ())


@contextmanager
def _shown_as(path: str | os.PathLike[str], display_name: str | None) -> Iterator[None]:
    """Rewrites the temporary ``path`` in DataErrors raised inside to the user's file name."""
    try:
        yield
    except DataError as exc:
        temporary = os.fspath(path)
        if not display_name or temporary not in str(exc):
            raise
        raise DataError(str(exc).replace(temporary, display_name)) from None
