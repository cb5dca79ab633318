"""edge_sdk.bundle.atomic under failure: a failed fsync is fatal and never retried, a full disk becomes
StorageFullError with the old version intact, and what a killed writer leaves is cleaned or recovered."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file
from storage_faults import file_size_limit

from edge_sdk.bundle import atomic
from edge_sdk.bundle.atomic import (
    atomic_folder,
    atomic_path,
    atomic_write_bytes,
    recover_folder,
    remove_folder,
    remove_stale_temporaries,
    staging_folder,
)
from edge_sdk.errors import StorageFullError

POSIX_ONLY = pytest.mark.skipif(os.name == "nt", reason="POSIX fsync of folders, file size limits")


def listing(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


# --- fsync ----------------------------------------------------------------------------------------------

def test_a_failed_file_fsync_is_fatal_and_never_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "state.json"
    target.write_text("old")
    calls: list[int] = []

    def failing_fsync(descriptor: int) -> None:
        calls.append(descriptor)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(atomic.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="Input/output error") as caught:
        atomic_write_bytes(target, b"new")
    assert len(calls) == 1  # one attempt: a second fsync could "succeed" over pages the kernel already dropped
    assert caught.value.errno == errno.EIO and caught.value.filename.endswith(".tmp")  # names the file
    monkeypatch.undo()
    assert target.read_text() == "old" and listing(tmp_path) == ["state.json"]


@POSIX_ONLY
def test_a_failed_folder_fsync_is_fatal_but_unsupported_folder_fsync_is_tolerated(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_fsync = os.fsync
    failures = {"folder": errno.EIO}

    def fsync(descriptor: int) -> None:
        if _is_folder(descriptor):
            raise OSError(failures["folder"], os.strerror(failures["folder"]))
        real_fsync(descriptor)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    with pytest.raises(OSError) as caught:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
    assert caught.value.errno == errno.EIO and caught.value.filename == str(tmp_path)
    # A file system that cannot fsync folders at all (EINVAL, ENOTSUP) is not a lost write.
    for unsupported in (errno.EINVAL, errno.ENOTSUP):
        failures["folder"] = unsupported
        atomic_write_bytes(tmp_path / "b.bin", b"y")
        assert (tmp_path / "b.bin").read_bytes() == b"y"


def _is_folder(descriptor: int) -> bool:
    return stat.S_ISDIR(os.fstat(descriptor).st_mode)


def test_a_failed_fsync_in_a_folder_swap_keeps_the_old_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "checkpoint"
    with atomic_folder(out) as staging:
        (staging / "state").write_text("old")
    calls = []

    def failing_fsync(descriptor: int) -> None:
        calls.append(descriptor)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(atomic.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="Input/output error"), atomic_folder(out, overwrite=True) as staging:
        (staging / "state").write_text("new")
    assert len(calls) == 1
    monkeypatch.undo()
    assert (out / "state").read_text() == "old" and listing(tmp_path) == ["checkpoint"]


# --- a full disk ----------------------------------------------------------------------------------------

def test_enospc_while_writing_becomes_storage_full_naming_the_file(tmp_path: Path) -> None:
    target = tmp_path / "adapter.safetensors"
    target.write_bytes(b"old")
    with pytest.raises(StorageFullError) as caught, atomic_path(target) as temporary:
        temporary.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")
    message = str(caught.value)
    assert "disk is full" in message and str(target) in message and "previous version is untouched" in message
    assert target.read_bytes() == b"old" and listing(tmp_path) == ["adapter.safetensors"]


@pytest.mark.parametrize("code", [errno.EDQUOT, errno.EFBIG])
def test_quota_and_file_size_limit_are_storage_full_too(tmp_path: Path, code: int) -> None:
    with pytest.raises(StorageFullError, match=os.strerror(code)), atomic_folder(tmp_path / "out") as staging:
        (staging / "f").write_text("x")
        raise OSError(code, os.strerror(code))
    assert listing(tmp_path) == []


@POSIX_ONLY
def test_a_real_file_size_limit_in_a_foreign_writer_is_storage_full(tmp_path: Path) -> None:
    # safetensors writes from Rust and reports "... (os error 27)", not an OSError: atomic.py still knows it.
    target = tmp_path / "weights.safetensors"
    save_file({"w": np.ones(4, np.float32)}, str(target))
    before = target.read_bytes()
    with file_size_limit(1 << 16), pytest.raises(StorageFullError, match="weights.safetensors"):
        with atomic_path(target) as temporary:
            save_file({"w": np.zeros(100_000, np.float32)}, str(temporary))
    assert target.read_bytes() == before and listing(tmp_path) == ["weights.safetensors"]


def test_other_write_errors_keep_their_type_and_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(PermissionError) as caught, atomic_path(tmp_path / "x.bin"):
        raise PermissionError(errno.EACCES, "Permission denied")
    assert caught.value.filename == str(tmp_path / "x.bin")
    with pytest.raises(ValueError, match="not an OSError"), atomic_path(tmp_path / "y.bin"):
        raise ValueError("not an OSError")
    assert listing(tmp_path) == []


# --- what a killed writer leaves --------------------------------------------------------------------------

def _folder(path: Path, content: str) -> Path:
    path.mkdir()
    (path / "state").write_text(content)
    return path


def test_stale_temporaries_are_removed_and_real_files_kept(tmp_path: Path) -> None:
    (tmp_path / "u.safetensors").write_text("kept")
    (tmp_path / ".u.safetensors.0badf00d.tmp").write_text("half")
    _folder(tmp_path / ".ckpt.12345678.staging", "half")
    _folder(tmp_path / ".gone.abcdef01.trash", "deleted")
    _folder(tmp_path / ".checkpoints", "not ours")  # hidden, but not a temporary's name
    (tmp_path / ".notes.tmp").write_text("no hex: not ours")
    handled = remove_stale_temporaries(tmp_path)
    assert sorted(handled) == [".ckpt.12345678.staging", ".gone.abcdef01.trash", ".u.safetensors.0badf00d.tmp"]
    assert listing(tmp_path) == [".checkpoints", ".notes.tmp", "u.safetensors"]
    assert remove_stale_temporaries(tmp_path) == [] and remove_stale_temporaries(tmp_path / "missing") == []


def test_an_old_folder_is_restored_when_its_destination_is_missing_and_removed_otherwise(tmp_path: Path) -> None:
    # Killed between the two renames of replace_folder: the previous version is aside, the new one staged.
    _folder(tmp_path / ".ckpt.11111111.old", "previous")
    _folder(tmp_path / ".ckpt.22222222.staging", "new, maybe half written")
    # Killed after the swap, before the old one was deleted: the destination is the new version.
    _folder(tmp_path / "done", "new")
    _folder(tmp_path / ".done.33333333.old", "previous")
    remove_stale_temporaries(tmp_path)
    assert listing(tmp_path) == ["ckpt", "done"]
    assert (tmp_path / "ckpt" / "state").read_text() == "previous"
    assert (tmp_path / "done" / "state").read_text() == "new"


def test_of_several_old_folders_the_newest_is_restored(tmp_path: Path) -> None:
    older = _folder(tmp_path / ".ckpt.aaaaaaaa.old", "older")
    newer = _folder(tmp_path / ".ckpt.00000000.old", "newer")
    os.utime(older, ns=(10**18, 10**18))
    os.utime(newer, ns=(2 * 10**18, 2 * 10**18))  # written last
    assert recover_folder(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "state").read_text() == "newer"
    remove_stale_temporaries(tmp_path)
    assert listing(tmp_path) == ["ckpt"]


def test_a_kill_between_the_renames_of_a_swap_is_recovered(tmp_path: Path) -> None:
    out = _folder(tmp_path / "checkpoint", "old")
    staging = staging_folder(out)
    (staging / "state").write_text("new")
    os.replace(out, atomic._temporary_name(out, "old"))  # replace_folder's first rename; SIGKILL before the second
    assert not out.exists()
    assert recover_folder(out) and (out / "state").read_text() == "old"
    assert not recover_folder(out)  # nothing more to do
    remove_stale_temporaries(tmp_path)
    assert listing(tmp_path) == ["checkpoint"]


def test_remove_folder_never_leaves_a_half_deleted_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = _folder(tmp_path / "checkpoint", "x")
    monkeypatch.setattr(atomic.shutil, "rmtree", lambda *args, **kwargs: None)  # killed before the delete
    remove_folder(out)
    monkeypatch.undo()
    assert not out.exists() and [name.endswith(".trash") for name in listing(tmp_path)] == [True]
    remove_stale_temporaries(tmp_path)
    assert listing(tmp_path) == []
    remove_folder(out)  # a missing folder is fine
