"""The C verifier's parsers (manifest.json, manifest.sig, PEM keys) under hostile input, with AddressSanitizer and
UndefinedBehaviorSanitizer: a generated corpus (mutated, truncated and hand-made hostile manifests) through a gcc
build of the parse driver, always; and libFuzzer for a bounded time when clang with libFuzzer is installed."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from c_verifier_build import C_SOURCE, cmake_build, make_bundle, require_toolchain, run

CORPUS = C_SOURCE / "fuzz" / "corpus"
SOURCES = ["src/json.c", "src/manifest.c", "src/signature.c", "src/verify.c", "src/verify_dir.c",
           "src/verify_archive.c"]
_SANITIZER_MARKS = ("AddressSanitizer", "runtime error:", "LeakSanitizer", "UndefinedBehaviorSanitizer")


def _seeds(tmp_path: Path) -> list[bytes]:
    seeds = [path.read_bytes() for path in sorted(CORPUS.iterdir())]
    root = make_bundle(tmp_path / "seed-bundle")
    seeds.append((root / "manifest.json").read_bytes())
    return seeds


def _hostile() -> list[bytes]:
    """Inputs aimed at the parser's edges: nesting, numbers, escapes, sizes, types, paths."""
    files = '{"schema_version": 1, "files": [%s]}'
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
        (b'{"schema_version": 1, "files": [], "writable_paths": ["../", ".cache", "/x/", "a//", 5]}'),
        (b'{"schema_version": 1, "files": [], "unlisted_files": "maybe"}'),
        ('{"schema_version": 1, "files": [], "writable_paths": [' + ",".join(['"w/"'] * 100) + "]}").encode(),
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
    cmake_build(C_SOURCE, build, ["edge_bundle_verify_parse_driver"], "-DEDGE_BUNDLE_VERIFY_SANITIZE=ON",
                f"-DCMAKE_C_COMPILER={compiler}")
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
    result = subprocess.run([str(binary), "-max_total_time=20", "-max_len=65536", "-rss_limit_mb=1024",
                             "-timeout=10", f"-artifact_prefix={tmp_path}/", str(work)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Done" in result.stderr
