"""Property-based fuzzing of adapter files: safetensors files in a bundle's ``adapters/`` folder and PEFT
adapter folders are untrusted input (copied between devices, downloaded).

A safetensors file is an 8-byte little-endian header length, a JSON header (per tensor: dtype, shape,
data_offsets; ``__metadata__``: a string map whose ``edge_sdk`` entry is our JSON metadata) and the data.
The files are built from a valid adapter of the fixture bundle with a hostile header length, header,
metadata or tensor, or damaged bytes. ``AdapterStore.info``/``load`` and ``read_peft`` may only raise an
``AdapterError`` naming the file (or its folder) — never safetensors', json's or numpy's own exceptions.

Deterministic (derandomize, no example database), so CI cannot flake on a new random example.
"""

from __future__ import annotations

import copy
import json
import shutil
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_sdk.bundle.store import Bundle, open_bundle
from edge_sdk.device.adapters import AdapterStore
from edge_sdk.device.peft_format import CONFIG_FILE, WEIGHTS_FILE, export_peft, read_peft
from edge_sdk.errors import AdapterError

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])
NAME = "fuzzed"
DTYPES = ["F32", "F16", "BF16", "F64", "I64", "I32", "I8", "U8", "BOOL", "F8_E4M3", "XX", "", "f32"]
HOSTILE = st.one_of(
    st.none(), st.booleans(), st.integers(-(2 ** 70), 2 ** 70), st.sampled_from([2 ** 64 - 1, -1, 0, 1.5]),
    st.text(max_size=8), st.lists(st.integers(-3, 10 ** 6), max_size=4),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


def _split(raw: bytes) -> tuple[dict[str, Any], bytes]:
    size = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + size]), raw[8 + size:]


def _join(header: Any, data: bytes, size: int | None = None) -> bytes:
    text = json.dumps(header, allow_nan=True).encode() if not isinstance(header, bytes) else header
    length = len(text) if size is None else size
    return struct.pack("<Q", length % 2 ** 64) + text + data


@pytest.fixture(scope="module")
def bundle(fixtures_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    root = Path(shutil.copytree(fixtures_dir / "tiny-seq-cls", tmp_path_factory.mktemp("fuzz-adapters") / "b"))
    return open_bundle(root, verify=False)


@pytest.fixture(scope="module")
def valid_adapter(bundle: Bundle) -> bytes:
    """A valid user adapter of the bundle (its initial weights saved under a name), as bytes."""
    store = AdapterStore(bundle)
    path = store.save("seed", store.load("initial"), training={}).path
    raw = path.read_bytes()
    path.unlink()
    return raw


def _hostile_header(data: st.DataObject, header: dict[str, Any], payload: bytes) -> tuple[Any, bytes]:
    header = copy.deepcopy(header)
    tensors = [key for key in header if key != "__metadata__"]
    attack = data.draw(st.sampled_from(["dtype", "shape", "offsets", "overlap", "metadata", "edge_sdk", "entry",
                                        "drop", "extra", "not-object"]), label="attack")
    tensor = data.draw(st.sampled_from(tensors), label="tensor")
    if attack == "dtype":
        header[tensor]["dtype"] = data.draw(st.sampled_from(DTYPES) | HOSTILE, label="dtype")
    elif attack == "shape":
        header[tensor]["shape"] = data.draw(st.lists(st.integers(-2, 2 ** 40), max_size=4) | HOSTILE, label="shape")
    elif attack == "offsets":
        header[tensor]["data_offsets"] = data.draw(
            st.lists(st.integers(-5, len(payload) * 2 + 2 ** 40), min_size=0, max_size=3) | HOSTILE, label="offsets")
    elif attack == "overlap":
        other = data.draw(st.sampled_from(tensors), label="other")
        header[tensor]["data_offsets"] = list(header[other]["data_offsets"])
    elif attack == "metadata":
        header["__metadata__"] = data.draw(HOSTILE | st.dictionaries(st.text(max_size=4), HOSTILE, max_size=2),
                                           label="metadata")
    elif attack == "edge_sdk":
        header["__metadata__"] = {"edge_sdk": data.draw(st.sampled_from(
            ["", "{", "[1, 2]", "null", "42", '"text"', '{"base_id": 7}', '{"base_id": null}', "[" * 5000,
             '{"base_id": "' + "0" * 64 + '"}', "NaN"]) | st.text(max_size=10), label="edge_sdk")}
    elif attack == "entry":
        header[tensor] = data.draw(HOSTILE, label="entry")
    elif attack == "drop":
        del header[tensor][data.draw(st.sampled_from(sorted(header[tensor])), label="key")]
    elif attack == "extra":
        header[data.draw(st.text(min_size=1, max_size=6), label="name")] = {"dtype": "F32", "shape": [1],
                                                                             "data_offsets": [0, 4]}
    else:
        return data.draw(HOSTILE, label="header"), payload
    return header, payload


def _check_store(bundle: Bundle, raw: bytes) -> None:
    path = bundle.root / "adapters" / f"{NAME}.safetensors"
    path.write_bytes(raw)
    store = AdapterStore(bundle)   # a fresh store: no cached weights from the previous example
    for read in (store.info, store.load):
        try:
            read(NAME)
        except AdapterError as exc:
            assert str(path) in str(exc), f"{read.__name__}: {exc}"


@FUZZ
@given(data=st.data())
def test_hostile_safetensors_headers_give_adapter_errors(bundle: Bundle, valid_adapter: bytes,
                                                         data: st.DataObject) -> None:
    header, payload = _split(valid_adapter)
    header, payload = _hostile_header(data, header, payload)
    _check_store(bundle, _join(header, payload))


@FUZZ
@given(data=st.data())
def test_damaged_safetensors_bytes_give_adapter_errors(bundle: Bundle, valid_adapter: bytes,
                                                       data: st.DataObject) -> None:
    header, payload = _split(valid_adapter)
    damage = data.draw(st.sampled_from(["length", "truncate", "flip", "header-bytes", "random"]), label="damage")
    if damage == "length":   # larger than the file, negative as a signed integer, zero, huge
        size = data.draw(st.sampled_from([0, 1, 7, 2 ** 63, 2 ** 64 - 1, 2 ** 64 - 8, 10 ** 9]) |
                         st.integers(0, len(valid_adapter) * 2), label="header length")
        raw = _join(header, payload, size)
    elif damage == "truncate":
        raw = valid_adapter[:data.draw(st.integers(0, len(valid_adapter) - 1), label="length")]
    elif damage == "flip":
        raw = bytearray(valid_adapter)
        at = data.draw(st.integers(8, len(raw) - len(payload) - 1), label="header byte")
        raw[at] = data.draw(st.integers(0, 255), label="value")
        raw = bytes(raw)
    elif damage == "header-bytes":
        raw = _join(data.draw(st.binary(max_size=64) | st.sampled_from([b"\xff\xfe", b"[" * 10_000, b"{}"]),
                              label="header"), payload)
    else:
        raw = data.draw(st.binary(max_size=64), label="bytes")
    _check_store(bundle, raw)


@pytest.mark.parametrize(("dtype", "shape_change"), [("float16", False), ("int64", False), ("float32", True),
                                                     ("float64", False), ("uint8", False)])
def test_tensors_of_wrong_type_or_shape_are_refused(bundle: Bundle, dtype: str, shape_change: bool) -> None:
    from safetensors.numpy import save_file

    store = AdapterStore(bundle)
    weights = store.load("initial")
    first = sorted(weights)[0]
    metadata = json.dumps({"base_id": store.base_id})
    changed = dict(weights)
    changed[first] = np.zeros((3, 3) if shape_change else weights[first].shape, dtype=dtype)
    path = bundle.root / "adapters" / f"{NAME}.safetensors"
    save_file(changed, str(path), metadata={"edge_sdk": metadata})
    with pytest.raises(AdapterError) as caught:
        AdapterStore(bundle).load(NAME)
    assert str(path) in str(caught.value) and first in str(caught.value), str(caught.value)


@pytest.mark.parametrize("content", [b"", b"\x00" * 8, b"\x08" + b"\x00" * 7 + b"{}", b"\xff" * 64])
def test_empty_and_tiny_files(bundle: Bundle, content: bytes) -> None:
    path = bundle.root / "adapters" / f"{NAME}.safetensors"
    path.write_bytes(content)
    with pytest.raises(AdapterError) as caught:
        AdapterStore(bundle).load(NAME)
    assert str(path) in str(caught.value)


# --- PEFT adapter folders ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def peft_folder(bundle: Bundle, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid PEFT folder exported from the bundle's initial adapter (read_peft loads it)."""
    folder = export_peft(bundle.manifest, AdapterStore(bundle).load("initial"),
                         tmp_path_factory.mktemp("fuzz-peft") / "valid")
    assert set(read_peft(folder, bundle.manifest)) == {spec.name for spec in bundle.manifest.trainable}
    return folder


def _check_peft(bundle: Bundle, folder: Path) -> None:
    try:
        read_peft(folder, bundle.manifest)
    except AdapterError as exc:
        assert str(folder) in str(exc), str(exc)


@FUZZ
@given(data=st.data())
def test_hostile_peft_folders_give_adapter_errors(bundle: Bundle, peft_folder: Path,
                                                  tmp_path_factory: pytest.TempPathFactory,
                                                  data: st.DataObject) -> None:
    folder = Path(shutil.copytree(peft_folder, tmp_path_factory.mktemp("peft") / "adapter"))
    target = data.draw(st.sampled_from(["config", "config-bytes", "weights"]), label="target")
    if target == "config":
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        key = data.draw(st.sampled_from(sorted(config)), label="key")
        config[key] = data.draw(HOSTILE | st.sampled_from([float("nan"), 10 ** 400, [1, "a"], "LORA"]), label="value")
        (folder / CONFIG_FILE).write_text(json.dumps(config, allow_nan=True), encoding="utf-8")
    elif target == "config-bytes":
        (folder / CONFIG_FILE).write_bytes(data.draw(st.binary(max_size=32) | st.sampled_from(
            [b"[]", b"null", b"\xff\xfe", b"[" * 100_000]), label="config bytes"))
    else:
        header, payload = _split((folder / WEIGHTS_FILE).read_bytes())
        header, payload = _hostile_header(data, header, payload)
        (folder / WEIGHTS_FILE).write_bytes(_join(header, payload))
    _check_peft(bundle, folder)


@pytest.mark.parametrize("dtype", ["int64", "bool", "uint8"])
def test_peft_tensors_that_are_not_floats_are_refused(bundle: Bundle, peft_folder: Path, tmp_path: Path,
                                                      dtype: str) -> None:
    from safetensors.numpy import load_file, save_file

    folder = Path(shutil.copytree(peft_folder, tmp_path / "adapter"))
    tensors = load_file(str(folder / WEIGHTS_FILE))
    first = sorted(tensors)[0]
    tensors[first] = np.zeros(tensors[first].shape, dtype=dtype)
    save_file(tensors, str(folder / WEIGHTS_FILE))
    with pytest.raises(AdapterError, match="floating point") as caught:
        read_peft(folder, bundle.manifest)
    assert str(folder) in str(caught.value)
