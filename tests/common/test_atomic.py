"""edge_sdk.bundle.atomic: every writer's atomic replace of a file or folder, and the writers that use it."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_sdk.bundle import atomic
from edge_sdk.bundle.atomic import (
    atomic_file,
    atomic_folder,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    replace_folder,
    scratch_folder,
    staging_folder,
)

POSIX_ONLY = pytest.mark.skipif(os.name == "nt", reason="POSIX permission bits")


def listing(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_027() -> Iterator[int]:
    previous = os.umask(0o027)
    try:
        yield 0o027
    finally:
        os.umask(previous)


# --- files ----------------------------------------------------------------------------------------------

def test_write_bytes_and_text_create_and_replace(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    atomic_write_bytes(target, b"one")
    assert target.read_bytes() == b"one"
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    atomic_write_text(tmp_path / "b.json", '{"é": 1}\n')
    assert (tmp_path / "b.json").read_text(encoding="utf-8") == '{"é": 1}\n'
    assert listing(tmp_path) == ["a.bin", "b.json"]


def test_failure_mid_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(target, "w") as handle:
        handle.write("half of the new")
        raise RuntimeError("power cut")
    assert target.read_text() == "old"
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as temporary:
        temporary.write_text("half")
        raise KeyboardInterrupt  # BaseException too: an interrupted run leaves no litter
    assert target.read_text() == "old"
    assert listing(tmp_path) == ["state.json"]


def test_failure_mid_write_of_a_new_file_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(OSError), atomic_file(tmp_path / "new.bin") as handle:
        handle.write(b"x")
        raise OSError("disk full")
    assert listing(tmp_path) == []


def test_temporary_is_a_hidden_sibling_and_fsync_precedes_the_rename(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    with atomic_path(tmp_path / "out.safetensors") as temporary:
        assert temporary.parent == tmp_path and temporary.name.startswith(".out.safetensors.")
        temporary.write_bytes(b"data")
    assert (tmp_path / "out.safetensors").read_bytes() == b"data"
    expected = ["fsync", "replace", "fsync"] if os.name != "nt" else ["fsync", "replace"]
    assert events == expected  # the file's data, the rename, then (POSIX) the folder entry


def test_atomic_file_refuses_read_and_append_modes(tmp_path: Path) -> None:
    for bad in ("a", "r+", "ab"):
        with pytest.raises(ValueError, match="mode"), atomic_file(tmp_path / "x", bad):
            pass
    assert listing(tmp_path) == []


@POSIX_ONLY
def test_files_follow_the_umask_not_mkstemp(tmp_path: Path, umask_027: int) -> None:
    atomic_write_text(tmp_path / "a.txt", "x")
    with atomic_path(tmp_path / "b.bin") as temporary:
        temporary.write_bytes(b"x")
    assert mode(tmp_path / "a.txt") == 0o640
    assert mode(tmp_path / "b.bin") == 0o640


# --- folders --------------------------------------------------------------------------------------------

def test_atomic_folder_creates_and_replaces(tmp_path: Path) -> None:
    out = tmp_path / "adapter"
    with atomic_folder(out) as staging:
        (staging / "v").write_text("1")
    assert listing(out) == ["v"]
    with pytest.raises(FileExistsError):
        with atomic_folder(out):
            pass
    with atomic_folder(out, overwrite=True) as staging:
        (staging / "w").write_text("2")
    assert listing(out) == ["w"]  # replaced, not merged
    assert listing(tmp_path) == ["adapter"]


def test_failed_folder_write_keeps_the_old_folder_and_leaves_no_staging(tmp_path: Path) -> None:
    out = tmp_path / "adapter"
    out.mkdir()
    (out / "config.json").write_text("old")
    with pytest.raises(RuntimeError), atomic_folder(out, overwrite=True) as staging:
        (staging / "config.json").write_text("new")
        raise RuntimeError("save failed")
    assert listing(out) == ["config.json"] and (out / "config.json").read_text() == "old"
    assert listing(tmp_path) == ["adapter"]


def test_replace_folder_puts_the_old_folder_back_when_the_swap_fails(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "manifest.json").write_text("old")
    staging = staging_folder(out)
    (staging / "manifest.json").write_text("new")
    real_replace = os.replace

    def failing_second_rename(source, destination) -> None:
        if Path(source) == staging:
            raise OSError("device busy")
        real_replace(source, destination)

    monkeypatch.setattr(atomic.os, "replace", failing_second_rename)
    with pytest.raises(OSError, match="busy"):
        replace_folder(staging, out)
    monkeypatch.undo()
    assert (out / "manifest.json").read_text() == "old"
    assert sorted(listing(tmp_path)) == sorted(["bundle", staging.name])  # no backup left aside
    replace_folder(staging, out)
    assert (out / "manifest.json").read_text() == "new"
    assert listing(tmp_path) == ["bundle"]


@POSIX_ONLY
def test_staged_folders_follow_the_umask_not_mkdtemp(tmp_path: Path, umask_027: int) -> None:
    with atomic_folder(tmp_path / "out") as staging:
        (staging / "f").write_text("x")
    assert mode(tmp_path / "out") == 0o750
    assert mode(tmp_path / "out" / "f") == 0o640


def test_scratch_folder_is_removed_with_its_contents(tmp_path: Path) -> None:
    with scratch_folder(tmp_path / "merged.onnx") as scratch:
        (scratch / "merged.onnx").write_bytes(b"x")
        atomic.move_file(scratch / "merged.onnx", tmp_path / "merged.onnx")
        (scratch / "leftover").write_bytes(b"y")
    assert listing(tmp_path) == ["merged.onnx"]


# --- the writers that use it ----------------------------------------------------------------------------

def _peft_manifest():
    from edge_sdk.bundle import Manifest, TensorSpec

    return Manifest(
        task="seq-cls", labels=["a", "b"], model={"source": "x"}, tokenizer={"file": "tok.json", "pad_token_id": 0},
        max_length=16, inputs=[TensorSpec("input_ids", "int64", ["batch", "sequence"])],
        outputs=[TensorSpec("logits", "float32", ["batch", 2])], trainable=[TensorSpec("w", "float32", [2, 2])],
        peft={"rank": 2, "alpha": 4, "target_modules": ["query"]}, training={}, inference={}, profile={}, build={},
        sdk_version="0.1.0",
    )


def test_export_peft_replaces_atomically_and_keeps_the_old_adapter_on_failure(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_sdk.device import peft_format

    out = tmp_path / "peft"
    weight = "m.query.lora_A.default.weight"
    peft_format.export_peft(_peft_manifest(), {weight: np.ones((2, 2), np.float32)}, out)
    before = (out / peft_format.WEIGHTS_FILE).read_bytes()

    def broken_config(manifest) -> dict:
        raise RuntimeError("config failed")

    monkeypatch.setattr(peft_format, "peft_config", broken_config)
    with pytest.raises(RuntimeError):
        peft_format.export_peft(_peft_manifest(), {weight: np.zeros((2, 2), np.float32)}, out, overwrite=True)
    assert (out / peft_format.WEIGHTS_FILE).read_bytes() == before  # the old adapter survived
    assert json.loads((out / peft_format.CONFIG_FILE).read_text())["r"] == 2
    assert listing(tmp_path) == ["peft"]


@POSIX_ONLY
def test_export_peft_folder_has_the_usual_permissions(tmp_path: Path, umask_027: int) -> None:
    from edge_sdk.device import peft_format

    out = peft_format.export_peft(_peft_manifest(), {"m.query.lora_A.default.weight": np.ones((2, 2), np.float32)},
                                  tmp_path / "peft")
    assert mode(out) == 0o750  # not mkdtemp's 0700
    assert mode(out / peft_format.CONFIG_FILE) == 0o640
