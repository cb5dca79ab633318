"""Make a "user's own writing" data set for causal-LM personalization from one BBC News topic.

    python tools/prepare_notes.py --out DIR [--topic tech] [--train 160] [--dev 40] [--test 60]
                                  [--sentences 3] [--seed 0]

Writes ``train.jsonl``, ``dev.jsonl`` and ``test.jsonl`` of ``{"text": passage}``, each passage a few
consecutive sentences of one article. Articles, not passages, are split between the files (seeded), so
held-out passages come from articles the model never trained on: perplexity on them measures how well
the adapter learned the writer's style and subject, not memorized sentences. Standard library only.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/ is a folder of scripts, not a package

from corpus_files import SPLITS, write_jsonl  # noqa: E402
from prepare_bbc import find_bbc_data_dir, load_corpus  # noqa: E402

# A sentence ends at . ! ? followed by a space and a capital letter or a quote.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


def passages(article: str, sentences: int) -> list[str]:
    """Consecutive groups of ``sentences`` sentences (the title line, which has no full stop, is dropped)."""
    parts = [part.strip() for part in _SENTENCE_END.split(article) if part.strip()]
    body = parts[1:] if len(parts) > 1 else parts
    return [" ".join(body[i:i + sentences]) for i in range(0, len(body) - sentences + 1, sentences)]


def prepare_notes(out_dir: str | Path, topic: str = "tech", counts: dict[str, int] | None = None,
                  sentences: int = 3, seed: int = 0) -> dict[str, int]:
    counts = counts or {"train": 160, "dev": 40, "test": 60}
    by_topic, _ = load_corpus(find_bbc_data_dir())
    if topic not in by_topic:
        raise ValueError(f"unknown topic {topic!r}; the corpus has {', '.join(sorted(by_topic))}")
    articles = list(by_topic[topic])
    random.Random(seed).shuffle(articles)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    cursor = 0
    for split in SPLITS:
        chosen: list[str] = []
        while len(chosen) < counts[split] and cursor < len(articles):
            chosen.extend(passages(articles[cursor], sentences))
            cursor += 1
        if len(chosen) < counts[split]:
            raise ValueError(f"topic {topic!r} has too few articles for {counts[split]} {split} passages")
        write_jsonl(out / f"{split}.jsonl", ({"text": text} for text in chosen[:counts[split]]))
        written[split] = counts[split]
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--topic", default="tech")
    parser.add_argument("--sentences", type=int, default=3, help="sentences per passage")
    parser.add_argument("--seed", type=int, default=0)
    for split, default in (("train", 160), ("dev", 40), ("test", 60)):
        parser.add_argument(f"--{split}", type=int, default=default, help=f"{split} passages")
    args = parser.parse_args(argv)
    try:
        written = prepare_notes(args.out, args.topic, {s: getattr(args, s) for s in SPLITS}, args.sentences,
                                args.seed)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    print(f"wrote {', '.join(f'{n} {s}' for s, n in written.items())} passages of BBC {args.topic} to {args.out}")


if __name__ == "__main__":
    main()
