"""The C verifier (native_hooks/c) built from scratch, against good and damaged bundles and archives, with the
Python verifier (verify_bundle / check_archive under the same trusted key) as the reference: for every case both
pass, or both fail naming the same file."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from bundle_factory import entry_for, rewrite_manifest
from c_verifier_build import (
    C_SOURCE,
    archive_members,
    cmake_build,
    make_bundle,
    require_toolchain,
    run,
    write_archive,
)
from click.testing import CliRunner

from edge_sdk.bundle.archive import check_archive, pack_bundle
from edge_sdk.bundle.keys import SigningKey, generate_keys
from edge_sdk.bundle.signing import TrustPolicy, sign_bundle
from edge_sdk.bundle.store import verify_bundle
from edge_sdk.cli.main import cli
from edge_sdk.errors import EdgeSdkError

CONSUMER = r"""
#include <stdio.h>
#include "edge_bundle_verify.h"
int main(int argc, char **argv) {
    edge_bundle_verify_options options;
    edge_bundle_verify_report report;
    int status;
    edge_bundle_verify_options_init(&options);
    options.public_key_files = (const char *const *)(argv + 2);
    options.public_key_count = (size_t)(argc - 2);
    status = edge_bundle_verify(argv[1], &options, &report);
    printf("%s|%s|%s|%lu\n", edge_bundle_verify_status_name(status), report.file, report.reason, report.files_checked);
    return status;
}
"""


@pytest.fixture(scope="session")
def c_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A firmware-style parent project that add_subdirectory()s native_hooks/c and links EdgeSdk::verify (the
    contract other builds rely on), built from scratch; its binary folder."""
    require_toolchain()
    root = tmp_path_factory.mktemp("c-verifier")
    parent = root / "parent"
    parent.mkdir()
    (parent / "consumer.c").write_text(CONSUMER)
    (parent / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.16)\nproject(firmware C)\n"
        f'add_subdirectory("{C_SOURCE}" edge_bundle_verify)\n'
        "add_executable(consumer consumer.c)\ntarget_link_libraries(consumer PRIVATE EdgeSdk::verify)\n")
    return cmake_build(parent, root / "build", ["edge_bundle_verify", "consumer"])


@pytest.fixture(scope="session")
def c_cli(c_build: Path) -> Path:
    return c_build / "edge_bundle_verify" / "edge_bundle_verify"


@pytest.fixture(scope="session")
def archive_support(c_build: Path) -> bool:
    return "EDGE_BUNDLE_WITH_ARCHIVE:BOOL=ON" in (c_build / "CMakeCache.txt").read_text()


@dataclass(frozen=True)
class Keys:
    signer: SigningKey
    public: Path      # the signer's public key: trusted in most cases
    other: Path       # a key that signed nothing


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    folder = tmp_path_factory.mktemp("keys")
    made, other = generate_keys(folder / "signer"), generate_keys(folder / "other")
    return Keys(SigningKey.load(made.private_key), made.public_key, other.public_key)


def c_verify(cli_path: Path, target: Path, public_key: Path | None) -> tuple[int, str]:
    command = [str(cli_path), *(["--public-key", str(public_key)] if public_key else []), str(target)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    return result.returncode, result.stderr


def python_verify(target: Path, public_key: Path | None) -> str | None:
    """The Python verifier's error message, or None when it passes."""
    policy = TrustPolicy.from_paths([public_key], rollback="off") if public_key else False
    try:
        if target.is_file():
            check_archive(target, trust=policy)
        else:
            verify_bundle(target, trust=policy)
    except EdgeSdkError as exc:
        return str(exc)
    return None


# --- the cases: each makes its input under a folder and says what a failure must name -------------------------

@dataclass(frozen=True)
class Case:
    make: Callable[[Path, Keys], Path]
    named: str | None          # None: both verifiers pass; else both fail and both messages hold this
    trusted: bool = True       # check with the signer's public key (False: with none; see also untrusted_key)
    archive: bool = False


def _signed(folder: Path, keys: Keys, **kwargs) -> Path:
    root = make_bundle(folder / "bundle", **kwargs)
    sign_bundle(root, keys.signer)
    return root


def _flip_byte(folder: Path, keys: Keys) -> Path:
    root = _signed(folder, keys)
    data = bytearray((root / "portable/inference.onnx").read_bytes())
    data[5] ^= 0x01
    (root / "portable/inference.onnx").write_bytes(bytes(data))
    return root


def _missing(folder: Path, keys: Keys) -> Path:
    root = _signed(folder, keys)
    (root / "tokenizer/tokenizer.json").unlink()
    return root


def _extra(folder: Path, keys: Keys) -> Path:
    root = _signed(folder, keys)
    (root / "portable/extra.bin").write_bytes(b"smuggled")
    return root


def _writable_extra(folder: Path, keys: Keys) -> Path:
    root = _signed(folder, keys)
    (root / ".cache/vitisai").mkdir(parents=True)
    (root / ".cache/vitisai/compiled.xmodel").write_bytes(b"cache")
    (root / "adapters/mine.safetensors").write_bytes(b"trained on the device")
    return root


def _extra_allowed(folder: Path, keys: Keys) -> Path:
    root = _signed(folder, keys, refuse_unlisted=False)  # an old bundle: no file policy
    (root / "portable/extra.bin").write_bytes(b"tolerated")
    return root


def _bad_signature(folder: Path, keys: Keys) -> Path:
    root = _signed(folder, keys)
    document = json.loads((root / "manifest.sig").read_text())
    value = bytearray(base64.b64decode(document["signatures"][0]["signature"]))
    value[0] ^= 0xFF
    document["signatures"][0]["signature"] = base64.b64encode(bytes(value)).decode()
    (root / "manifest.sig").write_text(json.dumps(document))
    return root


def _edited_after_signing(folder: Path, keys: Keys) -> Path:
    root = _signed(folder, keys)
    rewrite_manifest(root, lambda data: data.update(version=99))
    return root


def _unsigned(folder: Path, keys: Keys) -> Path:
    return make_bundle(folder / "bundle")


def _truncated_manifest(folder: Path, keys: Keys) -> Path:
    root = make_bundle(folder / "bundle")
    data = (root / "manifest.json").read_bytes()
    (root / "manifest.json").write_bytes(data[: len(data) // 2])
    return root


def _newer_schema(folder: Path, keys: Keys) -> Path:
    root = make_bundle(folder / "bundle")
    rewrite_manifest(root, lambda data: data.update(schema_version=2))
    return root


def _traversal(folder: Path, keys: Keys) -> Path:
    root = make_bundle(folder / "bundle")
    (folder / "outside.bin").write_bytes(b"secret")
    rewrite_manifest(root, lambda data: data["files"].append(entry_for("../outside.bin", b"secret")))
    return root


def _symlink_out(folder: Path, keys: Keys) -> Path:
    root = _signed(folder, keys)
    data = (root / "tokenizer/tokenizer.json").read_bytes()
    (folder / "elsewhere.json").write_bytes(data)
    (root / "tokenizer/tokenizer.json").unlink()
    os.symlink(folder / "elsewhere.json", root / "tokenizer/tokenizer.json")
    return root


def _archive(folder: Path, keys: Keys) -> Path:
    return pack_bundle(_signed(folder, keys), folder / "bundle.tar.gz")


def _archive_with(change: Callable[[list], None]) -> Callable[[Path, Keys], Path]:
    def make(folder: Path, keys: Keys) -> Path:
        members = archive_members(_signed(folder, keys))
        change(members)
        return write_archive(folder / "bundle.tar.gz", members)
    return make


def _flip_member(members: list) -> None:
    for index, (name, data, kind) in enumerate(members):
        if name == "bundle/portable/inference.onnx":
            members[index] = (name, bytes([data[0] ^ 1]) + data[1:], kind)


def _archive_truncated(folder: Path, keys: Keys) -> Path:
    # Big enough that the cut lands inside a member's data, not in the gzip trailer only.
    root = _signed(folder, keys, files={"portable/inference.onnx": os.urandom(200_000), "tokenizer/tokenizer.json":
                                        b"{}"})
    archive = pack_bundle(root, folder / "bundle.tar.gz")
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) * 2 // 3])
    return archive


CASES = {
    "good": Case(lambda folder, keys: _signed(folder, keys), None),
    "good-unsigned-no-key": Case(_unsigned, None, trusted=False),
    "flipped-byte": Case(_flip_byte, "portable/inference.onnx"),
    "missing-file": Case(_missing, "tokenizer/tokenizer.json"),
    "extra-file-refused": Case(_extra, "portable/extra.bin"),
    "extra-file-in-writable-paths": Case(_writable_extra, None),
    "extra-file-allowed-by-old-bundle": Case(_extra_allowed, None),
    "bad-signature": Case(_bad_signature, "does not match manifest.json"),
    "manifest-edited-after-signing": Case(_edited_after_signing, "manifest.json"),
    "unsigned-but-key-given": Case(_unsigned, "not signed"),
    "truncated-manifest": Case(_truncated_manifest, "manifest.json", trusted=False),
    "newer-schema": Case(_newer_schema, "schema version 2", trusted=False),
    "path-traversal": Case(_traversal, "../outside.bin", trusted=False),
    "symlink-out": Case(_symlink_out, "tokenizer/tokenizer.json"),
    "archive-good": Case(_archive, None, archive=True),
    "archive-flipped-byte": Case(_archive_with(_flip_member), "bundle/portable/inference.onnx", archive=True),
    "archive-truncated": Case(_archive_truncated, "truncated", archive=True),
    "archive-extra-member": Case(_archive_with(lambda m: m.append(("bundle/zz-extra.bin", b"x", "file"))),
                                 "bundle/zz-extra.bin", archive=True),
    "archive-missing-member": Case(_archive_with(lambda m: m.pop()), "bundle/tokenizer/tokenizer.json",
                                   archive=True),
    "archive-duplicate-member": Case(_archive_with(lambda m: m.append(m[-1])), "bundle/tokenizer/tokenizer.json",
                                     archive=True),
    "archive-symlink-member": Case(_archive_with(lambda m: m.append(("bundle/link", b"/etc/passwd", "symlink"))),
                                   "bundle/link", archive=True),
    "archive-traversal-member": Case(_archive_with(lambda m: m.append(("bundle/../evil", b"x", "file"))),
                                     "bundle/../evil", archive=True),
    "archive-manifest-not-first": Case(_archive_with(lambda m: m.reverse()), "bundle/tokenizer/tokenizer.json",
                                       archive=True),
}


@pytest.mark.parametrize("name", CASES)
def test_c_and_python_verifiers_agree(name: str, c_cli: Path, archive_support: bool, keys: Keys,
                                      tmp_path: Path) -> None:
    case = CASES[name]
    if case.archive and not archive_support:
        pytest.skip("the C verifier was built without libarchive (install libarchive-dev)")
    target = case.make(tmp_path, keys)
    public_key = keys.public if case.trusted else None
    c_status, c_errors = c_verify(c_cli, target, public_key)
    python_error = python_verify(target, public_key)
    if case.named is None:
        assert (c_status, c_errors, python_error) == (0, "", None)
        return
    assert c_status == 1, c_errors
    assert python_error is not None, "the Python verifier passed what the C verifier refused"
    assert c_errors.startswith("edge_bundle_verify: ")
    assert case.named in c_errors, c_errors
    assert case.named in python_error, python_error


def test_untrusted_signer_is_refused_by_both(c_cli: Path, keys: Keys, tmp_path: Path) -> None:
    root = _signed(tmp_path, keys)
    c_status, c_errors = c_verify(c_cli, root, keys.other)
    python_error = python_verify(root, keys.other)
    assert c_status == 1 and python_error is not None
    assert keys.signer.key_id in c_errors and "not trusted" in c_errors
    assert keys.signer.key_id in python_error


def test_any_one_of_several_keys_is_enough(c_cli: Path, keys: Keys, tmp_path: Path) -> None:
    root = _signed(tmp_path, keys)
    result = subprocess.run([str(c_cli), "--public-key", str(keys.other), "--public-key", str(keys.public), "--json",
                             str(root)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] and report["verified_by"] == keys.signer.key_id and report["files"] == 3


def test_every_bad_file_is_named_and_the_library_reports_the_first(c_build: Path, keys: Keys, tmp_path: Path) -> None:
    root = _signed(tmp_path, keys)
    (root / "portable/inference.onnx").write_bytes(b"changed")
    (root / "tokenizer/tokenizer.json").unlink()
    c_status, c_errors = c_verify(c_build / "edge_bundle_verify" / "edge_bundle_verify", root, keys.public)
    assert c_status == 1
    assert "portable/inference.onnx: content changed since the build (7 bytes" in c_errors
    assert "tokenizer/tokenizer.json: missing" in c_errors
    consumer = subprocess.run([str(c_build / "consumer"), str(root), str(keys.public)], capture_output=True,
                              text=True, timeout=60)
    status, file, _, _ = consumer.stdout.strip().split("|")
    assert (consumer.returncode, status) == (1, "integrity")
    assert file in ("portable/inference.onnx", "tokenizer/tokenizer.json")


def test_usage_and_io_errors_exit_2(c_cli: Path, keys: Keys, tmp_path: Path) -> None:
    root = make_bundle(tmp_path / "bundle")
    not_a_key = tmp_path / "model.onnx"
    not_a_key.write_bytes(b"\x08\x07")
    assert subprocess.run([str(c_cli)], capture_output=True).returncode == 2
    assert subprocess.run([str(c_cli), "--bogus", str(root)], capture_output=True).returncode == 2
    assert subprocess.run([str(c_cli), str(tmp_path / "nowhere")], capture_output=True).returncode == 2
    assert subprocess.run([str(c_cli), "--require-signature", str(root)], capture_output=True).returncode == 2
    result = subprocess.run([str(c_cli), "--public-key", str(not_a_key), str(root)], capture_output=True, text=True)
    assert result.returncode == 2 and "model.onnx: is not a PEM public key" in result.stderr
    private = subprocess.run([str(c_cli), "--public-key", str(keys.public.with_suffix(".key")), str(root)],
                             capture_output=True, text=True)
    assert private.returncode == 2 and "is a private key" in private.stderr
    quiet = subprocess.run([str(c_cli), "--quiet", str(root)], capture_output=True, text=True)
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")


def test_edge_sdk_verify_checks_an_archive_without_installing_it(keys: Keys, tmp_path: Path) -> None:
    archive = _archive(tmp_path, keys)
    before = sorted(tmp_path.rglob("*"))
    good = CliRunner().invoke(cli, ["verify", str(archive), "--trusted-key", str(keys.public), "--json"])
    assert good.exit_code == 0, good.output
    report = json.loads(good.output)
    assert report["archive"] and report["files"] == 3 and report["verified_by"] == [keys.signer.key_id]
    untrusted = CliRunner().invoke(cli, ["verify", str(archive), "--trusted-key", str(keys.other)])
    assert untrusted.exit_code == 1 and "does not trust" in untrusted.output
    assert sorted(tmp_path.rglob("*")) == before  # nothing unpacked, nothing left behind


def test_the_make_build_without_libarchive_checks_folders_only(keys: Keys, tmp_path: Path) -> None:
    """The plain Makefile, in the configuration of firmware without libarchive."""
    require_toolchain()
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    build = tmp_path / "make-build"
    run(["make", "-C", str(C_SOURCE), f"BUILD={build}", "WITH_ARCHIVE=0", "-j2"])
    assert (build / "libedge_bundle_verify.a").is_file()
    root = _signed(tmp_path, keys)
    assert c_verify(build / "edge_bundle_verify", root, keys.public) == (0, "")
    archive = pack_bundle(root, tmp_path / "bundle.tar.gz")
    status, errors = c_verify(build / "edge_bundle_verify", archive, keys.public)
    assert status == 2 and "without archive support" in errors


# --- manifest edits: the two readers of manifest.json agree on what they accept -------------------------------

def _set(key: str, value: object) -> Callable[[dict], None]:
    return lambda data: data.__setitem__(key, value)


def _entry(index: int, key: str, value: object) -> Callable[[dict], None]:
    return lambda data: data["files"][index].__setitem__(key, value)


def _drop(index: int, key: str) -> Callable[[dict], None]:
    return lambda data: data["files"][index].pop(key)


def _add_path(path: str, data: bytes = b"{}\n") -> Callable[[dict], None]:
    return lambda manifest: manifest["files"].append(entry_for(path, data))


# json.dumps writes non-ASCII as \u escapes, so these also exercise the C reader's string decoding.
EDITS: dict[str, Callable[[dict], None]] = {
    "schema-0": _set("schema_version", 0), "schema-1.0": _set("schema_version", 1.0),
    "schema-true": _set("schema_version", True), "schema-string": _set("schema_version", "1"),
    "schema-null": _set("schema_version", None), "schema-huge": _set("schema_version", 10**30),
    "files-object": _set("files", {}), "files-null": _set("files", None), "files-empty": _set("files", []),
    "entry-not-object": lambda data: data["files"].__setitem__(0, "portable/inference.onnx"),
    "no-path": _drop(0, "path"), "no-sha256": _drop(0, "sha256"), "no-size": _drop(0, "size"),
    "size-negative": _entry(0, "size", -1), "size-float": _entry(0, "size", 3.0), "size-bool": _entry(0, "size", True),
    "size-string": _entry(0, "size", "3"), "size-wrong": _entry(0, "size", 4),
    "sha-upper": lambda data: data["files"][0].__setitem__("sha256", data["files"][0]["sha256"].upper()),
    "sha-short": _entry(0, "sha256", "abc"), "sha-number": _entry(0, "sha256", 5),
    "path-number": _entry(0, "path", 7), "path-empty": _entry(0, "path", ""),
    "path-absolute": _entry(0, "path", "/etc/passwd"), "path-drive": _entry(0, "path", "C:evil"),
    "path-backslash": _entry(0, "path", "portable\\inference.onnx"), "path-nul": _entry(0, "path", "a\x00b"),
    "path-dot": _entry(0, "path", "./portable/inference.onnx"), "path-trailing-slash": _entry(0, "path", "portable/"),
    "path-double-slash": _entry(0, "path", "portable//inference.onnx"), "path-long": _entry(0, "path", "a" * 4097),
    "path-manifest": _entry(0, "path", "manifest.json"), "path-signature": _entry(0, "path", "manifest.sig"),
    "path-duplicate": lambda data: data["files"].append(dict(data["files"][0])),
    "path-case-duplicate": lambda data: data["files"].append(dict(data["files"][0], path="PORTABLE/inference.onnx")),
    "path-file-and-folder": _add_path("portable/inference.onnx/x"),
    "path-non-ascii-missing": _add_path("tokenizer/vocab-\u00e9\u6f22\U0001f600.json"),
    "path-escaped-slash-ok": lambda data: None,  # then written with "\/" (below): the same path to both
    "unlisted-maybe": _set("unlisted_files", "maybe"), "unlisted-number": _set("unlisted_files", 1),
    "unlisted-allow": _set("unlisted_files", "allow"),
    "writable-string": _set("writable_paths", ".cache/"), "writable-no-slash": _set("writable_paths", [".cache"]),
    "writable-up": _set("writable_paths", ["../"]), "writable-absolute": _set("writable_paths", ["/tmp/"]),
    "writable-number": _set("writable_paths", [3]), "writable-empty": _set("writable_paths", []),
    "not-an-object": lambda data: (data.clear(), data.__setitem__("_", None)),
}


@pytest.mark.parametrize("name", EDITS)
def test_c_and_python_agree_on_manifest_edits(name: str, c_cli: Path, tmp_path: Path) -> None:
    root = make_bundle(tmp_path / "bundle")
    rewrite_manifest(root, EDITS[name])
    text = (root / "manifest.json").read_text()
    if name == "not-an-object":
        text = "[]"
    if name == "path-escaped-slash-ok":
        text = text.replace('"portable/inference.onnx"', '"portable\\/inference.onnx"')
    (root / "manifest.json").write_text(text)
    c_status, c_errors = c_verify(c_cli, root, None)
    python_error = python_verify(root, None)
    assert (c_status == 0) == (python_error is None), (c_errors, python_error)
    assert c_status in (0, 1), c_errors
