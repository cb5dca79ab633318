"""Extractive QA on the device: data schema, windows over long contexts, span targets, SQuAD scoring."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_sdk.device import DeviceBundle
from edge_sdk.errors import ConfigError, DataError
from edge_sdk.tasks.qa import answer_f1, load_qa_examples, normalize_answer, squad_scores


def write_jsonl(path: Path, *records: dict) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def qa_bundle(fixtures_dir: Path) -> DeviceBundle:
    return DeviceBundle.open(fixtures_dir / "tiny-qa")


def test_answer_forms(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "qa.jsonl",
        {"question": "q", "context": "alice met bob in paris", "answer": "bob"},
        {"question": "q", "context": "paris and paris", "answer": "paris", "answer_start": 10},
        {"question": "q", "context": "alice met bob",
         "answers": {"text": ["alice", "alice met"], "answer_start": [0, 0]}},
        {"question": "q", "context": "alice met bob", "answers": [{"text": "bob", "answer_start": 10}]},
        {"question": "q", "context": "alice met bob", "answer": ""},
    )
    examples = load_qa_examples(path)
    assert [e.answers for e in examples] == [
        [("bob", 10)], [("paris", 10)], [("alice", 0), ("alice met", 0)], [("bob", 10)], []]


@pytest.mark.parametrize(("record", "message"), [
    ({"question": "q", "context": "alice met bob", "answer": "carol"}, r"qa\.jsonl:2: the answer 'carol' does not"),
    ({"question": "q", "context": "alice met bob", "answer": "bob", "answer_start": 0}, r":2: the context at"),
    ({"question": "", "context": "alice", "answer": "alice"}, r":2: field 'question' must be a non-empty"),
    ({"question": "q", "context": "alice"}, r":2: no answer"),
    ({"question": "q", "context": "alice", "answers": "alice"}, r":2: answers must be"),
])
def test_bad_records_name_file_and_line(tmp_path: Path, record: dict, message: str) -> None:
    good = {"question": "q", "context": "alice met bob", "answer": "bob"}
    with pytest.raises(DataError, match=message):
        load_qa_examples(write_jsonl(tmp_path / "qa.jsonl", good, record))


def test_squad_normalization_and_scores() -> None:
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert answer_f1("the red team", "red team from london") == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert answer_f1("", "") == 1.0 and answer_f1("x", "") == 0.0
    scores = squad_scores(["Paris", "alice bob", ""], [["paris", "london"], ["bob"], [""]])
    assert scores["exact_match"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx((1 + 2 / 3 + 1) / 3)


def test_long_contexts_become_overlapping_windows_with_the_answer_targeted(qa_bundle: DeviceBundle,
                                                                          tmp_path: Path) -> None:
    words = ("the market and the bank " * 8).split()
    words[30] = "alice"
    context = " ".join(words)
    path = write_jsonl(tmp_path / "long.jsonl", {"question": "player", "context": context, "answer": "alice"})
    data = qa_bundle.task.load(path)
    assert len(data.encoded) > 1  # 40 words in windows of 32 tokens
    assert all(len(ids) <= qa_bundle.manifest.max_length for ids, _ in data.encoded)
    holding = [(window, target) for (_, window), target in zip(data.context, data.targets, strict=True)
               if target != (0, 0)]
    assert holding, "some window must hold the answer"
    for window, (start, end) in holding:
        assert window.sequence_ids[start] == 1
        assert context[window.offsets[start][0]:window.offsets[end][1]] == "alice"


def test_best_span_reads_the_answer_back_from_the_context(qa_bundle: DeviceBundle) -> None:
    context = "the bank in paris and alice"
    data = qa_bundle.task.from_texts(["festival"], context=context)
    (_, window), = data.context
    start_logits = np.zeros(len(window.ids), np.float32)
    end_logits = np.zeros(len(window.ids), np.float32)
    paris = next(i for i, (a, b) in enumerate(window.offsets)
                 if window.sequence_ids[i] == 1 and context[a:b] == "paris")
    start_logits[paris] = end_logits[paris] = 5.0
    answer = qa_bundle.task.predict(data, [(start_logits, end_logits)])[0]
    assert (answer.text, answer.start, answer.end) == ("paris", 12, 17)
    start_logits[0] = end_logits[0] = 9.0  # the first token wins: "no answer in this context"
    assert qa_bundle.task.predict(data, [(start_logits, end_logits)])[0].to_dict()["answer"] == ""


def test_questions_need_a_context(qa_bundle: DeviceBundle) -> None:
    with pytest.raises(ConfigError, match="context"):
        qa_bundle.infer(["player"])


def test_a_context_is_refused_by_other_tasks(fixtures_dir: Path) -> None:
    with pytest.raises(ConfigError, match="question answering"):
        DeviceBundle.open(fixtures_dir / "tiny-seq-cls").infer(["goal"], context="some text")
