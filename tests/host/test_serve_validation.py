"""Upload-time validation of training files (edge_sdk.serve.validation): task detection, counts, labels, and
errors that name the user's file and line instead of the server's temporary path. No model, no tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_sdk.errors import ConfigError, DataError
from edge_sdk.serve.validation import DataSummary, detect_task, validate_data_file
from edge_sdk.tasks.registry import TASK_NAMES


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows),
                    encoding="utf-8")
    return path


VALID = {
    "seq-cls": ([{"text": "great film", "label": "pos"}, {"text": "dull", "label": "neg"},
                 {"text": "fine", "label": "pos"}], ["neg", "pos"]),
    "multi-label": ([{"text": "a", "labels": ["sport", "film"]}, {"text": "b", "labels": []},
                     {"text": "c", "labels": ["news"]}], ["film", "news", "sport"]),
    "token-cls": ([{"tokens": ["Paris", "is", "nice"], "tags": ["B-LOC", "O", "O"]},
                   {"tokens": ["Ann", "Lee", "came"], "tags": ["B-PER", "I-PER", "O"]}],
                  ["B-LOC", "B-PER", "I-PER", "O"]),
    "qa": ([{"question": "Where?", "context": "He lives in Paris.", "answer": "Paris"},
            {"question": "Who?", "context": "Ann came.", "answers": {"text": ["Ann"], "answer_start": [0]}},
            {"question": "When?", "context": "No date here.", "answer": ""}], None),
    "causal-lm": ([{"text": "Once upon a time"}, {"prompt": "Hi", "response": "Hello!"}], None),
    "seq2seq": ([{"source": "hello", "target": "bonjour"}, {"source": "cat", "target": "chat"}], None),
}


def test_every_registered_task_has_a_valid_example():
    assert set(VALID) == set(TASK_NAMES)


@pytest.mark.parametrize("task", sorted(VALID))
def test_valid_file_is_detected_counted_and_its_labels_collected(tmp_path: Path, task: str):
    rows, labels = VALID[task]
    path = write_jsonl(tmp_path / "upload-123.jsonl", rows)
    assert detect_task(path) == task
    summary = validate_data_file(path, display_name="train.jsonl")
    assert summary == DataSummary(task=task, examples=len(rows), labels=labels)
    assert summary.to_dict() == {"task": task, "examples": len(rows), "labels": labels}
    assert validate_data_file(path, task=task) == summary


def test_given_labels_accept_a_file_using_some_of_them(tmp_path: Path):
    path = write_jsonl(tmp_path / "t.jsonl", VALID["seq-cls"][0])
    summary = validate_data_file(path, task="seq-cls", labels=["neg", "neutral", "pos"])
    assert summary.labels == ["neg", "pos"]


def test_not_json_on_line_3_names_the_upload_and_the_line(tmp_path: Path):
    path = write_jsonl(tmp_path / "tmp9f8e.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": "y"},
                                                    "{not json"])
    with pytest.raises(DataError) as caught:
        validate_data_file(path, display_name="my-train.jsonl")
    message = str(caught.value)
    assert "my-train.jsonl:3" in message and "not valid JSON" in message
    assert str(tmp_path) not in message


def test_missing_field_names_the_line_and_the_field(tmp_path: Path):
    path = write_jsonl(tmp_path / "u.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": "y"},
                                              {"text": "c"}])
    with pytest.raises(DataError, match=r"^train\.jsonl:3: missing field 'label'"):
        validate_data_file(path, display_name="train.jsonl")


def test_label_outside_the_given_labels_names_the_line(tmp_path: Path):
    path = write_jsonl(tmp_path / "u.jsonl", [{"text": "a", "label": "pos"}, {"text": "b", "label": "meh"}])
    with pytest.raises(DataError, match=r"^train\.jsonl:2: unknown label 'meh'"):
        validate_data_file(path, labels=["neg", "pos"], display_name="train.jsonl")


@pytest.mark.parametrize(("task", "rows", "labels", "expected"), [
    ("multi-label", [{"text": "a", "labels": ["x"]}, {"text": "b", "labels": ["x", "z"]}], ["x", "y"],
     r"^d\.jsonl:2: unknown label 'z'"),
    ("token-cls", [{"tokens": ["A"], "tags": ["B-PER"]}, {"tokens": ["B"], "tags": ["B-LOC"]}], ["O", "B-PER", "I-PER"],
     r"^d\.jsonl:2: unknown tag 'B-LOC'"),
])
def test_label_outside_the_given_labels_for_other_label_tasks(tmp_path, task, rows, labels, expected):
    path = write_jsonl(tmp_path / "u.jsonl", rows)
    with pytest.raises(DataError, match=expected):
        validate_data_file(path, task=task, labels=labels, display_name="d.jsonl")


def test_file_matching_no_task_lists_the_accepted_fields(tmp_path: Path):
    path = write_jsonl(tmp_path / "u.jsonl", [{"foo": 1, "bar": 2}])
    with pytest.raises(DataError) as caught:
        validate_data_file(path, display_name="data.jsonl")
    message = str(caught.value)
    assert message.startswith("data.jsonl:1: fields 'foo', 'bar' match no task")
    for fields in ("text + label", "tokens + tags", "question + context", "prompt + response", "source + target"):
        assert fields in message


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file_is_rejected(tmp_path: Path, content: str):
    path = tmp_path / "u.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=r"^empty\.jsonl: file contains no examples"):
        validate_data_file(path, display_name="empty.jsonl")


def test_csv_classification(tmp_path: Path):
    path = tmp_path / "u.csv"
    path.write_text('text,label\n"good, really",pos\nbad,neg\nok,pos\n', encoding="utf-8")
    assert validate_data_file(path, display_name="reviews.csv") == DataSummary("seq-cls", 3, ["neg", "pos"])


def test_csv_error_names_the_row(tmp_path: Path):
    path = tmp_path / "u.csv"
    path.write_text("text,label\ngood,pos\nbad,neg,extra\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"^reviews\.csv:3: row has 3 values"):
        validate_data_file(path, display_name="reviews.csv")


def test_csv_multi_label(tmp_path: Path):
    path = tmp_path / "u.csv"
    path.write_text("text,labels\na,x;y\nb,\n", encoding="utf-8")
    assert validate_data_file(path) == DataSummary("multi-label", 2, ["x", "y"])


def test_csv_is_refused_for_token_classification(tmp_path: Path):
    path = tmp_path / "u.csv"
    path.write_text("tokens,tags\nParis,B-LOC\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"^ner\.csv: CSV is not supported for named-entity recognition"):
        validate_data_file(path, display_name="ner.csv")


def test_unsupported_extension_names_the_upload(tmp_path: Path):
    path = write_jsonl(tmp_path / "u.jsonl", VALID["seq-cls"][0])
    with pytest.raises(DataError, match=r"^train\.txt: unsupported data file extension '\.txt'"):
        validate_data_file(path, display_name="train.txt")


def test_single_class_file_needs_another_class(tmp_path: Path):
    path = write_jsonl(tmp_path / "u.jsonl", [{"text": "a", "label": "pos"}, {"text": "b", "label": "pos"}])
    with pytest.raises(DataError, match=r"^t\.jsonl: the file has 1 distinct label\(s\) \('pos'\), but seq-cls"):
        validate_data_file(path, display_name="t.jsonl")


def test_integer_labels_are_class_names(tmp_path: Path):
    path = write_jsonl(tmp_path / "u.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 1}])
    assert validate_data_file(path).labels == ["0", "1"]


def test_bad_record_after_a_good_first_one_is_found(tmp_path: Path):
    rows = [{"tokens": ["A", "B"], "tags": ["B-PER", "I-PER"]}, {"tokens": ["C", "D"], "tags": ["O"]}]
    path = write_jsonl(tmp_path / "u.jsonl", rows)
    with pytest.raises(DataError, match=r"^n\.jsonl:2: field 'tags' has 1 tags but field 'tokens' has 2"):
        validate_data_file(path, display_name="n.jsonl")


def test_qa_answer_not_in_context(tmp_path: Path):
    path = write_jsonl(tmp_path / "u.jsonl", [{"question": "Q?", "context": "abc", "answer": "xyz"}])
    with pytest.raises(DataError, match=r"^q\.jsonl:1: the answer 'xyz' does not occur in the context"):
        validate_data_file(path, display_name="q.jsonl")


def test_causal_lm_empty_text_and_chat_messages(tmp_path: Path):
    path = write_jsonl(tmp_path / "u.jsonl", [{"text": "ok"}, {"text": " "}])
    with pytest.raises(DataError, match=r"^c\.jsonl:2: field 'text' must be a non-empty string"):
        validate_data_file(path, display_name="c.jsonl")
    path = write_jsonl(tmp_path / "m.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(DataError, match=r"^c\.jsonl:1: chat 'messages' records are not supported"):
        validate_data_file(path, display_name="c.jsonl")


def test_a_list_label_points_at_multi_label(tmp_path: Path):
    path = write_jsonl(tmp_path / "u.jsonl", [{"text": "a", "label": ["x", "y"]}])
    with pytest.raises(DataError, match=r"name the field 'labels'"):
        validate_data_file(path, display_name="x.jsonl")


def test_wrong_task_or_labels_are_config_errors(tmp_path: Path):
    path = write_jsonl(tmp_path / "u.jsonl", VALID["qa"][0])
    with pytest.raises(ConfigError, match="unknown task"):
        validate_data_file(path, task="translation")
    with pytest.raises(ConfigError, match="takes no labels"):
        validate_data_file(path, labels=["a", "b"])


def test_explicit_task_checks_its_own_fields(tmp_path: Path):
    path = write_jsonl(tmp_path / "u.jsonl", VALID["causal-lm"][0])
    with pytest.raises(DataError, match=r"^f\.jsonl:1: missing field 'label'"):
        validate_data_file(path, task="seq-cls", display_name="f.jsonl")


def test_no_usable_label_at_all(tmp_path: Path):
    path = write_jsonl(tmp_path / "u.jsonl", [{"text": "a", "label": None}, {"text": "b", "label": True}])
    with pytest.raises(DataError, match=r"^f\.jsonl:1: label must be a non-empty string or an integer, found None"):
        validate_data_file(path, display_name="f.jsonl")
