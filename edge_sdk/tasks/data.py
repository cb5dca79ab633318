"""Read example records from JSON Lines or CSV files, with errors that point at file and line.

Every task module builds on :func:`read_records`: it only checks the container format and that the
required fields exist; what a field must contain is the task's business. Standard library only, so
this runs on devices without torch.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edge_sdk.errors import DataError

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
CSV_SUFFIXES = (".csv",)
SUPPORTED_SUFFIXES = JSONL_SUFFIXES + CSV_SUFFIXES

# JSON type names are what users see in their files, not Python's class names.
_JSON_TYPE_NAMES: dict[type, str] = {
    dict: "object",
    list: "array",
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


@dataclass(frozen=True)
class Record:
    """One example as read from a data file, with its origin for error messages.

    ``line`` is the 1-based physical line where the record starts.
    """

    fields: dict[str, object]
    source: str
    line: int


def read_records(path: str | os.PathLike[str], required_fields: Sequence[str]) -> list[Record]:
    """Read every record of a ``.jsonl``/``.json``/``.ndjson`` (JSON Lines) or ``.csv`` file.

    Each record must contain every name in ``required_fields``; extra fields are kept.
    Raises :class:`DataError` naming file and line for any problem, including a file with no examples.
    """
    source = os.fspath(path)
    file_path = Path(source)
    suffix = file_path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataError(
            f"{source}: unsupported data file extension {suffix or '(none)'!r}. "
            f"Use one of {', '.join(SUPPORTED_SUFFIXES)} (JSON Lines for .jsonl/.json/.ndjson, "
            "CSV with a header row for .csv)."
        )
    text = _read_text(file_path, source)
    if suffix in CSV_SUFFIXES:
        records = _parse_csv(text, source, required_fields)
    else:
        records = _parse_jsonl(text, source, required_fields)
    if not records:
        raise DataError(
            f"{source}: file contains no examples. Add at least one record "
            + ("(one row after the header)." if suffix in CSV_SUFFIXES else "(one JSON object per line).")
        )
    return records


def _read_text(file_path: Path, source: str) -> str:
    if file_path.is_dir():
        raise DataError(
            f"{source}: is a directory, expected a data file. Pass the path of a .jsonl or .csv file."
        )
    try:
        raw = file_path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{source}: data file not found. Check the path.") from None
    except OSError as exc:
        raise DataError(
            f"{source}: cannot read data file ({exc.strerror or exc}). Check its permissions."
        ) from None
    try:
        # utf-8-sig because spreadsheet exports on Windows prepend a BOM that would otherwise end up
        # inside the first column name or break the first JSON line.
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{source}:{line}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start}). "
            "Re-save the file as UTF-8."
        ) from None


def _parse_jsonl(text: str, source: str, required_fields: Sequence[str]) -> list[Record]:
    records: list[Record] = []
    # Split on "\n" only: str.splitlines() also breaks on U+2028 and other separators that are legal
    # unescaped inside JSON strings, which would shift line numbers and cut records in half.
    for index, raw_line in enumerate(text.split("\n")):
        line_no = index + 1
        line = raw_line.strip()
        if not line:
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{source}:{line_no}: not valid JSON ({exc.msg} at column {exc.colno}). "
                "Each line must hold one complete JSON object."
            ) from None
        except RecursionError:
            raise DataError(
                f"{source}:{line_no}: JSON nested too deeply to read. Each line must hold one flat JSON object."
            ) from None
        except ValueError as exc:  # an integer literal longer than Python converts (4300 digits)
            raise DataError(
                f"{source}:{line_no}: not readable as JSON ({exc}). Quote long numbers as strings."
            ) from None
        _check_surrogates(value, line, source, line_no)
        if not isinstance(value, dict):
            hint = (
                " A .json file must be JSON Lines, not a single JSON array."
                if isinstance(value, list)
                else ""
            )
            raise DataError(
                f"{source}:{line_no}: expected a JSON object, found {_json_type_name(value)}.{hint} "
                'Write one object per line, e.g. {"text": "...", "label": "..."}.'
            )
        _check_required(value, required_fields, source, line_no)
        records.append(Record(fields=value, source=source, line=line_no))
    return records


def _check_surrogates(value: object, line: str, source: str, line_no: int) -> None:
    # JSON may escape half of a UTF-16 surrogate pair (backslash-ud800); Python reads it into a string that
    # is no text at all: no tokenizer can encode it and it cannot be written back as UTF-8. Only lines holding
    # a backslash-u escape can contain one, so the full check runs rarely.
    if "\\u" not in line:
        return
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DataError(
            f"{source}:{line_no}: a string holds an unpaired surrogate escape "
            f"({exc.object[exc.start:exc.end].encode('unicode_escape').decode()}), which is not text. "
            "Write the character itself, or both halves of its surrogate pair."
        ) from None


def _parse_csv(text: str, source: str, required_fields: Sequence[str]) -> list[Record]:
    # newline="" hands the csv module the raw line endings, as its documentation requires for
    # quoted fields that contain newlines.
    reader = csv.reader(io.StringIO(text, newline=""))
    records: list[Record] = []
    header: list[str] | None = None
    while True:
        start_line = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise DataError(
                f"{source}:{start_line}: malformed CSV ({exc}). Check quoting on this row."
            ) from None
        if not row or all(not cell.strip() for cell in row):
            continue
        if header is None:
            header = _check_header(row, start_line, source, required_fields)
            continue
        if len(row) != len(header):
            raise DataError(
                f"{source}:{start_line}: row has {len(row)} values but the header has {len(header)} columns "
                f"({', '.join(repr(name) for name in header)}). Quote values that contain commas."
            )
        records.append(Record(fields=dict(zip(header, row, strict=True)), source=source, line=start_line))
    return records


def _check_header(row: list[str], line_no: int, source: str, required_fields: Sequence[str]) -> list[str]:
    header = [name.strip() for name in row]
    found = ", ".join(repr(name) for name in header)
    missing = [name for name in required_fields if name not in header]
    if missing:
        raise DataError(
            f"{source}:{line_no}: CSV header lacks column(s) {', '.join(repr(m) for m in missing)}; "
            f"found columns: {found}. The first line must name the columns, "
            f"including {', '.join(repr(n) for n in required_fields)}."
        )
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise DataError(
            f"{source}:{line_no}: CSV header repeats column(s) {', '.join(repr(d) for d in duplicates)}. "
            "Give every column a unique name."
        )
    return header


def _check_required(
    value: dict[str, object], required_fields: Sequence[str], source: str, line_no: int
) -> None:
    for name in required_fields:
        if name not in value:
            present = ", ".join(repr(key) for key in value) or "none"
            raise DataError(
                f"{source}:{line_no}: missing field {name!r} (present keys: {present}). "
                f"Every record needs {', '.join(repr(n) for n in required_fields)}."
            )


def _json_type_name(value: object) -> str:
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def text_field(record: Record, name: str) -> str:
    """The record's field ``name`` as a non-empty string, or DataError naming file and line."""
    value = record.fields.get(name)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{record.source}:{record.line}: field {name!r} must be a non-empty string, found {value!r}")
    return value
