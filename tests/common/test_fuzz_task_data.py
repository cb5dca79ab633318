"""Property-based fuzzing of every registered task's data reader (JSON Lines and CSV).

A data file is untrusted input: loading it must give examples or a ``DataError`` that names the file and,
when one line is at fault, that line (1-based) — never a bare exception from the JSON or CSV parser, the
tokenizer or numpy. The tasks come from the registry, so a newly registered task is fuzzed too; its valid
examples are taken from whichever fixture data files it loads, and mutated from there (wrong types for
every field, missing and extra fields, empty and whitespace-only texts, NUL bytes, nested objects, labels
not in the label list, spans out of range) or damaged as bytes (invalid UTF-8, BOMs, CRLF, unbalanced
quotes and braces, truncation).

Deterministic (derandomize, no example database), so CI cannot flake on a new random example.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_sdk.bundle.manifest import MANIFEST_NAME
from edge_sdk.device.runtime import DeviceBundle
from edge_sdk.errors import DataError
from edge_sdk.tasks.base import TaskData
from edge_sdk.tasks.registry import TASK_NAMES

FUZZ = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])
FORMATS = (".jsonl", ".csv")
# Field names of every task's schema: a hostile file may use any of them, in any task.
KNOWN_FIELDS = ("text", "label", "labels", "tokens", "tags", "question", "context", "answer", "answer_start",
                "answers", "prompt", "response", "source", "target")

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
    st.sampled_from([-1, 0, 1, 2, 10 ** 9, 1.5, float("nan"), float("inf"), -float("inf"), 1e308]),
    st.text(max_size=12),
    st.sampled_from(["", " ", "\t\n ", "\x00", "a\x00b", "\ufeff", "\u2028", "\ud800", "unknown-label", "B-NOPE",
                     "I-LOC", "O", "sport;nope", ";", "\"", "a,b", "x" * 5000, "line\nbreak", "\r\n"]),
)
VALUES = st.recursive(SCALARS, lambda children: st.one_of(
    st.lists(children, max_size=4), st.dictionaries(st.sampled_from(["text", "answer_start", "a", ""]), children,
                                                    max_size=3)), max_leaves=8)


class TaskUnderTest:
    """A registered task's device object and the fixture records it accepts."""

    def __init__(self, name: str, task: Any, seeds: dict[str, list[dict[str, Any]]]) -> None:
        self.name, self.task, self.seeds = name, task, seeds


def _records(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as handle:
            return [dict(row) for row in csv.DictReader(handle)]
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def tasks(fixtures_dir: Path) -> dict[str, TaskUnderTest]:
    """Every registered task, opened on a fixture bundle of that task, with the fixture records it loads."""
    bundles: dict[str, Path] = {}
    for manifest_path in sorted(fixtures_dir.glob(f"*/{MANIFEST_NAME}")):
        task = json.loads(manifest_path.read_text(encoding="utf-8")).get("task")
        bundles.setdefault(task, manifest_path.parent)
    found = {}
    for name in TASK_NAMES:
        assert name in bundles, f"no fixture bundle of task {name}: add one to tests/make_fixtures.py"
        task = DeviceBundle.open(bundles[name], verify=False).task
        seeds: dict[str, list[dict[str, Any]]] = {}
        for data_file in sorted((fixtures_dir / "data").iterdir()):
            try:
                task.load(data_file)
            except DataError:
                continue
            records = _records(data_file)[:4]
            # A JSON Lines seed also seeds CSV when its values are flat, and the other way round.
            seeds.setdefault(".csv" if data_file.suffix == ".csv" else ".jsonl", records)
        assert seeds, f"no fixture data file loads for task {name}: add one to tests/make_fixtures.py"
        found[name] = TaskUnderTest(name, task, seeds)
    return found


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return ";".join(value)    # multi-label's CSV form of a label list
    return value if isinstance(value, str) else json.dumps(value)


def _write(path: Path, records: list[dict[str, Any]], header: list[str] | None = None) -> list[int]:
    """Write ``records`` as JSON Lines or CSV; the 1-based line where each record starts."""
    lines, starts = [], []
    if path.suffix == ".csv":
        columns = header or sorted({key for record in records for key in record})
        buffer = io.StringIO(newline="")
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        for record in records:
            starts.append(buffer.getvalue().count("\n") + 1)
            writer.writerow([_csv_cell(record.get(column)) for column in columns])
        path.write_text(buffer.getvalue(), encoding="utf-8", errors="surrogatepass", newline="")
        return starts
    for record in records:
        starts.append(len(lines) + 1)
        lines.append(json.dumps(record, allow_nan=True))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", newline="")
    return starts


def _load(spec: TaskUnderTest, path: Path, require_targets: bool) -> DataError | None:
    """Load ``path``: TaskData, or the DataError it raised (which must name the file)."""
    try:
        data = spec.task.load(path, require_targets=require_targets)
    except DataError as exc:
        assert str(path) in str(exc), f"{spec.name}: DataError does not name the file: {exc}"
        return exc
    assert isinstance(data, TaskData) and len(data) > 0
    return None


def _assert_line(exc: DataError, path: Path, lines: int) -> None:
    """A message that names a line names one that exists."""
    for match in re.finditer(re.escape(str(path)) + r":(\d+)", str(exc)):
        assert 1 <= int(match.group(1)) <= lines, str(exc)


def _mutated_record(data: st.DataObject, record: dict[str, Any], csv_mode: bool) -> dict[str, Any]:
    record = copy.deepcopy(record)
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        operation = data.draw(st.sampled_from(["replace", "replace", "delete", "add", "nest"]), label="operation")
        keys = list(record)
        if operation == "add" or not keys:
            # In CSV a new column reaches every row (empty there): only names no schema reads keep the
            # fault on one line.
            names = st.text(min_size=1, max_size=5).map(lambda name: "x_" + name) if csv_mode else \
                st.sampled_from(KNOWN_FIELDS) | st.text(max_size=5)
            record[data.draw(names, label="new field")] = data.draw(VALUES, label="value")
            continue
        key = data.draw(st.sampled_from(keys), label="field")
        if operation == "delete":
            del record[key]
        elif operation == "nest":
            record[key] = data.draw(st.sampled_from([[record[key]], {"value": record[key]}]), label="nested")
        else:
            record[key] = data.draw(VALUES, label="value")
    return record


@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize("task_name", TASK_NAMES)
@FUZZ
@given(data=st.data())
def test_one_bad_record_is_reported_at_its_line(tasks: dict[str, TaskUnderTest], task_name: str, suffix: str,
                                                tmp_path_factory: pytest.TempPathFactory,
                                                data: st.DataObject) -> None:
    spec = tasks[task_name]
    seeds = spec.seeds.get(suffix) or next(iter(spec.seeds.values()))
    records = copy.deepcopy(seeds)
    header = sorted({key for record in records for key in record}) if suffix == ".csv" else None
    bad = data.draw(st.integers(0, len(records) - 1), label="bad record")
    records[bad] = _mutated_record(data, records[bad], suffix == ".csv")
    if header is not None:
        header = sorted(set(header) | set(records[bad]))
    path = tmp_path_factory.mktemp("fuzz-data") / f"data{suffix}"
    starts = _write(path, records, header)
    error = _load(spec, path, require_targets=data.draw(st.booleans(), label="require targets"))
    if error is not None:
        message = str(error)
        # Only one record differs from data the task loads, so a problem there must point at its line —
        # except a file-level one (NER refuses CSV; a CSV whose header is now incomplete).
        file_level = f"{path}: " in message or re.search(re.escape(str(path)) + r":1: CSV header", message)
        assert file_level or f"{path}:{starts[bad]}:" in message, (starts[bad], message)


DAMAGE = ["invalid-utf8", "nul", "unbalanced", "bom-inside", "crlf", "truncate", "garbage", "blank-lines"]


@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize("task_name", TASK_NAMES)
@FUZZ
@given(data=st.data())
def test_damaged_bytes_give_data_errors_naming_file_and_line(tasks: dict[str, TaskUnderTest], task_name: str,
                                                             suffix: str, tmp_path_factory: pytest.TempPathFactory,
                                                             data: st.DataObject) -> None:
    spec = tasks[task_name]
    path = tmp_path_factory.mktemp("fuzz-bytes") / f"data{suffix}"
    _write(path, spec.seeds.get(suffix) or next(iter(spec.seeds.values())))
    lines = path.read_bytes().split(b"\n")
    damage = data.draw(st.sampled_from(DAMAGE), label="damage")
    at = data.draw(st.integers(0, len(lines) - 2), label="line index")
    line = lines[at]
    cut = data.draw(st.integers(0, len(line)), label="column")
    if damage == "invalid-utf8":
        lines[at] = line[:cut] + data.draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80abc"]),
                                           label="bytes") + line[cut:]
    elif damage == "nul":
        lines[at] = line[:cut] + b"\x00" + line[cut:]
    elif damage == "unbalanced":
        lines[at] = line[:cut] + data.draw(st.sampled_from([b'"', b"{", b"}", b"[", b'\\"', b","]),
                                           label="bytes") + line[cut:]
    elif damage == "bom-inside":
        lines[at] = b"\xef\xbb\xbf" + line
    elif damage == "crlf":
        lines = [item + b"\r" if item else item for item in lines]
    elif damage == "truncate":
        lines = lines[:at] + [line[:cut]]
    elif damage == "garbage":
        lines[at] = line[:cut] + data.draw(st.binary(min_size=1, max_size=12), label="bytes") + line[cut:]
    else:
        lines.insert(at, b"   \t")
    path.write_bytes(b"\n".join(lines))
    error = _load(spec, path, require_targets=data.draw(st.booleans(), label="require targets"))
    if error is not None:
        _assert_line(error, path, len(lines) + 1)
    if error is not None and damage == "invalid-utf8" and f"{path}: " not in str(error):
        assert f"{path}:{at + 1}:" in str(error), str(error)


def _valid_record(spec: TaskUnderTest) -> dict[str, Any]:
    return copy.deepcopy(next(iter(spec.seeds.values()))[0])


@pytest.mark.parametrize("task_name", TASK_NAMES)
@pytest.mark.parametrize("content", [
    b"",
    b"\n\n  \n",
    b"\xef\xbb\xbf",
    b"\x00\x00\x00",
    b"[" * 100_000 + b"]" * 100_000 + b"\n",         # nesting deeper than Python's recursion limit
    b'{"text": ' + b"1" * 5000 + b"}\n",               # an integer longer than Python converts
    b"\xff\xfe{\x00}\x00",                             # UTF-16 with a BOM
    b'{"text": "a"}\n[1, 2]\n',
    b'"a string"\n',
])
def test_hostile_jsonl_files(tasks: dict[str, TaskUnderTest], task_name: str, content: bytes,
                             tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError) as caught:
        tasks[task_name].task.load(path)
    assert str(path) in str(caught.value)
    _assert_line(caught.value, path, content.count(b"\n") + 1)


@pytest.mark.parametrize("task_name", TASK_NAMES)
@pytest.mark.parametrize("content", [
    b"",
    b"text,label\n",                                   # a header only
    b'text,label\n"unterminated,x\n',
    b"text,label\na,b,c,d\n",
    b"a,a\n1,2\n",
    # NUL is a character like any other (a task may take it), the BOM must not end up in the first column name.
    b"\xef\xbb\xbftext,label,labels,source,target,prompt,response\n\x00,\x00,\x00,\x00,\x00,\x00,\x00\n",
])
def test_hostile_csv_files(tasks: dict[str, TaskUnderTest], task_name: str, content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_bytes(content)
    error = _load(tasks[task_name], path, require_targets=True)
    assert error is not None or b"\x00" in content
    if error is not None:
        _assert_line(error, path, content.count(b"\n") + 1)


@pytest.mark.parametrize("task_name", TASK_NAMES)
def test_huge_line_is_loaded_or_refused_with_its_line(tasks: dict[str, TaskUnderTest], task_name: str,
                                                      tmp_path: Path) -> None:
    """A record of a few MB (every string field blown up) is cut by the tokenizer or refused by line."""
    spec = tasks[task_name]
    record = _valid_record(spec)
    # Texts are repeated to about 3 MB; token lists (with their tags, so they still pair up) to 300k tokens.
    huge = {key: (value + " ") * (3_000_000 // (len(value) + 1)) if isinstance(value, str) and key not in
            ("label", "answer") else value * (300_000 // len(value)) if isinstance(value, list) and value else value
            for key, value in record.items()}
    path = tmp_path / "data.jsonl"
    _write(path, [_valid_record(spec), huge])
    assert path.stat().st_size > 2_000_000
    error = _load(spec, path, require_targets=True)
    if error is not None:
        assert f"{path}:2:" in str(error), str(error)


@pytest.mark.parametrize("task_name", TASK_NAMES)
def test_lone_surrogates_and_nul_in_strings(tasks: dict[str, TaskUnderTest], task_name: str, tmp_path: Path) -> None:
    """JSON may escape a lone UTF-16 surrogate ("\\ud800"), which no UTF-8 tokenizer can take."""
    spec = tasks[task_name]
    for poison in ("\ud800 text", "a\x00b"):
        record = {key: (poison if isinstance(value, str) and key not in ("label", "answer") else value)
                  for key, value in _valid_record(spec).items()}
        path = tmp_path / "data.jsonl"
        _write(path, [_valid_record(spec), record])
        error = _load(spec, path, require_targets=True)
        if error is not None:
            assert f"{path}:2:" in str(error), str(error)
