"""Atomic, durable writes of files and folders: the one way the SDK replaces anything on disk.

A reader (or a device that lost power) sees either the old content or the new one, never a mix:

* a file is written to a temporary file in the same folder (a rename is atomic only within one file
  system), flushed to disk with fsync, renamed over the destination, and the folder is fsynced so the
  rename itself survives a power cut;
* a folder is staged as a hidden sibling, every file in it fsynced, then swapped in: the old folder is
  renamed aside, the new one renamed into place, the old one removed.

Temporaries are created with the usual permissions (0666/0777 less the umask), not the private 0600/0700
of ``tempfile.mkstemp``/``mkdtemp``, and removed on any exception. Standard library only: the device
imports this module.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

_ATTEMPTS = 100


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def default_permissions(path: Path) -> None:
    """Give a file or folder the usual permissions (0666/0777 less the umask), e.g. one another tool made
    private."""
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~_umask())


def _temporary_name(destination: Path, kind: str) -> Path:
    # Hidden (leading dot) and marked, so a listing of the folder can tell litter from real files.
    return destination.with_name(f".{destination.name}.{secrets.token_hex(4)}.{kind}")


def _new_file(destination: Path) -> Path:
    """Create an empty temporary file beside ``destination``; O_EXCL with mode 0666 so the umask applies."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(_ATTEMPTS):
        candidate = _temporary_name(destination, "tmp")
        try:
            os.close(os.open(candidate, flags, 0o666))
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"no free temporary name beside {destination}")


def _new_folder(destination: Path, kind: str) -> Path:
    for _ in range(_ATTEMPTS):
        candidate = _temporary_name(destination, kind)
        try:
            candidate.mkdir(0o777)  # the umask applies, unlike mkdtemp's 0700
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"no free temporary name beside {destination}")


def fsync_file(path: Path) -> None:
    """Flush a written file's data to the storage device."""
    # Read-only is enough for fsync on POSIX (and works on a read-only file); Windows needs a writable handle.
    with open(path, "r+b" if os.name == "nt" else "rb") as handle:
        os.fsync(handle.fileno())


def fsync_folder(path: Path) -> None:
    """Flush a folder's entries (renames, new files) to the storage device, where the OS allows it."""
    if os.name == "nt":  # folders cannot be opened for fsync on Windows; NTFS journals the rename itself
        return
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # some file systems (network, FUSE) refuse fsync on a folder; the data itself was synced
    finally:
        os.close(descriptor)


def move_file(source: Path, destination: Path) -> None:
    """Durably rename a fully written ``source`` over ``destination`` (same file system)."""
    fsync_file(source)
    os.replace(source, destination)
    fsync_folder(Path(destination).parent)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` for a tool that writes by file name (safetensors, tarfile, …);
    leaving the block normally moves it over ``path``, an exception removes it and leaves ``path`` as it was.

    ``with atomic_path(out) as temporary: save_file(tensors, str(temporary))``
    """
    path = Path(path)
    temporary = _new_file(path)
    try:
        yield temporary
        move_file(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """An open handle (``mode`` "wb" or "w") on a temporary file that replaces ``path`` when the block ends
    without an exception; with one, ``path`` is untouched and the temporary removed."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_file writes a new file: mode must be 'w' or 'wb', got {mode!r}")
    if mode == "w" and encoding is None:
        encoding = "utf-8"
    with atomic_path(path) as temporary, open(temporary, mode, encoding=encoding) as handle:
        yield handle


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably."""
    with atomic_file(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Replace ``path`` with ``text`` atomically and durably."""
    with atomic_file(path, "w", encoding=encoding) as handle:
        handle.write(text)


def staging_folder(destination: str | os.PathLike) -> Path:
    """A new, empty, hidden folder beside ``destination`` (whose parent is created) to stage it in."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    return _new_folder(destination, "staging")


def fsync_tree(folder: Path) -> None:
    """Flush every file and folder under ``folder`` (and ``folder`` itself) to the storage device."""
    for root, _, files in os.walk(folder):
        for name in files:
            file_path = Path(root) / name
            if not file_path.is_symlink():
                fsync_file(file_path)
        fsync_folder(Path(root))


def replace_folder(staging: str | os.PathLike, destination: str | os.PathLike) -> None:
    """Move a fully written ``staging`` folder (a sibling of ``destination``) to ``destination``, replacing
    what is there.

    Its files are flushed to disk first. The old folder is renamed aside before the new one is renamed in,
    so an interruption leaves the old folder (at ``destination``, or for the instant between the two renames
    at a hidden ``.<name>.<hex>.old`` beside it) or the new one, never a mix of both.
    """
    staging, destination = Path(staging), Path(destination)
    fsync_tree(staging)
    if not destination.exists():
        os.replace(staging, destination)
        fsync_folder(destination.parent)
        return
    backup = _temporary_name(destination, "old")
    os.replace(destination, backup)
    try:
        os.replace(staging, destination)
    except BaseException:
        os.replace(backup, destination)  # put the old folder back: the caller still has it
        raise
    fsync_folder(destination.parent)
    shutil.rmtree(backup, ignore_errors=True)


@contextmanager
def atomic_folder(destination: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """A staging folder to fill; leaving the block normally swaps it in at ``destination`` (replacing an
    existing folder only with ``overwrite``), an exception removes it and leaves ``destination`` as it was.

    ``with atomic_folder(out, overwrite=True) as folder: (folder / "a.json").write_text(...)``
    """
    destination = Path(destination)
    if destination.exists() and not overwrite:
        raise FileExistsError(f"{destination} already exists")
    staging = staging_folder(destination)
    try:
        yield staging
        if destination.exists() and not overwrite:
            raise FileExistsError(f"{destination} appeared while it was being written")
        replace_folder(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@contextmanager
def scratch_folder(beside: str | os.PathLike) -> Iterator[Path]:
    """A hidden temporary folder beside ``beside`` (same file system, so :func:`move_file` out of it is a
    rename), removed with whatever is left in it when the block ends."""
    folder = staging_folder(beside)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
