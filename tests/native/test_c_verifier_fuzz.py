"""The C verifier's parsers (manifest.json, manifest.sig, PEM keys) under hostile input, with AddressSanitizer and
UndefinedBehaviorSanitizer: a generated corpus (mutated, truncated and hand-made hostile manifests) through a gcc
build of the parse driver, always; and libFuzzer for a bounded time when clang with libFuzzer is installed."""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import re
import shutil
import subprocess
import tarfile
import zlib
from pathlib import Path

import pytest
from c_verifier_build import C_SOURCE, cmake_build, make_bundle, require_toolchain, run

from edge_sdk.bundle.archive import check_archive, pack_bundle
from edge_sdk.errors import EdgeSdkError

CORPUS = C_SOURCE / "fuzz" / "corpus"
SOURCES = ["src/json.c", "src/manifest.c", "src/signature.c", "src/verify.c", "src/verify_dir.c",
           "src/verify_archive.c"]
# Where the C verifier is stricter than Python's tarfile and gzip, which stop reading once the tar's end is found
# and tolerate what follows: the gzip trailer (CRC, length), the gzip header's reserved bits, damage after the last
# member. Never the other way round: the C verifier must not accept an archive Python refuses.
_STREAM_LEVEL = re.compile(r"gzip stream|Unrecognized archive format|is damaged|cut short")
_SANITIZER_MARKS = ("AddressSanitizer", "runtime error:", "LeakSanitizer", "UndefinedBehaviorSanitizer")


def _seeds(tmp_path: Path) -> list[bytes]:
    seeds = [path.read_bytes() for path in sorted(CORPUS.iterdir())]
    root = make_bundle(tmp_path / "seed-bundle")
    seeds.append((root / "manifest.json").read_bytes())
    return seeds


def _hostile() -> list[bytes]:
    """Inputs aimed at the parser's edges: nesting, numbers, escapes, sizes, types, paths."""
    # A complete manifest (every field the parser checks before the file list) around each file list below.
    base = json.loads((CORPUS / "policy.manifest.json").read_text())
    files = json.dumps(base | {"files": "@@FILES@@"}).replace('"@@FILES@@"', "[%s]")
    good = '{"path": "a", "sha256": "' + "0" * 64 + '", "size": 1}'
    cases = [
        b"", b"{", b"}", b"[", b"\x00", b"null", b'"x"', b"{}", b"[]", b"\xef\xbb\xbf{}", b"{\"a\":1,}", b"[1,]",
        b"{\"a\" 1}", b"{\"a\":}", b"{1:2}", b"[tru]", b"[nul]", b"[-]", b"[01]", b"[1.]", b"[1e]", b"[.5]",
        b"[" * 100_000, b"[" * 255 + b"]" * 255, b"{\"a\":" * 300 + b"1" + b"}" * 300,
        b'{"schema_version": 1e999}', b'{"schema_version": NaN}', b'{"schema_version": -1}',
        b'{"schema_version": 99999999999999999999999999999}', b'{"schema_version": 1, "schema_version": 2}',
        b'{"schema_version": true, "files": []}', b'{"schema_version": 1}', b'{"schema_version": 1, "files": {}}',
        (files % good).encode(), (files % ",".join([good] * 2)).encode(),
        (files % '{"path": "a/b", "sha256": "%s", "size": 1}, %s' % ("0" * 64, good)).encode(),
        (files % '{"path": "A", "sha256": "%s", "size": 1}, %s' % ("0" * 64, good)).encode(),
        (files % good.replace('"a"', '"\\u0000"')).encode(), (files % good.replace('"a"', '"\\ud800"')).encode(),
        (files % good.replace('"a"', '"\\udc00x"')).encode(),
        (files % good.replace('"a"', '"\\ud83d\\ude00"')).encode(),
        (files % good.replace('"a"', '"\\/etc"')).encode(), (files % good.replace('"a"', '"a\\\\b"')).encode(),
        (files % good.replace('"a"', '"C:x"')).encode(), (files % good.replace('"a"', '"a//b"')).encode(),
        (files % good.replace('"a"', '"' + "x" * 5000 + '"')).encode(),
        (files % good.replace('"a"', '"' + "\u00e9" * 4097 + '"')).encode("utf-8"),
        (files % good.replace('"size": 1', '"size": 18446744073709551616')).encode(),
        (files % good.replace('"size": 1', '"size": -0')).encode(),
        (files % good.replace('"size": 1', '"size": 1.0')).encode(),
        (files % good.replace("0" * 64, "0" * 63 + "G")).encode(),
        (files % ",".join([good.replace('"a"', f'"f{n}"') for n in range(3000)])).encode(),
        (files % "").replace('"writable_paths": [', '"writable_paths": ["../", ".cache", "/x/", "a//", 5, ').encode(),
        (files % "").replace('"refuse"', '"maybe"').encode(),
        (files % "").replace('"writable_paths": [', '"writable_paths": [' + '"w/", ' * 100).encode(),
        b'{"format": 1, "algorithm": "ed25519", "signatures": []}',
        b'{"format": 2, "algorithm": "ed25519", "signatures": [{}]}',
        b'{"format": 1, "algorithm": "ed25519", "signatures": [{"key_id": "0123456789abcdef", "signature": "===="}]}',
        b'{"format": 1, "algorithm": "ed25519", "signatures": [{"key_id": "0123456789abcdef", "signature": "'
        + b"A" * 86 + b'=="}]}',
        json.dumps({"format": 1, "algorithm": "ed25519", "signatures": [{"key_id": "0" * 16, "signature": "QQ=="}]
                    * 100}).encode(),
        b"-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----\n", b"-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA",
        b"-----BEGIN PUBLIC KEY-----\n" + b"A" * 4000 + b"\n-----END PUBLIC KEY-----\n",
        b"\xff\xfe{\x00}\x00", b"{\"a\":\"\xc0\xaf\"}", b"{\"a\":\"\xed\xa0\x80\"}", b"{\"a\":\"\xf4\x90\x80\x80\"}",
        b"{\"a\":\"\x01\"}", b"{\"a\":\"\\x\"}", b"{\"a\":\"\\u12\"}", b"{\"a\":\"\\",
    ]
    return cases


def _mutations(seeds: list[bytes], count: int, rng: random.Random) -> list[bytes]:
    out = []
    for _ in range(count):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 8)):
            if not data:
                break
            choice = rng.random()
            at = rng.randrange(len(data))
            if choice < 0.3:
                data[at] = rng.randrange(256)
            elif choice < 0.45:
                del data[at: at + rng.randint(1, 64)]
            elif choice < 0.6:
                data[at:at] = rng.choice([b"{", b"[", b"]", b"}", b",", b":", b'"', b"\\", b"\\u", b"\\ud800", b"-",
                                          b"1e", b"\x00", b"\xff", b"null", b"9" * 30, b'"path"', b'"files"'])
            elif choice < 0.75:
                del data[at:]  # truncated
            else:
                piece = data[at: at + rng.randint(1, 200)]
                data[at:at] = piece  # duplicated span
        out.append(bytes(data))
    for seed in seeds:
        out.extend(seed[:cut] for cut in range(0, len(seed), max(1, len(seed) // 97)))
    return out


@pytest.fixture(scope="module")
def sanitized_driver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_toolchain()
    build = tmp_path_factory.mktemp("c-verifier-asan")
    compiler = shutil.which("gcc") or shutil.which("cc")
    cmake_build(C_SOURCE, build, ["edge_bundle_verify_parse_driver", "edge_bundle_verify"],
                "-DEDGE_BUNDLE_VERIFY_SANITIZE=ON", f"-DCMAKE_C_COMPILER={compiler}")
    return build / "edge_bundle_verify_parse_driver"


def test_generated_corpus_runs_clean_under_sanitizers(sanitized_driver: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    inputs = _hostile() + _mutations(_seeds(tmp_path), 1500, random.Random(20261202))
    paths = []
    for number, data in enumerate(inputs):
        path = corpus / f"{number:05d}"
        path.write_bytes(data)
        paths.append(str(path))
    for start in range(0, len(paths), 500):
        chunk = paths[start: start + 500]
        result = subprocess.run([str(sanitized_driver), *chunk], capture_output=True, text=True, timeout=120,
                                env={"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0",
                                     "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1"})
        report = result.stdout + result.stderr
        assert result.returncode == 0 and not any(mark in report for mark in _SANITIZER_MARKS), report[-4000:]
        assert f"parsed {len(chunk)} inputs" in result.stdout


def _damage_after_the_files(tar: bytes, archive: Path) -> bool:
    """Whether ``archive``'s tar stream equals ``tar`` up to the end of the last member's data: damage only in the
    end-of-archive blocks, the gzip header's reserved bits or the gzip trailer, which Python's tarfile and gzip
    may not read and the C verifier refuses (it is stricter there, a documented difference)."""
    with tarfile.open(fileobj=io.BytesIO(tar)) as original:
        end = max(member.offset_data + member.size for member in original.getmembers())
    stream, changed, data = zlib.decompressobj(wbits=31), b"", archive.read_bytes()
    try:
        for start in range(0, len(data), 512):
            changed += stream.decompress(data[start: start + 512])
    except zlib.error:
        pass  # what came out before the damage is compared
    return changed[:end] == tar[:end]


def test_mutated_archives_are_refused_cleanly_and_like_python(sanitized_driver: Path, tmp_path: Path) -> None:
    """Byte-level damage to a packed bundle, in the tar stream and in the gzip stream: the ASan/UBSan build of
    the CLI never crashes, never accepts what the Python check (check_archive) refuses, and refuses what Python
    accepts only for damage to the stream itself (see _STREAM_LEVEL)."""
    cli_path = sanitized_driver.parent / "edge_bundle_verify"
    if "EDGE_BUNDLE_WITH_ARCHIVE:BOOL=ON" not in (sanitized_driver.parent / "CMakeCache.txt").read_text():
        pytest.skip("built without libarchive (install libarchive-dev)")
    root = make_bundle(tmp_path / "bundle")
    packed = pack_bundle(root, tmp_path / "bundle.tar.gz").read_bytes()
    tar = gzip.decompress(packed)
    rng = random.Random(7)
    variants = []
    for number in range(120):
        data = bytearray(tar if number % 3 else packed)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(data))
            if rng.random() < 0.8:
                data[at] = rng.randrange(256)
            else:
                del data[at:]
                break
        variants.append(gzip.compress(bytes(data), mtime=0) if number % 3 else bytes(data))
    disagreements = []
    for number, data in enumerate(variants):
        archive = tmp_path / f"variant-{number:03d}.tar.gz"
        archive.write_bytes(data)
        result = subprocess.run([str(cli_path), str(archive)], capture_output=True, text=True, timeout=60,
                                env={"ASAN_OPTIONS": "detect_leaks=1", "UBSAN_OPTIONS": "halt_on_error=1"})
        assert not any(mark in result.stderr for mark in _SANITIZER_MARKS), result.stderr[-4000:]
        assert result.returncode in (0, 1), (number, result.stderr)
        try:
            check_archive(archive, trust=False)
            python_ok = True
        except EdgeSdkError:
            python_ok = False
        stricter = python_ok and (_damage_after_the_files(tar, archive) or _STREAM_LEVEL.search(result.stderr))
        if python_ok != (result.returncode == 0) and not stricter:
            disagreements.append((number, python_ok, result.stderr.strip()))
    assert disagreements == [], "\n".join(map(str, disagreements))


def _libfuzzer_compiler() -> str | None:
    for name in ("clang", "clang-14", "clang-15", "clang-16"):
        path = shutil.which(name)
        if path:
            probe = subprocess.run([path, "-print-file-name=libclang_rt.fuzzer-x86_64.a"], capture_output=True,
                                   text=True)
            if probe.returncode == 0 and Path(probe.stdout.strip()).is_file():
                return path
    return None


def test_libfuzzer_finds_nothing_in_a_bounded_run(tmp_path: Path) -> None:
    require_toolchain()
    clang = _libfuzzer_compiler()
    if clang is None:
        pytest.skip("clang with libFuzzer is not installed (clang-14 and libclang-rt-14-dev; make setup installs "
                    "them); the generated-corpus test above still ran")
    sodium = run(["pkg-config", "--cflags", "--libs", "libsodium"]).split()
    binary = tmp_path / "fuzz_manifest"
    run([clang, "-std=c99", "-g", "-O1", "-fsanitize=fuzzer,address,undefined", "-fno-sanitize-recover=all",
         "-Iinclude", "-Isrc", *SOURCES, "fuzz/fuzz_manifest.c", *sodium, "-o", str(binary)], cwd=C_SOURCE)
    work = tmp_path / "corpus"
    work.mkdir()
    for number, seed in enumerate(_seeds(tmp_path) + _hostile()[:40]):
        (work / f"seed-{number:03d}").write_bytes(seed)
    # "No allocation surprises" is -malloc_limit_mb: any single allocation above 64 MB fails the run (the parser's
    # input is capped at 16 MiB). The process's RSS is mostly ASan's quarantine of freed blocks (256 MB by default,
    # kept resident): a small quarantine keeps it far below -rss_limit_mb on any machine (with the default one a
    # CI run once reached 1.4 GB and was reported out of memory with 24 MB live).
    result = subprocess.run([str(binary), "-max_total_time=20", "-max_len=65536", "-rss_limit_mb=2048",
                             "-malloc_limit_mb=64", "-timeout=10", f"-artifact_prefix={tmp_path}/", str(work)],
                            capture_output=True, text=True, timeout=120,
                            env=os.environ | {"ASAN_OPTIONS": "quarantine_size_mb=16"})
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Done" in result.stderr
