"""Split one labelled pool into simulated devices: Dirichlet label skew, each device with its own test split.

The usual non-IID benchmark (Hsu et al. 2019): for every class, the share each device gets is drawn from a
Dirichlet distribution with concentration ``alpha`` (0.1: most devices see one or two classes; 100: nearly IID).
Draws are repeated until every device has at least ``min_examples``; each device's rows are then split into its
own train and test files. Rows without a ``label`` (tasks other than classification) are split uniformly at random.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_sdk.bundle.atomic import atomic_folder
from edge_sdk.errors import DataError

_MAX_DRAWS = 100_000


@dataclass(frozen=True)
class DevicePartition:
    index: int
    train: Path
    test: Path
    train_examples: int
    test_examples: int
    labels: dict[str, int]  # examples per label on this device (train and test together)


def read_rows(path: Path) -> list[dict]:
    """The pool's rows: JSON Lines, or CSV with a header (classification data)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as handle:
            return [dict(row) for row in csv.DictReader(handle)]
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: expected a JSON object per line")
            rows.append(row)
    return rows


def dirichlet_indices(labels: list[str], devices: int, alpha: float, rng: np.random.Generator,
                      min_examples: int) -> list[list[int]]:
    """Row indices per device, each class spread over the devices by a Dirichlet(alpha) draw."""
    classes = sorted(set(labels))
    by_class = {label: [i for i, value in enumerate(labels) if value == label] for label in classes}
    for _ in range(_MAX_DRAWS):
        # Sizes come from the cut points alone, so a rejected draw costs a few array operations: with few
        # classes and a small alpha (binary labels, alpha 0.1, 10 devices) one draw in thousands is accepted.
        drawn, sizes = [], np.zeros(devices, dtype=int)
        for label in classes:
            rows = rng.permutation(by_class[label])
            cuts = (np.cumsum(rng.dirichlet([alpha] * devices)) * len(rows)).astype(int)[:-1]
            drawn.append((rows, cuts))
            sizes += np.diff(cuts, prepend=0, append=len(rows))
        if sizes.min() >= min_examples:
            shares: list[list[int]] = [[] for _ in range(devices)]
            for rows, cuts in drawn:
                for device, part in enumerate(np.split(rows, cuts)):
                    shares[device].extend(int(i) for i in part)
            return [sorted(part) for part in shares]
    raise DataError(f"could not give each of {devices} devices {min_examples} examples in {_MAX_DRAWS} Dirichlet "
                    f"draws (alpha {alpha}, {len(labels)} examples); use fewer devices, a larger alpha or more data")


def partition(pool: Path, out: Path, devices: int, alpha: float | None, seed: int = 0, test_fraction: float = 0.2,
              min_examples: int = 10) -> list[DevicePartition]:
    """Write ``out/device-KK/{train,test}.jsonl`` for ``devices`` devices; ``alpha`` None splits IID."""
    if not isinstance(devices, int) or devices < 1:
        raise DataError(f"--devices must be a positive whole number, got {devices!r}")
    if alpha is not None and not (alpha > 0 and math.isfinite(alpha)):
        raise DataError(f"--alpha must be a positive number, got {alpha!r}")
    if not 0 < test_fraction < 1:
        raise DataError(f"the test fraction must be in (0, 1), got {test_fraction!r}")
    rows = read_rows(pool)
    rng = np.random.default_rng(seed)
    labelled = bool(rows) and all(isinstance(row.get("label"), (str, int)) for row in rows)
    if alpha is not None and not labelled:
        raise DataError(f"{pool}: label skew (--alpha) needs a 'label' on every row (classification data); "
                        "leave --alpha out to split these rows uniformly")
    if len(rows) < devices * min_examples:
        raise DataError(f"{pool}: {len(rows)} examples cannot give {devices} devices {min_examples} each")
    if alpha is None:
        shares = [sorted(int(i) for i in part) for part in np.array_split(rng.permutation(len(rows)), devices)]
    else:
        shares = dirichlet_indices([str(row["label"]) for row in rows], devices, alpha, rng, min_examples)
    result = []
    with atomic_folder(Path(out), overwrite=True) as staging:
        for index, share in enumerate(shares):
            order = [share[i] for i in rng.permutation(len(share))]
            test_count = max(1, round(len(order) * test_fraction))
            folder = staging / f"device-{index:02d}"
            folder.mkdir()
            for name, part in (("test", order[:test_count]), ("train", order[test_count:])):
                with open(folder / f"{name}.jsonl", "w", encoding="utf-8") as handle:
                    for i in part:
                        handle.write(json.dumps(rows[i], ensure_ascii=False) + "\n")
            counts: dict[str, int] = {}
            for i in share:
                key = str(rows[i].get("label", ""))
                counts[key] = counts.get(key, 0) + 1
            final = Path(out) / folder.name
            result.append(DevicePartition(index, final / "train.jsonl", final / "test.jsonl",
                                          len(order) - test_count, test_count, counts if labelled else {}))
    return result
