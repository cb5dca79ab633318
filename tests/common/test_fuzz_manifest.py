"""Property-based fuzzing of the manifest reader: a manifest is untrusted input (a bundle copied from anywhere).

Manifests are made by mutating the real manifests of the fixture bundles (keys deleted, values of the wrong
type, huge numbers, NaN, wrong nesting) or by damaging their bytes (truncation, random bytes, invalid UTF-8).
Reading the manifest, every typed property, and opening a ``DeviceBundle`` over it may only raise an
``EdgeSdkError`` (a ``BundleError``), and the message must name the bundle's file — never a bare
KeyError/TypeError/ValueError/RecursionError from deep inside the SDK.

Deterministic (derandomize, no example database) so CI cannot flake on a new random example.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_sdk.bundle.manifest import MANIFEST_NAME, Manifest
from edge_sdk.bundle.store import open_bundle, read_manifest
from edge_sdk.device.runtime import DeviceBundle
from edge_sdk.errors import BundleError, EdgeSdkError

FUZZ = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])

# One manifest of each shape: a classifier, a decoder with a chat template, an encoder-decoder with generation
# graphs (the deepest manifest), an int8 build (its own checks on open) and a --freeze-lora-a build
# (peft.frozen_lora_a).
FIXTURES = ("tiny-seq-cls", "tiny-causal-lm", "tiny-seq2seq", "tiny-multi-label-int8", "tiny-seq-cls-fpga",
            "tiny-ffa")

# Every typed read a device does through the manifest; each must fail as a BundleError or succeed.
TYPED_READS = ("peft_spec", "tokenizer_spec", "inference_spec", "portable_step", "ort_training_files", "adapter",
               "base", "compute_precision", "training_backends", "max_batch_size", "generation", "target_spec")

HOSTILE_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2 ** 80), max_value=2 ** 80),
    st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e308, -1.0, 0.5, 10 ** 400]),
    st.text(max_size=6),
    st.sampled_from(["", " ", "\x00", "../../etc/passwd", "/abs", "int8", "left", "lora", "float32",
                     "portable", "seq2seq", "qa"]),
    st.lists(st.one_of(st.integers(-3, 3), st.text(max_size=3), st.none()), max_size=3),
    st.dictionaries(st.text(max_size=3), st.one_of(st.integers(), st.none(), st.text(max_size=3)), max_size=3),
    st.just([[[[]]]]),
    st.just({"a": {"b": [None]}}),
)


def _paths(value: Any, prefix: tuple = ()) -> Iterator[tuple]:
    """Key paths into a JSON value (the root excluded), four levels deep at most and the first two items of
    each array: the many alike entries (files, trainable tensors, optimizer state names) would otherwise
    drown the sections a device reads, such as inference.generation.generation.pad_token_id."""
    if len(prefix) >= 4:
        return
    items = value.items() if isinstance(value, dict) else enumerate(value[:2]) if isinstance(value, list) else ()
    for key, child in items:
        yield (*prefix, key)
        if prefix[:1] != ("build",):   # build facts are reported, never read
            yield from _paths(child, (*prefix, key))


def _mutate(document: Any, path: tuple, operation: str, value: Any) -> None:
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    if operation == "delete":
        del parent[key]
    elif operation == "replace":
        parent[key] = copy.deepcopy(value)  # st.just hands out one shared object; later mutations must not edit it
    elif operation == "wrap-list":
        parent[key] = [parent[key]]
    elif operation == "wrap-dict":
        parent[key] = {"value": parent[key]}
    elif operation == "unwrap" and isinstance(parent[key], (dict, list)) and parent[key]:
        inner = parent[key]
        parent[key] = next(iter(inner.values())) if isinstance(inner, dict) else inner[0]


@pytest.fixture(scope="module")
def bundle_copies(fixtures_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One writable copy of each fixture bundle; every example rewrites only its manifest."""
    base = tmp_path_factory.mktemp("fuzz-manifest").resolve()
    return {name: Path(shutil.copytree(fixtures_dir / name, base / name)) for name in FIXTURES}


def _original(root: Path) -> bytes:
    original = root / (MANIFEST_NAME + ".orig")
    if not original.exists():
        shutil.copyfile(root / MANIFEST_NAME, original)
    return original.read_bytes()


def _assert_names(exc: EdgeSdkError, *names: str) -> None:
    message = str(exc)
    assert any(name in message for name in names), f"{type(exc).__name__} names none of {names}: {message}"


def _exercise(root: Path) -> None:
    """Read the manifest, every typed property and open the device bundle: BundleErrors naming a file only."""
    manifest_path = str(root / MANIFEST_NAME)
    try:
        manifest = read_manifest(root)
    except EdgeSdkError as exc:
        assert isinstance(exc, BundleError), repr(exc)
        _assert_names(exc, manifest_path)
        return
    for name in TYPED_READS:
        try:
            getattr(manifest, name)
        except EdgeSdkError as exc:
            assert isinstance(exc, BundleError), f"{name}: {exc!r}"
            _assert_names(exc, manifest_path)
    try:
        DeviceBundle.open(root, verify=False)
    except EdgeSdkError as exc:
        # The manifest or a file it points at (a tokenizer, an adapter) inside this bundle.
        _assert_names(exc, str(root))


@pytest.mark.parametrize("fixture", FIXTURES)
@FUZZ
@given(data=st.data())
def test_mutated_manifest_raises_only_bundle_errors(bundle_copies: dict[str, Path], fixture: str,
                                                    data: st.DataObject) -> None:
    root = bundle_copies[fixture]
    document = json.loads(_original(root))
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        paths = list(_paths(document))
        if not paths:
            break
        path = data.draw(st.sampled_from(paths), label="path")
        operation = data.draw(st.sampled_from(["delete", "replace", "replace", "wrap-list", "wrap-dict", "unwrap"]),
                              label="operation")
        _mutate(document, path, operation, data.draw(HOSTILE_VALUES, label="value"))
    # allow_nan: NaN and Infinity are what Python's own json writes and reads back.
    (root / MANIFEST_NAME).write_text(json.dumps(document, allow_nan=True), encoding="utf-8")
    _exercise(root)


@pytest.mark.parametrize("fixture", FIXTURES[:2])
@FUZZ
@given(data=st.data())
def test_damaged_manifest_bytes_raise_only_bundle_errors(bundle_copies: dict[str, Path], fixture: str,
                                                         data: st.DataObject) -> None:
    root = bundle_copies[fixture]
    raw = _original(root)
    damage = data.draw(st.sampled_from(["truncate", "insert", "invalid-utf8", "bom", "overwrite"]), label="damage")
    at = data.draw(st.integers(0, len(raw)), label="offset")
    if damage == "truncate":
        raw = raw[:at]
    elif damage == "insert":
        raw = raw[:at] + data.draw(st.binary(min_size=1, max_size=16), label="bytes") + raw[at:]
    elif damage == "invalid-utf8":
        raw = raw[:at] + data.draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"]),
                                   label="bytes") + raw[at:]
    elif damage == "bom":
        raw = b"\xef\xbb\xbf" + raw
    else:
        raw = raw[:at] + data.draw(st.binary(min_size=1, max_size=16), label="bytes") + raw[at + 16:]
    (root / MANIFEST_NAME).write_bytes(raw)
    _exercise(root)


@pytest.mark.parametrize("content", [
    b"",
    b"\x00" * 64,
    b"[" * 100_000 + b"]" * 100_000,             # nesting deeper than Python's recursion limit
    b'{"schema_version": 1' + b', "x": [' * 50_000 + b"]" * 50_000 + b"}",
    b'{"schema_version": 1e999}',
    b'{"schema_version": NaN}',
    b'{"schema_version": true}',
    b'{"schema_version": 1, "task": "seq-cls"}',
    b"\xff\xfe{\x00}\x00",                       # UTF-16 with a BOM
    b'"just a string"',
])
def test_hostile_manifest_files(bundle_copies: dict[str, Path], content: bytes) -> None:
    root = bundle_copies["tiny-seq-cls"]
    _original(root)
    (root / MANIFEST_NAME).write_bytes(content)
    with pytest.raises(BundleError) as caught:
        read_manifest(root)
    _assert_names(caught.value, str(root / MANIFEST_NAME))
    with pytest.raises(BundleError):
        open_bundle(root, verify=True)


@pytest.mark.parametrize(("where", "value"), [
    (("inference", "generation"), {}),
    (("inference", "generation"), None),
    (("inference", "generation", "generation"), [1]),
    (("inference", "generation", "generation", "pad_token_id"), "x"),
    (("inference", "generation", "generation", "decoder_start_token_id"), True),
    (("task",), "no-such-task"),
])
def test_device_bundle_refuses_a_bad_generation_section(bundle_copies: dict[str, Path], where: tuple,
                                                        value: Any) -> None:
    root = bundle_copies["tiny-seq2seq"]
    document = json.loads(_original(root))
    _mutate(document, where, "replace", value)
    (root / MANIFEST_NAME).write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(BundleError) as caught:
        DeviceBundle.open(root, verify=False)
    _assert_names(caught.value, str(root / MANIFEST_NAME))


def test_typed_reads_name_the_manifest_and_the_field(fixtures_dir: Path) -> None:
    text = (fixtures_dir / "tiny-seq-cls" / MANIFEST_NAME).read_text(encoding="utf-8")
    document = json.loads(text)
    del document["peft"]["rank"]
    document["tokenizer"]["pad_token_id"] = "zero"
    document["inference"] = {"weights": None}
    document["training"]["portable"] = ["not", "an", "object"]
    manifest = Manifest.from_json(json.dumps(document), source="/somewhere/manifest.json")
    for read, field in (("peft_spec", "peft.rank"), ("tokenizer_spec", "tokenizer.pad_token_id"),
                        ("inference_spec", "inference.model"), ("portable_step", "training.portable")):
        with pytest.raises(BundleError) as caught:
            getattr(manifest, read)
        assert "/somewhere/manifest.json" in str(caught.value) and field in str(caught.value), str(caught.value)


@pytest.mark.parametrize(("section", "value", "field"), [
    ("max_length", float("inf"), "max_length"),
    ("max_length", True, "max_length"),
    ("max_length", -4, "max_length"),
    ("labels", "abc", "labels"),
    ("labels", [1, 2], "labels"),
    ("task", 7, "task"),
    ("inputs", [{"name": "x", "dtype": "int64", "shape": "batch"}], "inputs"),
    ("files", [{"path": "a", "sha256": "0" * 64, "size": float("nan")}], "files"),
    ("model", [], "model"),
])
def test_wrong_types_are_refused_when_the_manifest_is_read(fixtures_dir: Path, section: str, value: Any,
                                                            field: str) -> None:
    document = json.loads((fixtures_dir / "tiny-seq-cls" / MANIFEST_NAME).read_text(encoding="utf-8"))
    document[section] = value
    with pytest.raises(BundleError) as caught:
        Manifest.from_json(json.dumps(document, allow_nan=True), source="/b/manifest.json")
    assert "/b/manifest.json" in str(caught.value) and field in str(caught.value), str(caught.value)
