"""Atomic, durable writes of files and folders: the one way the SDK replaces anything on disk.

A reader (or a device that lost power) sees either the old content or the new one, never a mix:

* a file is written to a temporary file in the same folder (a rename is atomic only within one file
  system), flushed to disk with fsync, renamed over the destination, and the folder is fsynced so the
  rename itself survives a power cut;
* a folder is staged as a hidden sibling, every file in it fsynced, then swapped in: the old folder is
  renamed aside, the new one renamed into place, the old one removed.

Temporaries are created with the usual permissions (0666/0777 less the umask), not the private 0600/0700
of ``tempfile.mkstemp``/``mkdtemp``, and removed on any exception. They are named
``.<name>.<8 hex>.tmp`` (a file), ``.staging`` (a folder being written), ``.old`` (the previous folder,
renamed aside for the instant of a swap) and ``.trash`` (a folder being removed), so a process killed
mid-write leaves litter :func:`remove_stale_temporaries` recognises.

Failures are never papered over:

* a failed fsync is fatal and never retried: after a failed fsync Linux may already have dropped the
  dirty pages and marked them clean, so a second fsync "succeeds" over lost data (PostgreSQL's
  "fsyncgate", 2018). The temporary is removed and the destination keeps its previous version;
* a full disk, quota or file size limit (ENOSPC, EDQUOT, EFBIG), whoever reported it (Python, the
  safetensors writer, ONNX Runtime), becomes :class:`~edge_sdk.errors.StorageFullError` naming the file.
  This module is the one place that translation happens; other OSErrors keep their type and gain the
  path they were writing.

Standard library only (and the SDK's errors): the device imports this module.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from edge_sdk.errors import StorageFullError

_ATTEMPTS = 100
_KINDS = ("tmp", "staging", "old", "trash")
# ``.<name>.<8 hex>.<kind>``: what _temporary_name makes; nothing else in a folder we write matches it.
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{8}\.(?P<kind>" + "|".join(_KINDS) + r")$")
_FULL = {errno.ENOSPC, errno.EFBIG} | ({errno.EDQUOT} if hasattr(errno, "EDQUOT") else set())
# Errnos with which a file system says it cannot fsync a folder at all (some FUSE and network file
# systems, and Linux for folders on file systems without directory fsync). They mean "not supported",
# not "your data did not reach the disk": the files themselves were fsynced, and the rename is as
# durable as that file system makes any rename. Every other errno from a folder fsync is fatal.
_FOLDER_FSYNC_UNSUPPORTED = {errno.EINVAL, errno.ENOTSUP, getattr(errno, "EOPNOTSUPP", errno.ENOTSUP)}
# How writers that are not Python report an errno: Rust's io::Error ("... (os error 28)", safetensors)
# and ONNX Runtime's checkpoint writer ("... errno:28").
_FOREIGN_ERRNO = re.compile(r"(?:\(os error |errno:\s*)(\d+)")


def _errno_of(exc: BaseException) -> int | None:
    """The errno behind ``exc`` or the exceptions it was raised from (an EdgeSdkError wrapping ONNX Runtime's
    message, a safetensors error), or None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno is not None:
            return current.errno
        match = _FOREIGN_ERRNO.search(str(current))
        if match:
            return int(match.group(1))
        current = current.__cause__ or current.__context__
    return None


def _storage_full(path: Path, exc: BaseException, before_rename: bool) -> StorageFullError:
    reason = os.strerror(_errno_of(exc) or errno.ENOSPC)
    outcome = ("its previous version is untouched and the partial write was removed" if before_rename else
               "the new version was renamed into place but its folder could not be flushed to the disk")
    return StorageFullError(f"the disk is full ({reason}) while writing {str(path)!r}; {outcome}; free some space "
                            "(or raise the quota or file size limit) and run again")


@contextmanager
def storage_errors(path: str | os.PathLike, before_rename: bool = True) -> Iterator[None]:
    """Translate a failed write of ``path``: a full disk, quota or file size limit becomes StorageFullError;
    an OSError that names no file is raised again naming ``path``; anything else passes unchanged.

    Used by every helper here, so a writer that goes through this module needs no translation of its own.
    ``before_rename`` says whether the destination still holds its previous version (the message says so)."""
    try:
        yield
    except StorageFullError:
        raise
    except Exception as exc:
        if _errno_of(exc) in _FULL:
            raise _storage_full(Path(path), exc, before_rename) from exc
        if isinstance(exc, OSError) and exc.filename is None and exc.errno is not None:
            raise type(exc)(exc.errno, exc.strerror, str(path)) from exc
        raise


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
    """Flush a written file's data to the storage device; a failure raises (once: never retried)."""
    # Read-only is enough for fsync on POSIX (and works on a read-only file); Windows needs a writable handle.
    with storage_errors(path), open(path, "r+b" if os.name == "nt" else "rb") as handle:
        os.fsync(handle.fileno())


def fsync_folder(path: Path) -> None:
    """Flush a folder's entries (renames, new files) to the storage device. A failure raises (never retried),
    except the errnos with which a file system says it cannot fsync folders at all."""
    if os.name == "nt":  # folders cannot be opened for fsync on Windows; NTFS journals the rename itself
        return
    with storage_errors(path, before_rename=False):
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(descriptor)
        except OSError as exc:
            if exc.errno not in _FOLDER_FSYNC_UNSUPPORTED:
                raise
        finally:
            os.close(descriptor)


def move_file(source: Path, destination: Path) -> None:
    """Durably rename a fully written ``source`` over ``destination`` (same file system)."""
    fsync_file(source)
    with storage_errors(destination):
        os.replace(source, destination)
    fsync_folder(Path(destination).parent)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` for a tool that writes by file name (safetensors, tarfile, …);
    leaving the block normally moves it over ``path``, an exception removes it and leaves ``path`` as it was.

    ``with atomic_path(out) as temporary: save_file(tensors, str(temporary))``
    """
    path = Path(path)
    with storage_errors(path):
        temporary = _new_file(path)
    try:
        with storage_errors(path):
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
    with storage_errors(destination):
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
        with storage_errors(destination):
            os.replace(staging, destination)
        fsync_folder(destination.parent)
        return
    backup = _temporary_name(destination, "old")
    with storage_errors(destination):
        os.replace(destination, backup)
        # A process killed here leaves no ``destination``, only ``backup``: recover_folder() (called by
        # readers and by remove_stale_temporaries) renames it back.
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
        with storage_errors(destination):
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


def remove_folder(path: str | os.PathLike) -> None:
    """Remove a folder so that an interruption leaves it whole or gone, never half-deleted: it is renamed to a
    hidden ``.trash`` sibling first (atomic), then deleted; remove_stale_temporaries() finishes the job if
    the process dies in between."""
    path = Path(path)
    if not path.exists():
        return
    trash = _temporary_name(path, "trash")
    with storage_errors(path):
        os.replace(path, trash)
    fsync_folder(path.parent)
    shutil.rmtree(trash, ignore_errors=True)


def _leftovers(folder: Path, name: str, kind: str) -> list[Path]:
    entries = [entry for entry in folder.glob(f".{_glob_escape(name)}.*.{kind}")
               if (match := _TEMPORARY.match(entry.name)) and match["name"] == name]
    # Newest first: when more than one was left (it takes interrupted swaps with no recovery in between), the
    # most recently written is the latest complete version (a rename within a folder keeps a folder's mtime).
    return sorted(entries, key=lambda entry: (entry.lstat().st_mtime_ns, entry.name), reverse=True)


def _glob_escape(text: str) -> str:
    """``text`` with glob's special characters escaped, for a literal match."""
    return re.sub(r"([*?\[])", r"[\1]", text)


def recover_folder(destination: str | os.PathLike) -> bool:
    """If ``destination`` is missing because a replace_folder() was interrupted between its two renames, put
    the previous version (its hidden ``.old`` sibling) back. Returns whether it did.

    The ``.staging`` sibling may be complete at that instant too, but nothing on disk says so (a staging
    folder still being written looks the same), so the old version, known complete, is the one restored."""
    destination = Path(destination)
    if destination.exists() or not destination.parent.is_dir():
        return False
    backups = _leftovers(destination.parent, destination.name, "old")
    if not backups:
        return False
    os.replace(backups[0], destination)
    fsync_folder(destination.parent)
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[str]:
    """Clean what writers killed mid-write left in ``folder`` (not below it); returns the names handled.

    Temporary files (``.tmp``), staging folders and folders being removed (``.trash``) are deleted. A
    ``.old`` folder is the previous version of a folder whose swap was interrupted: when its destination is
    missing it is renamed back (see recover_folder), otherwise the swap finished and it is deleted.

    Only call this while no other process writes in ``folder`` (under the store's lock): their temporaries
    look exactly like stale ones.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    handled: list[str] = []
    entries = sorted((entry for entry in folder.iterdir() if _TEMPORARY.match(entry.name)),
                     key=lambda entry: _KINDS.index(_TEMPORARY.match(entry.name)["kind"]))
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if not entry.exists() and not entry.is_symlink():
            continue  # restored or removed while handling an earlier entry
        if match["kind"] == "old":
            recover_folder(folder / match["name"])  # restores the newest .old of that name, if needed
            if not entry.exists():
                handled.append(entry.name)
                continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
        handled.append(entry.name)
    if handled:
        fsync_folder(folder)
    return handled
