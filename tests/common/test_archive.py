"""Bundle archives: `pack` is deterministic; `unpack` installs only what the manifest lists and refuses every
unsafe member by name, leaving nothing behind (docs/bundle-integrity.md)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
import time
from pathlib import Path

import pytest
from bundle_factory import FILES, make_bundle
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_sdk.bundle import open_bundle, pack_bundle, unpack_bundle, verification, verify_bundle
from edge_sdk.bundle.archive import MAX_MANIFEST_BYTES
from edge_sdk.cli.main import cli
from edge_sdk.errors import ArchiveError, BundleError, BundleTrustError, EdgeSdkError


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return make_bundle(tmp_path / "b")


@pytest.fixture
def archive(bundle: Path, tmp_path: Path) -> Path:
    return pack_bundle(bundle, tmp_path / "b.tar.gz")


def _listing(folder: Path) -> list[str]:
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*"))


# --- pack ---------------------------------------------------------------------------------------------------

def test_pack_is_deterministic(bundle: Path, tmp_path: Path) -> None:
    first = pack_bundle(bundle, tmp_path / "one.tar.gz").read_bytes()
    for path in bundle.rglob("*"):
        os.utime(path, (time.time() + 100, time.time() + 100))  # new times on disk change nothing
    second = pack_bundle(bundle, tmp_path / "two.tar.gz").read_bytes()
    assert first == second
    assert first[4:8] == b"\x00\x00\x00\x00"  # gzip header: no time
    assert not first[3] & 0x08  # gzip header: no file name
    with tarfile.open(tmp_path / "one.tar.gz") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["b/manifest.json", *(f"b/{name}" for name in sorted(FILES))]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode, m.type) for m in members} == {
        (0, 0, 0, "", "", 0o644, tarfile.REGTYPE)}


def test_pack_honours_source_date_epoch(bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    with tarfile.open(pack_bundle(bundle, tmp_path / "b.tar.gz")) as tar:
        assert {member.mtime for member in tar.getmembers()} == {1700000000}
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(EdgeSdkError, match="SOURCE_DATE_EPOCH='yesterday'"):
        pack_bundle(bundle, tmp_path / "c.tar.gz")
    assert not (tmp_path / "c.tar.gz").exists()


def test_pack_includes_the_signature_second(bundle: Path, tmp_path: Path) -> None:
    (bundle / "manifest.sig").write_bytes(b"signature bytes")
    with tarfile.open(pack_bundle(bundle, tmp_path / "b.tar.gz")) as tar:
        assert tar.getnames()[:2] == ["b/manifest.json", "b/manifest.sig"]


def test_pack_refuses_a_file_changed_since_the_build_and_leaves_no_archive(bundle: Path, tmp_path: Path) -> None:
    (bundle / "tok.json").write_bytes(b"[]")
    with pytest.raises(BundleError, match="tok.json: content changed"):
        pack_bundle(bundle, tmp_path / "b.tar.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_pack_refuses_a_symlink_out_of_the_bundle(bundle: Path, tmp_path: Path) -> None:
    (tmp_path / "elsewhere.json").write_bytes(b"{}")
    (bundle / "tok.json").unlink()
    (bundle / "tok.json").symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(BundleError, match="'tok.json' resolves to .*outside the bundle"):
        pack_bundle(bundle, tmp_path / "b.tar.gz")


# --- round trip ---------------------------------------------------------------------------------------------

def test_round_trip_and_stamp(archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = unpack_bundle(archive, tmp_path / "installed")
    assert result.path == (tmp_path / "installed").resolve()
    assert (result.files, result.bytes, result.signed) == (len(FILES), sum(map(len, FILES.values())), False)
    assert _listing(tmp_path / "installed") == sorted(
        ["manifest.json", "inference", "portable", *FILES])
    assert len(verify_bundle(tmp_path / "installed").files) == len(FILES)
    # unpack hashed every file and stamped the bundle: a later open hashes none (the clock runs ahead, so the
    # just-written files count as old enough: see the racy rule in verification.py).
    (tmp_path / "state").mkdir()
    monkeypatch.setenv("EDGE_SDK_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setattr(verification, "_now_ns", lambda: time.time_ns() + 10 * verification.TIMESTAMP_SLACK_NS)
    unpack_bundle(archive, tmp_path / "again")
    hashed = []
    real = verification.sha256_file
    monkeypatch.setattr(verification, "sha256_file", lambda path: hashed.append(path) or real(path))
    open_bundle(tmp_path / "again")
    assert hashed == []


def test_signature_is_checked_before_anything_is_written(bundle: Path, tmp_path: Path) -> None:
    (bundle / "manifest.sig").write_bytes(b"signature bytes")
    archive = pack_bundle(bundle, tmp_path / "b.tar.gz")
    out = tmp_path / "out"
    seen = []

    def refuse(manifest_bytes: bytes, signature: bytes | None, source: str) -> None:
        seen.append((manifest_bytes, signature, source))
        staged = [path for path in tmp_path.glob(".out.*.staging") for path in path.rglob("*")]
        assert staged == []  # nothing extracted yet
        raise BundleTrustError("not signed by a trusted key")

    before = _listing(tmp_path)
    with pytest.raises(BundleTrustError, match="not signed"):
        unpack_bundle(archive, out, check_signature=refuse)
    assert seen == [((bundle / "manifest.json").read_bytes(), b"signature bytes", f"{archive}:b/manifest.json")]
    assert _listing(tmp_path) == before
    result = unpack_bundle(archive, out, check_signature=lambda *args: None)
    assert result.signed and (out / "manifest.sig").read_bytes() == b"signature bytes"


def test_existing_destination(archive: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    unpack_bundle(archive, out)
    (out / "adapters").mkdir()
    (out / "adapters" / "alice.safetensors").write_bytes(b"user data")
    with pytest.raises(ArchiveError, match="already exists; choose another folder or pass --overwrite"):
        unpack_bundle(archive, out)
    assert (out / "adapters" / "alice.safetensors").exists()
    unpack_bundle(archive, out, overwrite=True)
    assert not (out / "adapters").exists()
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "chapter.tex").write_text("precious")
    with pytest.raises(ArchiveError, match="not a bundle; refusing to replace it"):
        unpack_bundle(archive, tmp_path / "thesis", overwrite=True)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ArchiveError, match="exists and is not a folder"):
        unpack_bundle(archive, tmp_path / "afile", overwrite=True)
    with pytest.raises(ArchiveError, match="does not exist or is not a file"):
        unpack_bundle(tmp_path / "nope.tar.gz", tmp_path / "x")


# --- malicious members --------------------------------------------------------------------------------------

def _manifest_bytes(bundle: Path) -> bytes:
    return (bundle / "manifest.json").read_bytes()


def _info(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = len(data) if kind in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
    info.type = kind
    info.linkname = link
    return info


def _craft(path: Path, members: list[tuple[tarfile.TarInfo, bytes]], compress: bool = True) -> Path:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    path.write_bytes(gzip.compress(buffer.getvalue()) if compress else buffer.getvalue())
    return path


def _good_members(bundle: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    members = [(_info("b/manifest.json", _manifest_bytes(bundle)), _manifest_bytes(bundle))]
    return members + [(_info(f"b/{name}", data), data) for name, data in sorted(FILES.items())]


def _bad_member_cases(bundle: Path) -> dict[str, tuple[list[tuple[tarfile.TarInfo, bytes]], str, str]]:
    """case -> (members, the member named in the message, what the message says)."""
    good = _good_members(bundle)
    head, files = good[:1], good[1:]
    tok = FILES["tok.json"]
    return {
        "absolute": (head + files + [(_info("/etc/evil", b"x"), b"x")], "/etc/evil", "is absolute"),
        "dotdot": (head + files + [(_info("b/../evil", b"x"), b"x")], "b/../evil", "'..'"),
        "dotdot-deep": (head + [(_info("b/inference/../../../evil", b"x"), b"x")] + files,
                        "b/inference/../../../evil", "'..'"),
        "backslash": (head + [(_info("b/..\\evil", b"x"), b"x")] + files, "b/..\\evil", "backslash"),
        "symlink": (head + [(_info("b/tok.json", kind=tarfile.SYMTYPE, link="/etc/passwd"), b"")] + files[:-1],
                    "b/tok.json", "symbolic link"),
        "hardlink": (head + files[:-1] + [(_info("b/tok.json", kind=tarfile.LNKTYPE, link="b/inference/model.onnx"),
                                           b"")], "b/tok.json", "hard link"),
        "device": (head + [(_info("b/tok.json", kind=tarfile.CHRTYPE), b"")] + files, "b/tok.json", "device"),
        "fifo": (head + [(_info("b/tok.json", kind=tarfile.FIFOTYPE), b"")] + files, "b/tok.json", "FIFO"),
        "folder": (head + [(_info("b/inference", kind=tarfile.DIRTYPE), b"")] + files, "b/inference", "a folder"),
        "duplicate": (good + [(_info("b/tok.json", tok), tok)], "b/tok.json", "appears twice"),
        "duplicate-manifest": (good + [head[0]], "b/manifest.json", "appears twice"),
        "unlisted": (head + [(_info("b/extra.bin", b"x"), b"x")] + files, "b/extra.bin", "not listed"),
        "oversized": (head + [(_info("b/tok.json", b"{}  "), b"{}  ")] + files, "b/tok.json",
                      "is 4 bytes, the manifest says 2"),
        "altered": (head + [(_info("b/tok.json", b"[]"), b"[]")] + files, "b/tok.json", "sha256"),
        "other-folder": (head + [(_info("c/tok.json", tok), tok)] + files, "c/tok.json", "outside the archive's"),
        "manifest-not-first": (files + head, "b/inference/model.onnx", "first member must be"),
        "no-top-folder": ([(_info("manifest.json", head[0][1]), head[0][1])], "manifest.json", "first member"),
        "manifest-symlink": ([(_info("b/manifest.json", kind=tarfile.SYMTYPE, link="/etc/x"), b"")], "b/manifest.json",
                             "symbolic link"),
        "missing": (good[:-1], "b/tok.json", "lacks 1 file(s)"),
        "signature-late": (good + [(_info("b/manifest.sig", b"s"), b"s")], "b/manifest.sig", "appears twice"),
    }


CASES = ["absolute", "dotdot", "dotdot-deep", "backslash", "symlink", "hardlink", "device", "fifo", "folder",
         "duplicate", "duplicate-manifest", "unlisted", "oversized", "altered", "other-folder", "manifest-not-first",
         "no-top-folder", "manifest-symlink", "missing", "signature-late"]


def test_every_case_is_tested(bundle: Path) -> None:
    assert sorted(_bad_member_cases(bundle)) == sorted(CASES)


@pytest.mark.parametrize("case", CASES)
def test_unsafe_member_is_refused_by_name_leaving_nothing(bundle: Path, tmp_path: Path, case: str) -> None:
    members, named, reason = _bad_member_cases(bundle)[case]
    archive = _craft(tmp_path / "evil.tar.gz", members)
    before = _listing(tmp_path)
    with pytest.raises(ArchiveError) as caught:
        unpack_bundle(archive, tmp_path / "out")
    message = str(caught.value)
    assert repr(named) in message and reason in message, message
    assert _listing(tmp_path) == before  # no --out, no staging folder, no parent folders
    assert not (tmp_path.parent / "evil").exists()


@pytest.mark.parametrize("kind, link, reason", [
    (tarfile.CHRTYPE, "", "special file"),
    (tarfile.SYMTYPE, "/etc/passwd", "absolute path"),
    (tarfile.SYMTYPE, "../../outside", "outside the destination"),
])
def test_tarfile_data_filter_is_a_second_layer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: bytes,
                                               link: str, reason: str) -> None:
    """With the type check switched off, tarfile's own ``data`` filter still refuses the member."""
    from edge_sdk.bundle import archive as archive_module

    source = make_bundle(tmp_path / "b", {"empty.bin": b"", "tok.json": b"{}"})  # a listed 0-byte file
    manifest = _manifest_bytes(source)
    members = [(_info("b/manifest.json", manifest), manifest), (_info("b/empty.bin", kind=kind, link=link), b""),
               (_info("b/tok.json", b"{}"), b"{}")]
    monkeypatch.setattr(archive_module, "_kind", lambda member: None)
    with pytest.raises(ArchiveError, match=f"'b/empty.bin': refused by tarfile's data filter.*{reason}"):
        unpack_bundle(_craft(tmp_path / "evil.tar.gz", members), tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "evil.tar.gz"]


def test_manifest_listing_a_path_outside_is_refused_before_extraction(bundle: Path, tmp_path: Path) -> None:
    data = json.loads(_manifest_bytes(bundle))
    data["files"].append({"path": "../evil", "sha256": hashlib.sha256(b"x").hexdigest(), "size": 1})
    manifest = json.dumps(data).encode()
    archive = _craft(tmp_path / "evil.tar.gz", [(_info("b/manifest.json", manifest), manifest),
                                                (_info("b/../evil", b"x"), b"x")])
    with pytest.raises(BundleError, match=r"evil.tar.gz:b/manifest.json, files\[3\]: path '../evil'"):
        unpack_bundle(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path.parent / "evil").exists()


def test_caps(archive: Path, tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match=r"member 'b/portable/base.weights': the archive has more than 2 members"):
        unpack_bundle(archive, tmp_path / "out", max_members=2)
    with pytest.raises(ArchiveError, match=r"member 'b/portable/base.weights': .* exceed the cap of 100 bytes"):
        unpack_bundle(archive, tmp_path / "out", max_bytes=100)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "b.tar.gz"]


def test_oversized_manifest_is_refused(tmp_path: Path) -> None:
    big = b" " * (MAX_MANIFEST_BYTES + 1)
    archive = _craft(tmp_path / "big.tar.gz", [(_info("b/manifest.json", big), big)])
    with pytest.raises(ArchiveError, match=f"'b/manifest.json': is {len(big)} bytes, more than"):
        unpack_bundle(archive, tmp_path / "out")


def test_a_gzip_bomb_stops_at_the_cap(tmp_path: Path) -> None:
    # A member header claiming 3 GB of zeros compresses to a few MB; the cap stops the read early.
    info = _info("b/manifest.json")
    info.size = 3 << 30
    header = info.tobuf(tarfile.PAX_FORMAT)
    compressor = gzip.compress(header + b"\x00" * (8 << 20))
    (tmp_path / "bomb.tar.gz").write_bytes(compressor)
    with pytest.raises(ArchiveError, match="b/manifest.json"):
        unpack_bundle(tmp_path / "bomb.tar.gz", tmp_path / "out", max_bytes=1 << 20, max_members=4)


@pytest.mark.parametrize("content, reason", [
    (b"", "not a bundle archive"),
    (b"just some text, not an archive at all" * 20, "not a bundle archive"),
    (b"\x1f\x8b" + b"\x00" * 40, "damaged or truncated|cannot be read"),
])
def test_not_an_archive(tmp_path: Path, content: bytes, reason: str) -> None:
    (tmp_path / "x.tar.gz").write_bytes(content)
    with pytest.raises(ArchiveError, match=reason):
        unpack_bundle(tmp_path / "x.tar.gz", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.tar.gz"]


def test_truncated_archive_names_the_member(archive: Path, tmp_path: Path) -> None:
    data = archive.read_bytes()
    raw = gzip.decompress(data)
    plain = tmp_path / "plain.tar"
    with tarfile.open(archive) as tar:
        weights = tar.getmember("b/portable/base.weights")
    plain.write_bytes(raw[:weights.offset_data + 100])  # cut inside base.weights
    with pytest.raises(ArchiveError, match="'b/portable/base.weights'"):
        unpack_bundle(plain, tmp_path / "out")
    (tmp_path / "cut.tar.gz").write_bytes(data[:len(data) // 2])
    with pytest.raises(ArchiveError, match="damaged or truncated|cut short|lacks"):
        unpack_bundle(tmp_path / "cut.tar.gz", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "b.tar.gz", "cut.tar.gz", "plain.tar"]


def test_uncompressed_and_xz_archives_unpack(archive: Path, tmp_path: Path) -> None:
    import lzma

    raw = gzip.decompress(archive.read_bytes())
    (tmp_path / "b.tar").write_bytes(raw)
    (tmp_path / "b.tar.xz").write_bytes(lzma.compress(raw))
    assert unpack_bundle(tmp_path / "b.tar", tmp_path / "one").files == len(FILES)
    assert unpack_bundle(tmp_path / "b.tar.xz", tmp_path / "two").files == len(FILES)


# --- CLI ----------------------------------------------------------------------------------------------------

def test_cli_unpack_exit_codes(archive: Path, bundle: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["unpack", str(archive), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(f"unpacked {(tmp_path / 'out').resolve()} ({len(FILES)} files")
    again = runner.invoke(cli, ["unpack", str(archive), "--out", str(tmp_path / "out"), "--json"])
    assert again.exit_code == 1 and "--overwrite" in again.stderr and again.stderr.count("\n") == 1
    assert again.stdout == "" and "Traceback" not in again.stderr
    replaced = runner.invoke(cli, ["unpack", str(archive), "--out", str(tmp_path / "out"), "--overwrite", "--json"])
    assert replaced.exit_code == 0
    assert json.loads(replaced.stdout) == {"bundle": str((tmp_path / "out").resolve()), "files": len(FILES),
                                           "bytes": sum(map(len, FILES.values())), "signed": False}
    evil = _craft(tmp_path / "evil.tar.gz", _bad_member_cases(bundle)["symlink"][0])
    refused = runner.invoke(cli, ["unpack", str(evil), "--out", str(tmp_path / "evil")])
    assert refused.exit_code == 1 and "'b/tok.json'" in refused.stderr and refused.stderr.count("\n") == 1
    assert not (tmp_path / "evil").exists()


# --- fuzzing ------------------------------------------------------------------------------------------------

_FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])


def _unpack_or_refuse(archive: Path, out: Path) -> None:
    """Unpacking either succeeds with a bundle that verifies, or raises an EdgeSdkError that names the archive;
    a refusal leaves nothing beside ``out``."""
    before = _listing(out.parent)
    try:
        unpack_bundle(archive, out, max_members=50, max_bytes=1 << 20)
    except EdgeSdkError as error:
        assert str(archive) in str(error) or "manifest.json" in str(error), str(error)
        assert _listing(out.parent) == before
        return
    verify_bundle(out)
    import shutil

    shutil.rmtree(out)


@_FUZZ
@given(data=st.binary(max_size=2048))
def test_fuzz_random_bytes(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    folder = tmp_path_factory.mktemp("fuzz")
    for content in (data, gzip.compress(data)):
        (folder / "x.tar.gz").write_bytes(content)
        _unpack_or_refuse(folder / "x.tar.gz", folder / "out")


@_FUZZ
@given(cut=st.integers(min_value=0), flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(1, 255)),
                                                    max_size=4), compressed=st.booleans())
def test_fuzz_damaged_archives(tmp_path_factory: pytest.TempPathFactory, cut: int, flips: list[tuple[int, int]],
                               compressed: bool) -> None:
    folder = tmp_path_factory.mktemp("fuzz")
    source = make_bundle(folder / "b")
    packed = pack_bundle(source, folder / "b.tar.gz").read_bytes()
    data = bytearray(packed if compressed else gzip.decompress(packed))
    for position, xor in flips:
        data[position % len(data)] ^= xor
    if cut % 3 == 0:  # a third of the examples are also cut short
        del data[len(data) - cut % (len(data) + 1):]
    (folder / "x.tar").write_bytes(bytes(data))
    _unpack_or_refuse(folder / "x.tar", folder / "out")


_NAMES = st.sampled_from(["b/tok.json", "b/inference/model.onnx", "b/portable/base.weights", "b/extra", "b/../x",
                          "/abs", "b//tok.json", "b/./tok.json", "c/tok.json", "b/manifest.json", "b/manifest.sig",
                          "b", "b/inference", "B/tok.json", "b/tok.json/x"])
_KINDS = st.sampled_from([tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE,
                          tarfile.FIFOTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.CONTTYPE, b"x"])


@_FUZZ
@given(members=st.lists(st.tuples(_NAMES, _KINDS, st.booleans(), st.sampled_from(["", "../../etc", "b/tok.json"])),
                        max_size=8), manifest_first=st.booleans())
def test_fuzz_member_lists(tmp_path_factory: pytest.TempPathFactory, members: list, manifest_first: bool) -> None:
    folder = tmp_path_factory.mktemp("fuzz")
    source = make_bundle(folder / "b")
    crafted = _good_members(source)[:1] if manifest_first else []
    for name, kind, real_content, link in members:
        relative = name.partition("/")[2]
        data = FILES.get(relative, b"junk") if real_content else b"junk"
        info = _info(name, data, kind, link)
        crafted.append((info, data))
    _craft(folder / "x.tar.gz", crafted)
    _unpack_or_refuse(folder / "x.tar.gz", folder / "out")
