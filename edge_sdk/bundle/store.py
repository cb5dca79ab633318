"""Reading, verifying, writing and packing bundles on disk.

Writing is atomic: files are staged in a hidden sibling folder and renamed into place only after the
manifest (with every file's sha256) is written, so a failed build never leaves a bundle behind.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from edge_sdk.bundle.atomic import atomic_path, default_permissions, replace_folder, staging_folder
from edge_sdk.bundle.manifest import MANIFEST_NAME, FileEntry, Manifest
from edge_sdk.errors import BundleError, BundleIntegrityError

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Bundle:
    """An opened bundle: its root folder and parsed manifest."""

    root: Path
    manifest: Manifest

    def path(self, relative: str) -> Path:
        """Absolute path of a file the manifest lists (raises if it lists no such file)."""
        self.manifest.file(relative)
        return self.root / relative


def read_manifest(root: str | os.PathLike) -> Manifest:
    root = Path(root)
    if not root.exists():
        raise BundleError(f"bundle folder {str(root)!r} does not exist; build one with `edge-sdk build`")
    if not root.is_dir():
        raise BundleError(f"{str(root)!r} is a file; pass the bundle folder (the one holding {MANIFEST_NAME})")
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        raise BundleError(
            f"{str(root)!r} is not a bundle: it has no {MANIFEST_NAME}; point at the folder `edge-sdk build` wrote"
        )
    try:
        raw = manifest_path.read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read {str(manifest_path)!r}: {exc.strerror or exc}; check its permissions") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BundleError(f"{manifest_path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                          "the bundle is damaged, copy it again or rebuild it with `edge-sdk build`") from exc
    return Manifest.from_json(text, source=str(manifest_path))


def verify_bundle(root: str | os.PathLike) -> Manifest:
    """Check every file the manifest lists against its recorded sha256; raise naming each bad file."""
    root = Path(root)
    manifest = read_manifest(root)
    problems = []
    for entry in manifest.files:
        file_path = root / entry.path
        if not file_path.is_file():
            problems.append(f"{entry.path}: missing")
        elif file_path.stat().st_size != entry.size or sha256_file(file_path) != entry.sha256:
            problems.append(f"{entry.path}: content changed since the build (sha256 mismatch)")
    if problems:
        raise BundleIntegrityError(
            f"bundle {str(root)!r} failed verification: " + "; ".join(problems)
            + ". Rebuild the bundle or copy it again from its source."
        )
    return manifest


def open_bundle(root: str | os.PathLike, verify: bool = True) -> Bundle:
    """Open a bundle folder, verifying file hashes unless ``verify`` is False."""
    root = Path(root)
    manifest = verify_bundle(root) if verify else read_manifest(root)
    return Bundle(root=root.resolve(), manifest=manifest)


class BundleWriter:
    """Stage a bundle's files, then publish them atomically with :meth:`commit`.

    Use as a context manager: leaving the block without committing (an exception) removes the staging
    folder, so nothing half-written remains at the destination.
    """

    def __init__(self, destination: str | os.PathLike, overwrite: bool = False) -> None:
        self.destination = Path(destination).resolve()
        where = str(self.destination)
        if self.destination.exists():
            if not self.destination.is_dir():
                raise BundleError(f"output path {where!r} is a file; choose a folder path for --out")
            if not overwrite:
                raise BundleError(f"output folder {where!r} already exists; choose another --out or pass --overwrite")
            if not (self.destination / MANIFEST_NAME).is_file() and any(self.destination.iterdir()):
                raise BundleError(
                    f"output folder {where!r} exists, is not empty and is not a bundle; refusing to replace it, "
                    "choose another --out"
                )
        try:
            self.staging = staging_folder(self.destination)
        except OSError as exc:
            raise BundleError(f"cannot create the output folder {where!r}: {exc.strerror or exc}") from exc
        self._committed = False

    def __enter__(self) -> BundleWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._committed:
            shutil.rmtree(self.staging, ignore_errors=True)

    def path(self, relative: str) -> Path:
        """Where to write ``relative`` inside the staging folder (parent folders are created)."""
        target = self.staging / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def folder(self, relative: str) -> Path:
        """A folder inside the staging area (created), for tools that write several files at once."""
        target = self.staging / relative
        target.mkdir(parents=True, exist_ok=True)
        return target

    def add_file(self, source: str | os.PathLike, relative: str) -> Path:
        target = self.path(relative)
        shutil.copyfile(source, target)
        return target

    def add_bytes(self, data: bytes, relative: str) -> Path:
        target = self.path(relative)
        target.write_bytes(data)
        return target

    def staged(self, manifest: Manifest) -> Bundle:
        """The staged files as an opened bundle (hashes filled in), to test them before committing."""
        self._hash_files(manifest)
        return Bundle(root=self.staging, manifest=manifest)

    def _hash_files(self, manifest: Manifest) -> None:
        entries = []
        for file_path in sorted(p for p in self.staging.rglob("*") if p.is_file()):
            relative = file_path.relative_to(self.staging).as_posix()
            if relative == MANIFEST_NAME:
                continue
            entries.append(FileEntry(path=relative, sha256=sha256_file(file_path), size=file_path.stat().st_size))
        manifest.files = entries

    def commit(self, manifest: Manifest) -> Path:
        """Hash every staged file into ``manifest``, write it, and move the bundle into place."""
        self._hash_files(manifest)
        (self.staging / MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")
        # A tool that wrote into the staging folder through mkstemp/mkdtemp left its files private (0600/0700).
        for path in [self.staging, *self.staging.rglob("*")]:
            default_permissions(path)
        replace_folder(self.staging, self.destination)
        self._committed = True
        return self.destination


def pack_bundle(root: str | os.PathLike, archive: str | os.PathLike) -> Path:
    """Verify a bundle and write it as one ``.tar.gz`` file for shipping (written atomically).

    Only the manifest and the files it lists are packed: adapters personalized on a device are that
    user's data, not part of the shipped bundle.
    """
    root = Path(root)
    manifest = verify_bundle(root)
    archive = Path(archive)
    if archive.is_dir():
        raise BundleError(f"--out {str(archive)!r} is a folder; give the archive's file name, e.g. bundle.tar.gz")
    with ExitStack() as stack:
        try:
            archive.parent.mkdir(parents=True, exist_ok=True)
            temporary = stack.enter_context(atomic_path(archive))
        except OSError as exc:
            raise BundleError(f"cannot write the archive {str(archive)!r}: {exc.strerror or exc}") from exc
        with tarfile.open(temporary, "w:gz") as tar:
            for relative in [MANIFEST_NAME, *(entry.path for entry in manifest.files)]:
                tar.add(root / relative, arcname=f"{root.name}/{relative}")
    return archive
