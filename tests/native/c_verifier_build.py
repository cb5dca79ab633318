"""Building the C verifier (native_hooks/c) from scratch for the tests, and small bundles and archives to check
with it. The toolchain (cmake, a C compiler, pkg-config, libsodium, jsmn; libarchive for archives) comes from
`make setup`; without it the tests skip, saying what is missing."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from edge_sdk.bundle import BundleWriter, Manifest, TensorSpec

REPO = Path(__file__).resolve().parents[2]
C_SOURCE = REPO / "native_hooks" / "c"
_TIMEOUT = 300


def missing_toolchain() -> str | None:
    """What the C build needs and this machine lacks, or None."""
    for tool in ("cmake", "pkg-config"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (make setup installs it)"
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        return "no C compiler (cc/gcc) is installed"
    if subprocess.run(["pkg-config", "--exists", "libsodium"]).returncode != 0:
        return "libsodium-dev is not installed (make setup installs it)"
    if not Path("/usr/include/jsmn.h").is_file() and not os.environ.get("EDGE_JSMN_INCLUDE_DIR"):
        return "libjsmn-dev (jsmn.h) is not installed (make setup installs it)"
    return None


def require_toolchain() -> None:
    reason = missing_toolchain()
    if reason is not None:
        pytest.skip(f"cannot build the C verifier: {reason}")


def run(command: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run a build command; fail the test with its output when it fails."""
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=_TIMEOUT)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(map(str, command))} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result.stdout


def cmake_build(source: Path, build: Path, targets: list[str], *options: str) -> Path:
    run(["cmake", "-S", str(source), "-B", str(build), "-DCMAKE_BUILD_TYPE=Debug", *options])
    run(["cmake", "--build", str(build), "-j2", "--target", *targets])
    return build


# --- bundles ----------------------------------------------------------------------------------------------

FILES = {"portable/inference.onnx": b"not really onnx, but bytes to hash" * 3, "tokenizer/tokenizer.json": b"{}\n",
         "adapters/initial.safetensors": b"\x00" * 64}


def make_bundle(destination: Path, refuse_unlisted: bool = True, files: dict[str, bytes] | None = None) -> Path:
    """A small bundle written by the real BundleWriter, with the file policy a build now writes."""
    manifest = Manifest(
        task="seq-cls", labels=["a", "b"], model={"source": "demo-model"},
        tokenizer={"file": "tokenizer/tokenizer.json", "pad_token_id": 0}, max_length=16,
        inputs=[TensorSpec("input_ids", "int64", ["batch", "sequence"])],
        outputs=[TensorSpec("logits", "float32", ["batch", 2])], trainable=[TensorSpec("w", "float32", [2, 2])],
        peft={}, training={}, inference={}, profile={}, build={}, sdk_version="0.1.0", bundle_id="demo",
        unlisted_files="refuse" if refuse_unlisted else "allow",
        writable_paths=[".cache/", "adapters/"] if refuse_unlisted else [],
    )
    with BundleWriter(destination, overwrite=True) as writer:
        for relative, data in (FILES if files is None else files).items():
            writer.add_bytes(data, relative)
        return writer.commit(manifest)


def write_archive(path: Path, members: list[tuple[str, bytes | None, str]]) -> Path:
    """A tar.gz shaped like `edge-sdk pack` output (PAX, fixed times and owners) from (name, data, kind)
    members: kind "file", "symlink" (data: the target, as bytes) or "dir"."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            info.mtime, info.mode, info.uid, info.gid = 0, 0o644, 0, 0
            if kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, (data or b"").decode()
                tar.addfile(info)
            elif kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size = len(data or b"")
                tar.addfile(info, io.BytesIO(data or b""))
    path.write_bytes(gzip.compress(buffer.getvalue(), mtime=0))
    return path


def archive_members(root: Path, top: str = "bundle") -> list[tuple[str, bytes | None, str]]:
    """The members `edge-sdk pack` writes for the bundle at ``root``, in its order."""
    manifest = json.loads((root / "manifest.json").read_text())
    members: list[tuple[str, bytes | None, str]] = [(f"{top}/manifest.json", (root / "manifest.json").read_bytes(),
                                                      "file")]
    if (root / "manifest.sig").is_file():
        members.append((f"{top}/manifest.sig", (root / "manifest.sig").read_bytes(), "file"))
    for item in sorted(manifest["files"], key=lambda item: item["path"]):
        members.append((f"{top}/{item['path']}", (root / item["path"]).read_bytes(), "file"))
    return members
