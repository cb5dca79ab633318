"""Generations of a named adapter: every adapter written under a name is kept as a numbered generation, and a
ledger records which were accepted, rejected by the gate, or rolled back.

Layout, inside the bundle's ``adapters/`` folder::

    <name>.safetensors                       the name's current generation: what inference loads
    .generations/<name>/000003.safetensors   generation 3, byte for byte as written (immutable)
    .generations/<name>/history.json         the ledger: one record per generation, oldest first

The current generation is the record whose sha256 equals ``<name>.safetensors``'s, so the ledger never has to
be updated in the same instant as the adapter file: every step replaces one file atomically, and a process
killed between two steps leaves a store whose state is still well defined (a generation file without a record
is dropped; a current adapter without a record is recorded the next time the name is written).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge_sdk.bundle.atomic import atomic_write_text
from edge_sdk.bundle.verification import sha256_file
from edge_sdk.errors import AdapterError

GENERATIONS_FOLDER = ".generations"
LEDGER_NAME = "history.json"
DEFAULT_KEEP = 5

ACCEPTED = "accepted"        # became current when written (or was current before generations were kept)
REJECTED = "rejected"        # written, then refused by the gate: never served
ROLLED_BACK = "rolled-back"  # was current until `adapters rollback` restored an earlier generation
STATUSES = (ACCEPTED, REJECTED, ROLLED_BACK)


@dataclass
class Generation:
    """One adapter written under a name, and what became of it."""

    number: int
    sha256: str
    status: str
    created: str
    source: str                                   # personalize, import, recorded, …
    reason: str = ""                              # why the gate accepted or rejected it
    metrics: dict[str, Any] | None = None         # the gate's comparison (metric, candidate, baseline, margin)
    file_kept: bool = True                        # False once pruned: the record stays, the weights are gone
    events: list[dict[str, Any]] = field(default_factory=list)  # rollbacks to and from it

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Generation:
        generation = cls(number=int(data["number"]), sha256=str(data["sha256"]), status=str(data["status"]),
                         created=str(data["created"]), source=str(data["source"]), reason=str(data.get("reason", "")),
                         metrics=data.get("metrics"), file_kept=bool(data.get("file_kept", True)),
                         events=list(data.get("events") or []))
        if generation.status not in STATUSES or generation.number < 1:
            raise ValueError(f"generation {generation.number} has status {generation.status!r}")
        return generation


class Ledger:
    """The generations of one adapter name."""

    def __init__(self, adapters_folder: Path, name: str) -> None:
        self.name = name
        self.folder = adapters_folder / GENERATIONS_FOLDER / name
        self.path = self.folder / LEDGER_NAME

    def file(self, number: int) -> Path:
        return self.folder / f"{number:06d}.safetensors"

    def read(self) -> list[Generation]:
        if not self.path.is_file():
            return []
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            records = [Generation.from_dict(item) for item in data["generations"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise AdapterError(
                f"the generation history {str(self.path)!r} of adapter {self.name!r} is damaged ({exc}); the current "
                "adapter still serves, and the next personalization of it rebuilds the history from its files"
            ) from exc
        return sorted(records, key=lambda record: record.number)

    def read_or_rebuild(self, metadata_of: Callable[[Path], dict[str, Any]]) -> list[Generation]:
        """The records, or — when the ledger is damaged — records rebuilt from the generation files' own metadata
        (number, time, the gate's verdict), the damaged ledger kept beside them for diagnosis. Rollback events
        are lost then; the generations themselves are not."""
        try:
            return self.read()
        except AdapterError:
            pass
        self.path.replace(self.path.with_name(f"{LEDGER_NAME}.damaged"))
        records = []
        for path in sorted(self.folder.glob("*.safetensors")):
            if not path.stem.isdigit():
                continue
            try:
                metadata = metadata_of(path)
            except AdapterError:
                path.unlink(missing_ok=True)  # a damaged generation cannot be served or restored
                continue
            gate = (metadata.get("training") or {}).get("gate") or {}
            records.append(Generation(number=int(path.stem), sha256=sha256_file(path),
                                      status=REJECTED if gate.get("accepted") is False else ACCEPTED,
                                      created=str(metadata.get("created", "")), source="rebuilt",
                                      reason=str(gate.get("reason", "recovered from a damaged history"))))
        self.write(records)
        return records

    def write(self, records: list[Generation]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps({"format": 1, "name": self.name,
                                                 "generations": [asdict(record) for record in records]},
                                                indent=1) + "\n")

    def next_number(self, records: list[Generation]) -> int:
        # Files too: a generation written by a run killed before its record must not be overwritten in place.
        on_disk = [int(path.stem) for path in self.folder.glob("*.safetensors") if path.stem.isdigit()]
        return max([0, *on_disk, *(record.number for record in records)]) + 1

    def drop_unrecorded(self, records: list[Generation]) -> None:
        """Remove generation files no record names (a run killed between writing one and deciding on it)."""
        recorded = {record.number for record in records}
        for path in self.folder.glob("*.safetensors"):
            if path.stem.isdigit() and int(path.stem) not in recorded:
                path.unlink(missing_ok=True)

    def prune(self, records: list[Generation], keep: int, current: int | None) -> None:
        """Keep the files of the newest ``keep`` generations (and always the current one); older records stay."""
        kept = [record for record in records if record.file_kept]
        for record in kept[:max(0, len(kept) - keep)]:
            if record.number != current:
                self.file(record.number).unlink(missing_ok=True)
                record.file_kept = False
