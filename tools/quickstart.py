"""`make quickstart`: build the MiniLM topic bundle on the host, personalize it with the torch-free
device environment on BBC News, and print accuracy on held-out documents before and after.

Every step is the `edge-sdk` command a user would type; the script prints each one.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from prepare_bbc import prepare_bbc  # noqa: E402  (tools/ is a folder of scripts, not a package)

HOST_CLI = ROOT / ".venv" / "bin" / "edge-sdk"
DEVICE_CLI = ROOT / ".venv-device" / "bin" / "edge-sdk"
WORK = ROOT / "build" / "quickstart"
BUNDLE = WORK / "topics"
DATA = WORK / "data"


def run(cli: Path, *args: str, capture: bool = False) -> str:
    shown = " ".join(shlex.quote(str(a)) for a in ("edge-sdk", *args))
    print(f"\n$ {shown}   [{cli.parent.parent.name}]", flush=True)
    result = subprocess.run([str(cli), *map(str, args)], check=True, text=True,
                            stdout=subprocess.PIPE if capture else None)
    return result.stdout if capture else ""


def main() -> None:
    started = time.perf_counter()
    counts = prepare_bbc(DATA, train_per_label=80, dev_per_label=20, test_per_label=60, seed=0)
    print(f"BBC News split (seed 0): {counts['train']} train, {counts['dev']} dev, {counts['test']} test "
          f"documents over {len(counts['labels'])} topics -> {DATA}")

    run(HOST_CLI, "build", ROOT / "models" / "minilm-topics.toml", "--out", BUNDLE, "--overwrite")
    run(DEVICE_CLI, "verify", BUNDLE)
    before = json.loads(run(DEVICE_CLI, "evaluate", BUNDLE, "--data", DATA / "test.jsonl", "--adapter", "initial",
                            "--json", capture=True))
    run(DEVICE_CLI, "personalize", BUNDLE, "--data", DATA / "train.jsonl", "--eval-data", DATA / "dev.jsonl",
        "--epochs", "3", "--lr", "2e-3", "--batch-size", "16", "--adapter", "quickstart")
    after = json.loads(run(DEVICE_CLI, "evaluate", BUNDLE, "--data", DATA / "test.jsonl", "--adapter", "quickstart",
                           "--json", capture=True))
    run(DEVICE_CLI, "infer", BUNDLE, "--adapter", "quickstart", "--text",
        "The central bank raised interest rates again as inflation stayed above its target.")

    chance = 1 / len(counts["labels"])
    print(f"\nHeld-out accuracy on {after['examples']} BBC News documents (chance {chance:.2f}):")
    print(f"  before personalization  {before['accuracy']:.3f}")
    print(f"  after personalization   {after['accuracy']:.3f}")
    print(f"quickstart finished in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
