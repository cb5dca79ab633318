"""Shipping a bundle as one archive: ``pack_bundle`` writes it, ``unpack_bundle`` installs it safely.

The archive is a gzip-compressed tar holding ``<name>/manifest.json`` first, then ``<name>/manifest.sig``
when the bundle is signed, then every file the manifest lists, sorted. Packing is deterministic (same
bundle, same bytes): fixed member order, times (0, or ``$SOURCE_DATE_EPOCH``), owners and modes, and no
name or time in the gzip header.

Unpacking trusts nothing in the archive. It reads the stream once, front to back (no seeking, so a
damaged archive cannot make it jump around), and:

* reads the manifest (and signature) first, with a size cap, and calls ``check_signature`` on them
  before anything is written;
* accepts only regular files that the manifest lists, under safe relative names, each exactly the size
  the manifest says, hashed while written and compared with the manifest's sha256;
* refuses, naming the member: an absolute name, ``..``, a symlink, a hard link, a device or FIFO, a
  duplicate, an unlisted or oversized member, too many members or bytes, a listed file that is missing,
  something that is not a tar or gzip, a truncated archive;
* runs tarfile's own ``data`` filter on every member as a second layer;
* writes into a fresh hidden staging folder beside ``--out`` and renames it into place only when all of
  it passed; on any refusal the staging folder is removed and ``--out`` is as it was.

Standard library only: the device imports this module.
"""

from __future__ import annotations

import bz2
import errno
import gzip
import hashlib
import io
import lzma
import os
import shutil
import tarfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from edge_sdk.bundle.atomic import atomic_path, replace_folder, staging_folder
from edge_sdk.bundle.layout import SIGNATURE
from edge_sdk.bundle.manifest import MANIFEST_NAME, FileEntry, Manifest
from edge_sdk.bundle.paths import path_problem, resolve_inside
from edge_sdk.bundle.source_date import source_date_epoch
from edge_sdk.bundle.store import read_manifest_bytes
from edge_sdk.bundle.trust import Trust, resolve_trust
from edge_sdk.bundle.verification import record_stamp
from edge_sdk.errors import ArchiveError, BundleError, BundleIntegrityError, ConfigError, StorageFullError

DEFAULT_MAX_MEMBERS = 10_000
DEFAULT_MAX_BYTES = 64 << 30        # 64 GiB of listed files: far above any bundle this SDK builds today
MAX_MANIFEST_BYTES = 16 << 20
MAX_SIGNATURE_BYTES = 1 << 20
_CHUNK = 1 << 20
_HEADER_ALLOWANCE = 64 << 10        # per member: its tar header, a PAX header and padding, generously
_GZIP_LEVEL = 6

# check_signature(manifest bytes, signature bytes or None, where they came from) raises BundleTrustError.
SignatureCheck = Callable[[bytes, "bytes | None", str], None]


# --- pack -------------------------------------------------------------------------------------------------

def _member(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = mtime
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


class _HashingReader:
    """Reads a file for tarfile while hashing what it hands out."""

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        self.digest.update(data)
        return data


def _write_error(exc: OSError, what: str) -> BundleError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return StorageFullError(f"no space left writing {what} ({exc.strerror}); free some space and try again; "
                                "nothing was left behind")
    return BundleError(f"cannot write {what}: {exc.strerror or exc}")


def pack_bundle(root: str | os.PathLike, archive: str | os.PathLike) -> Path:
    """Write a bundle as one deterministic ``.tar.gz`` for shipping (atomically), checking every file against
    the manifest as it is read: a file that changed since the build fails the pack, naming it.

    Only the manifest, its signature and the files it lists are packed: adapters personalized on a device
    are that user's data, not part of the shipped bundle.
    """
    source = Path(root)
    manifest_bytes, manifest = read_manifest_bytes(source)
    real = source.resolve()
    top = real.name
    signature = resolve_inside(real, SIGNATURE, "signature")
    signature_bytes = signature.read_bytes() if signature.is_file() else None
    archive = Path(archive)
    if archive.is_dir():
        raise BundleError(f"--out {str(archive)!r} is a folder; give the archive's file name, e.g. bundle.tar.gz")
    mtime = source_date_epoch() or 0
    with ExitStack() as stack:
        try:
            archive.parent.mkdir(parents=True, exist_ok=True)
            temporary = stack.enter_context(atomic_path(archive))
        except OSError as exc:
            raise BundleError(f"cannot write the archive {str(archive)!r}: {exc.strerror or exc}") from exc
        try:
            raw = stack.enter_context(open(temporary, "wb"))
            # filename="" and mtime=0 keep the gzip header free of the temporary's name and of the time.
            compressed = stack.enter_context(gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                                                           compresslevel=_GZIP_LEVEL))
            tar = stack.enter_context(tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT))
            heads = [(MANIFEST_NAME, manifest_bytes)] + ([(SIGNATURE, signature_bytes)] if signature_bytes else [])
            for name, data in heads:
                tar.addfile(_member(f"{top}/{name}", len(data), mtime), io.BytesIO(data))
            for entry in sorted(manifest.files, key=lambda item: item.path):
                _add_file(tar, real, entry, f"{top}/{entry.path}", mtime)
        except OSError as exc:
            raise _write_error(exc, f"the archive {str(archive)!r}") from exc
    return archive


def _add_file(tar: tarfile.TarFile, root: Path, entry: FileEntry, name: str, mtime: int) -> None:
    path = resolve_inside(root, entry.path)
    where = f"bundle {str(root)!r}: {entry.path}"
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise BundleIntegrityError(f"{where} cannot be read ({exc.strerror or exc}); the bundle is incomplete: "
                                   "rebuild it or copy it again") from exc
    with handle:
        status = os.fstat(handle.fileno())
        if status.st_size != entry.size:
            raise BundleIntegrityError(f"{where} is {status.st_size} bytes, the manifest says {entry.size}; "
                                       "rebuild the bundle or copy it again")
        reader = _HashingReader(handle)
        try:
            tar.addfile(_member(name, entry.size, mtime), reader)
        except tarfile.TarError as exc:  # the file shrank while it was read
            raise BundleIntegrityError(f"{where} changed while it was packed ({exc}); pack again") from exc
        if reader.digest.hexdigest() != entry.sha256:
            raise BundleIntegrityError(f"{where}: content changed since the build (sha256 mismatch); rebuild the "
                                       "bundle or copy it again")


# --- unpack -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class UnpackedBundle:
    path: Path
    files: int
    bytes: int
    signed: bool


class _CappedReader:
    """The decompressed stream, refusing to hand out more than ``limit`` bytes in all: a gzip bomb or a
    gigantic PAX header stops here instead of filling memory or disk."""

    def __init__(self, stream: IO[bytes], limit: int, archive: str) -> None:
        self._stream = stream
        self._left = limit
        self._archive = archive

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0 or size > self._left:
            size = self._left + 1
        data = self._stream.read(size)
        self._left -= len(data)
        if self._left < 0:
            raise ArchiveError(f"archive {self._archive!r} expands to more data than its members may hold; "
                               "refusing it (a corrupt or hostile archive)")
        return data


_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, ValueError, OverflowError, UnicodeError)


def _decompressed(raw: IO[bytes], archive: str) -> IO[bytes]:
    """The archive's tar stream: gzip (what ``pack`` writes), xz, bzip2 or an uncompressed tar."""
    head = raw.read(262 + 6)
    raw.seek(0)
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(raw, "rb")
    if head.startswith(b"BZh"):
        return bz2.BZ2File(raw, "rb")
    if head[257:262] == b"ustar":
        return raw
    raise ArchiveError(f"{archive!r} is not a bundle archive (neither a gzip-compressed nor a plain tar file); "
                       "pass the .tar.gz that `edge-sdk pack` wrote")


def _kind(member: tarfile.TarInfo) -> str | None:
    """What makes ``member`` unacceptable as a bundle file, by type; None for a plain regular file."""
    if member.issym():
        return f"a symbolic link (to {member.linkname!r})"
    if member.islnk():
        return f"a hard link (to {member.linkname!r})"
    if member.ischr() or member.isblk():
        return "a device file"
    if member.isfifo():
        return "a FIFO"
    if member.isdir():
        return "a folder"
    if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
        return f"a special tar member (type {member.type!r})"
    return None


class _Discard(io.RawIOBase):
    """Where a check-only pass writes: nowhere."""

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        return len(data)


class _Unpacker:
    """One pass over an archive's members into a staging folder (see the module docstring)."""

    def __init__(self, archive: Path, staging: Path | None, check_signature: SignatureCheck | None, max_members: int,
                 max_bytes: int) -> None:
        # staging None: check only (check_archive), every member is hashed and nothing is written.
        self.archive = str(archive)
        self.staging = staging
        self.check_signature = check_signature
        self.max_members = max_members
        self.max_bytes = max_bytes
        self.members = 0
        self.total = 0
        self.current = "its first member"

    def refuse(self, member: str, reason: str) -> ArchiveError:
        return ArchiveError(f"archive {self.archive!r}, member {member!r}: {reason}; refusing the archive, "
                            "nothing was unpacked")

    def _members(self, tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
        while True:
            member = tar.next()
            if member is None:
                return
            self.members += 1
            if self.members > self.max_members:
                raise self.refuse(member.name, f"the archive has more than {self.max_members} members")
            self.current = member.name
            yield member

    def _read_small(self, tar: tarfile.TarFile, member: tarfile.TarInfo, cap: int) -> bytes:
        kind = _kind(member)
        if kind is not None:
            raise self.refuse(member.name, f"is {kind}, not a regular file")
        if member.size > cap:
            raise self.refuse(member.name, f"is {member.size} bytes, more than the {cap} allowed")
        handle = tar.extractfile(member)
        assert handle is not None  # a regular file
        data = handle.read(member.size)
        if len(data) != member.size:
            raise self.refuse(member.name, "is cut short (truncated archive)")
        return data

    def run(self, tar: tarfile.TarFile) -> tuple[bytes, Manifest, bytes | None]:
        members = self._members(tar)
        first = next(members, None)
        if first is None:
            raise ArchiveError(f"archive {self.archive!r} is empty; pass the .tar.gz that `edge-sdk pack` wrote")
        top, _, name = first.name.partition("/")
        if name != MANIFEST_NAME or path_problem(top) is not None:
            raise self.refuse(first.name, f"the first member must be <bundle name>/{MANIFEST_NAME} (as `edge-sdk "
                                          "pack` writes it); repack the bundle with `edge-sdk pack`")
        manifest_bytes = self._read_small(tar, first, MAX_MANIFEST_BYTES)
        pending = next(members, None)
        signature = None
        if pending is not None and pending.name == f"{top}/{SIGNATURE}":
            signature = self._read_small(tar, pending, MAX_SIGNATURE_BYTES)
            pending = next(members, None)
        if self.check_signature is not None:  # before anything is written
            self.check_signature(manifest_bytes, signature, f"{self.archive}:{first.name}")
        try:
            manifest = Manifest.from_json(manifest_bytes.decode("utf-8"), source=f"{self.archive}:{first.name}")
        except UnicodeDecodeError as exc:
            raise self.refuse(first.name, f"is not UTF-8 text ({exc})") from exc
        self._write(MANIFEST_NAME, manifest_bytes)
        if signature is not None:
            self._write(SIGNATURE, signature)
        listed = {entry.path: entry for entry in manifest.files}
        written: set[str] = set()
        while pending is not None:
            self._extract(tar, pending, top, listed, written)
            pending = next(members, None)
        missing = sorted(set(listed) - written)
        if missing:
            shown = ", ".join(repr(f"{top}/{path}") for path in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise ArchiveError(f"archive {self.archive!r} lacks {len(missing)} file(s) its manifest lists: {shown}"
                               f"{more} (a truncated or incomplete archive); refusing it, nothing was unpacked")
        return manifest_bytes, manifest, signature

    def _extract(self, tar: tarfile.TarFile, member: tarfile.TarInfo, top: str, listed: dict[str, FileEntry],
                 written: set[str]) -> None:
        name = member.name
        problem = path_problem(name)
        if problem is not None:
            raise self.refuse(name, f"its name {problem}")
        prefix = f"{top}/"
        if not name.startswith(prefix):
            raise self.refuse(name, f"is outside the archive's bundle folder {top!r}")
        relative = name[len(prefix):]
        kind = _kind(member)
        if kind is not None:
            raise self.refuse(name, f"is {kind}; a bundle archive holds regular files only")
        if relative in written or relative in (MANIFEST_NAME, SIGNATURE):
            raise self.refuse(name, "appears twice in the archive")
        entry = listed.get(relative)
        if entry is None:
            raise self.refuse(name, f"is not listed in the bundle's {MANIFEST_NAME}")
        if member.size != entry.size:
            raise self.refuse(name, f"is {member.size} bytes, the manifest says {entry.size}")
        self.total += member.size
        if self.total > self.max_bytes:
            raise self.refuse(name, f"the listed files exceed the cap of {self.max_bytes} bytes in all")
        try:  # the standard library's own rules for untrusted archives, as a second layer
            tarfile.data_filter(member, str(self.staging or Path.cwd() / ".edge-sdk-check"))
        except tarfile.FilterError as exc:
            raise self.refuse(name, f"refused by tarfile's data filter ({exc})") from exc
        source = tar.extractfile(member)
        assert source is not None  # a regular file
        digest = hashlib.sha256()
        with self._create(relative) as out:
            left = member.size
            while left:
                chunk = source.read(min(_CHUNK, left))
                if not chunk:
                    raise self.refuse(name, "is cut short (truncated archive)")
                left -= len(chunk)
                digest.update(chunk)
                self._put(out, chunk, relative)
        if digest.hexdigest() != entry.sha256:
            raise self.refuse(name, "its content does not match the manifest's sha256 (damaged or altered)")
        written.add(relative)

    def _create(self, relative: str) -> IO[bytes]:
        if self.staging is None:
            return _Discard()
        target = self.staging / relative
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # A new file in a fresh folder: O_EXCL and O_NOFOLLOW make sure nothing else is written through.
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
            return os.fdopen(os.open(target, flags, 0o666), "wb")
        except OSError as exc:
            raise _write_error(exc, f"{relative!r} into {str(self.staging)!r}") from exc

    def _put(self, out: IO[bytes], data: bytes, relative: str) -> None:
        try:
            out.write(data)
        except OSError as exc:
            raise _write_error(exc, f"{relative!r} into {str(self.staging)!r}") from exc

    def _write(self, relative: str, data: bytes) -> None:
        with self._create(relative) as out:
            self._put(out, data, relative)


def _check_destination(out: Path, overwrite: bool) -> None:
    where = str(out)
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir():
        raise ArchiveError(f"--out {where!r} exists and is not a folder; choose another --out")
    if not overwrite:
        raise ArchiveError(f"--out {where!r} already exists; choose another folder or pass --overwrite")
    if not (out / MANIFEST_NAME).is_file() and any(out.iterdir()):
        raise ArchiveError(f"--out {where!r} exists, is not empty and is not a bundle; refusing to replace it, "
                           "choose another --out")


def _signature_check(trust: Trust, check_signature: SignatureCheck | None) -> SignatureCheck | None:
    if check_signature is not None:
        return check_signature
    policy = resolve_trust(trust)
    if policy is None:
        return None

    def check(manifest_bytes: bytes, signature_bytes: bytes | None, source: str) -> None:
        from edge_sdk.bundle.signing import check_manifest_signature  # cryptography: only when asked

        check_manifest_signature(manifest_bytes, signature_bytes, source, policy)
    return check


def _check_archive_arguments(archive: Path, max_members: int, max_bytes: int) -> None:
    if not archive.is_file():
        raise ArchiveError(f"archive {str(archive)!r} does not exist or is not a file; pass the .tar.gz that "
                           "`edge-sdk pack` wrote")
    if max_members < 1 or max_bytes < 0:
        raise ConfigError(f"the caps must be positive (max_members={max_members}, max_bytes={max_bytes})")


def _read_archive(archive: Path, unpacker: _Unpacker) -> tuple[bytes, Manifest, bytes | None]:
    """One pass of ``unpacker`` over the archive's stream, read errors turned into ArchiveErrors."""
    # Headers, PAX records, padding, the manifest and signature: a little beyond the files themselves.
    limit = unpacker.max_bytes + unpacker.max_members * _HEADER_ALLOWANCE + MAX_MANIFEST_BYTES + MAX_SIGNATURE_BYTES
    with open(archive, "rb") as raw, _decompressed(raw, str(archive)) as stream:
        try:
            with tarfile.open(fileobj=_CappedReader(stream, limit, str(archive)), mode="r|") as tar:
                return unpacker.run(tar)
        except _READ_ERRORS as exc:
            raise ArchiveError(f"archive {str(archive)!r} is damaged or truncated at member "
                               f"{unpacker.current!r} ({type(exc).__name__}: {exc}); get it again from its "
                               "source") from exc
        except OSError as exc:  # reading the archive (gzip's own checks raise BadGzipFile, an OSError)
            raise ArchiveError(f"archive {str(archive)!r} cannot be read at member {unpacker.current!r} "
                               f"({exc.strerror or exc}); get it again from its source") from exc


@dataclass(frozen=True)
class CheckedArchive:
    """What :func:`check_archive` found: the bundle's manifest and its files' count and bytes."""

    archive: Path
    manifest: Manifest
    manifest_bytes: bytes
    signature: bytes | None
    files: int
    bytes: int


def check_archive(archive: str | os.PathLike, *, trust: Trust = None, check_signature: SignatureCheck | None = None,
                  max_members: int = DEFAULT_MAX_MEMBERS, max_bytes: int = DEFAULT_MAX_BYTES) -> CheckedArchive:
    """Every check :func:`unpack_bundle` makes (signature, members, sizes, hashes, nothing missing), writing
    nothing: what ``edge-sdk verify ARCHIVE`` does, so an archive can be checked before it is installed (and
    compared with the C verifier, which checks archives the same way)."""
    archive = Path(archive)
    _check_archive_arguments(archive, max_members, max_bytes)
    unpacker = _Unpacker(archive, None, _signature_check(trust, check_signature), max_members, max_bytes)
    manifest_bytes, manifest, signature = _read_archive(archive, unpacker)
    return CheckedArchive(archive=archive, manifest=manifest, manifest_bytes=manifest_bytes, signature=signature,
                          files=len(manifest.files), bytes=unpacker.total)


def unpack_bundle(archive: str | os.PathLike, out: str | os.PathLike, *, trust: Trust = None,
                  check_signature: SignatureCheck | None = None, max_members: int = DEFAULT_MAX_MEMBERS,
                  max_bytes: int = DEFAULT_MAX_BYTES, overwrite: bool = False) -> UnpackedBundle:
    """Install the bundle archive ``archive`` as the folder ``out`` (see the module docstring for the
    checks); raise an ArchiveError naming the member at the first thing that is not right, leaving ``out``
    as it was. ``out`` is replaced only with ``overwrite`` and only if it is a bundle (its adapters go too).

    Under a trust policy (``trust``: a TrustPolicy, None for ``EDGE_SDK_TRUSTED_KEYS``, False for none) the
    manifest's signature is checked before anything is written; ``check_signature`` replaces that check.

    The files are hashed while written, so the bundle's verification stamp is recorded: the first open
    after unpacking does not hash them again (bar any written in the last seconds: see verification.py).
    """
    archive, out = Path(archive), Path(out)
    check_signature = _signature_check(trust, check_signature)
    _check_archive_arguments(archive, max_members, max_bytes)
    _check_destination(out, overwrite)
    try:
        staging = staging_folder(out)
    except OSError as exc:
        raise _write_error(exc, f"the folder {str(out)!r}") from exc
    unpacker = _Unpacker(archive, staging, check_signature, max_members, max_bytes)
    try:
        manifest_bytes, manifest, signature = _read_archive(archive, unpacker)
        _check_destination(out, overwrite)  # nothing appeared there meanwhile
        try:
            replace_folder(staging, out)
        except OSError as exc:
            raise _write_error(exc, f"the folder {str(out)!r}") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    real = out.resolve()
    record_stamp(real, manifest, manifest_bytes)
    return UnpackedBundle(path=real, files=len(manifest.files), bytes=unpacker.total, signed=signature is not None)
