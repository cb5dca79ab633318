"""Helpers of the native-hook tests: read a generated header back by compiling a C program that prints it as
JSON, a tiny model to build bundles from, and an edge-sdk wrapper that runs this checkout's code (the edge-sdk
on the PATH may be another checkout's)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STRICT_C = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"]
STRICT_CXX = ["-std=c++11", "-Wall", "-Wextra", "-Werror", "-pedantic"]

_PRINTER = r"""
#include <stdio.h>
#include "edge_bundle_@name@.h"

/* JSON string: quotes, backslashes and control bytes escaped, other bytes (UTF-8) as they are. */
static void str(const char *s) {
    if (s == NULL) { fputs("null", stdout); return; }
    putchar('"');
    for (; *s; ++s) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') { putchar('\\'); putchar(c); }
        else if (c < 0x20) { printf("\\u%04x", c); }
        else { putchar(c); }
    }
    putchar('"');
}

static void hex(const unsigned char *bytes) {
    int i;
    putchar('"');
    for (i = 0; i < 32; ++i) printf("%02x", bytes[i]);
    putchar('"');
}

static void tensors(const edge_bundle_tensor *t, int count) {
    int i;
    size_t d;
    putchar('[');
    for (i = 0; i < count; ++i) {
        printf(i ? ", {\"name\": " : "{\"name\": "); str(t[i].name);
        printf(", \"dtype\": "); str(t[i].dtype);
        printf(", \"shape\": [");
        for (d = 0; d < t[i].rank; ++d) {
            if (d) printf(", ");
            if (t[i].shape[d].size == EDGE_BUNDLE_DIM_SYMBOLIC) str(t[i].shape[d].name);
            else printf("%lld", (long long)t[i].shape[d].size);
        }
        printf("]}");
    }
    if (t[count].name != NULL) printf(", \"missing sentinel\"");
    putchar(']');
}

int main(void) {
    int i;
    printf("{\"schema_version\": %d", EDGE_BUNDLE_@NAME@_SCHEMA_VERSION);
    printf(", \"sdk_version\": "); str(EDGE_BUNDLE_@NAME@_SDK_VERSION);
    printf(", \"bundle_id\": "); str(EDGE_BUNDLE_@NAME@_ID);
    printf(", \"version\": %d", EDGE_BUNDLE_@NAME@_VERSION);
    printf(", \"task\": "); str(EDGE_BUNDLE_@NAME@_TASK);
    printf(", \"max_length\": %d", EDGE_BUNDLE_@NAME@_MAX_LENGTH);
    printf(", \"profile\": "); str(EDGE_BUNDLE_@NAME@_PROFILE);
    printf(", \"precision\": "); str(EDGE_BUNDLE_@NAME@_PRECISION);
    printf(", \"manifest_size\": %ld", (long)EDGE_BUNDLE_@NAME@_MANIFEST_SIZE);
    printf(", \"manifest_sha256\": "); str(EDGE_BUNDLE_@NAME@_MANIFEST_SHA256);
    printf(", \"manifest_sha256_bytes\": "); hex(edge_bundle_@name@_manifest_sha256);
    printf(", \"signed\": %d", EDGE_BUNDLE_@NAME@_SIGNED);
#ifdef EDGE_BUNDLE_@NAME@_UNSIGNED
    printf(", \"unsigned_define\": %d", EDGE_BUNDLE_@NAME@_UNSIGNED);
#endif
#ifdef EDGE_BUNDLE_@NAME@_SIGNING_KEY_ID
    printf(", \"signing_key_id\": "); str(EDGE_BUNDLE_@NAME@_SIGNING_KEY_ID);
#endif
    printf(", \"signing_key_ids\": [");
    for (i = 0; i < EDGE_BUNDLE_@NAME@_SIGNING_KEY_COUNT; ++i) {
        if (i) printf(", ");
        str(edge_bundle_@name@_signing_key_ids[i]);
    }
    printf("], \"key_ids_sentinel\": %d",
           edge_bundle_@name@_signing_key_ids[EDGE_BUNDLE_@NAME@_SIGNING_KEY_COUNT] == NULL);
    printf(", \"files\": [");
    for (i = 0; i < EDGE_BUNDLE_@NAME@_FILE_COUNT; ++i) {
        const edge_bundle_file *f = &edge_bundle_@name@_files[i];
        printf(i ? ", {\"path\": " : "{\"path\": "); str(f->path);
        printf(", \"size\": %llu, \"sha256\": ", (unsigned long long)f->size); str(f->sha256_hex);
        printf(", \"sha256_bytes\": "); hex(f->sha256);
        putchar('}');
    }
    printf("], \"files_sentinel\": %d", edge_bundle_@name@_files[EDGE_BUNDLE_@NAME@_FILE_COUNT].path == NULL);
    printf(", \"inputs\": "); tensors(edge_bundle_@name@_inputs, EDGE_BUNDLE_@NAME@_INPUT_COUNT);
    printf(", \"outputs\": "); tensors(edge_bundle_@name@_outputs, EDGE_BUNDLE_@NAME@_OUTPUT_COUNT);
    printf(", \"labels\": [");
    for (i = 0; i < EDGE_BUNDLE_@NAME@_LABEL_COUNT; ++i) {
        if (i) printf(", ");
        str(edge_bundle_@name@_labels[i]);
    }
    printf("], \"labels_sentinel\": %d}\n", edge_bundle_@name@_labels[EDGE_BUNDLE_@NAME@_LABEL_COUNT] == NULL);
    return 0;
}
"""


def _first(*names: str) -> str | None:
    return next((name for name in names if shutil.which(name)), None)


# Distributions install clang versioned (clang-14) without a plain `clang`.
_CLANGS = ("clang", *(f"clang-{version}" for version in range(22, 10, -1)))


def compilers() -> list[tuple[str, list[str]]]:
    """The C compilers here (gcc and clang when both are there; else cc), each with the strict flags."""
    found = [(name, STRICT_C) for name in (_first("gcc"), _first(*_CLANGS)) if name]
    if not found and shutil.which("cc"):
        found.append(("cc", STRICT_C))
    return found


def cxx_compilers() -> list[tuple[str, list[str]]]:
    """The C++ compilers here (g++, clang++), each with the strict flags."""
    clangs = ("clang++", *(f"clang++-{version}" for version in range(22, 10, -1)))
    return [(name, STRICT_CXX) for name in (_first("g++"), _first(*clangs)) if name]


def header_as_json(header: Path, name: str, workdir: Path, compiler: str = "gcc", flags: list[str] | None = None,
                   suffix: str = ".c") -> dict:
    """Compile a program that prints every value of ``header`` (generated with --name ``name``) as JSON, with
    strict warnings as errors, run it and parse what it prints."""
    workdir.mkdir(parents=True, exist_ok=True)
    source = workdir / f"print_{name}{suffix}"
    source.write_text(_PRINTER.replace("@name@", name).replace("@NAME@", name.upper()), encoding="utf-8")
    program = workdir / f"print_{name}_{compiler.replace('+', 'x')}"
    subprocess.run([compiler, *(flags if flags is not None else STRICT_C), "-I", str(header.parent), str(source),
                    "-o", str(program)], check=True, capture_output=True, text=True)
    output = subprocess.run([str(program)], check=True, capture_output=True).stdout
    return json.loads(output.decode("utf-8"))


def expected_from_manifest(bundle: Path) -> dict:
    """What a header of ``bundle`` must say, from its manifest.json (read with json, not the SDK's code)."""
    import hashlib

    raw = (bundle / "manifest.json").read_bytes()
    data = json.loads(raw)
    return {
        "schema_version": data["schema_version"], "sdk_version": data["sdk_version"], "bundle_id": data["bundle_id"],
        "version": data["version"], "task": data["task"], "max_length": data["max_length"],
        "profile": data["profile"].get("name", ""), "precision": data["profile"].get("precision", "float32"),
        "manifest_size": len(raw), "manifest_sha256": hashlib.sha256(raw).hexdigest(),
        "files": [{"path": f["path"], "size": f["size"], "sha256": f["sha256"]} for f in data["files"]],
        "inputs": data["inputs"], "outputs": data["outputs"], "labels": data["labels"],
    }


def check_header_matches(header_values: dict, bundle: Path) -> None:
    """Assert the printed header says what the manifest says (and its redundant forms agree)."""
    expected = expected_from_manifest(bundle)
    for key, value in expected.items():
        if key == "files":
            continue
        assert header_values[key] == value, key
    assert header_values["manifest_sha256_bytes"] == expected["manifest_sha256"]
    assert [{k: f[k] for k in ("path", "size", "sha256")} for f in header_values["files"]] == expected["files"]
    assert all(f["sha256_bytes"] == f["sha256"] for f in header_values["files"])
    assert header_values["files_sentinel"] == header_values["labels_sentinel"] == 1


def write_edge_sdk_wrapper(folder: Path, log: Path | None = None) -> Path:
    """An ``edge-sdk`` executable running this checkout's CLI with this interpreter; with ``log``, it appends its
    arguments there first (how tests see whether a build ran edge-sdk at all)."""
    folder.mkdir(parents=True, exist_ok=True)
    wrapper = folder / "edge-sdk"
    lines = ["#!" + sys.executable, "import sys", f"sys.path.insert(0, {str(REPO)!r})"]
    if log is not None:
        lines += [f"with open({str(log)!r}, 'a', encoding='utf-8') as handle:",
                  "    handle.write(' '.join(sys.argv[1:]) + '\\n')"]
    lines += ["from edge_sdk.cli.main import main", "main()"]
    wrapper.write_text("\n".join(lines) + "\n", encoding="utf-8")
    wrapper.chmod(0o755)
    return wrapper


def tiny_model(base: Path) -> Path:
    """A tiny BERT folder, made once per test session under ``base`` (a session temporary folder) and copied by
    callers that edit it: EDGE_SDK_FIXTURES' prebuilt one when set, else built (needs torch)."""
    model = base / "native-tiny-model"
    if not (model / "config.json").is_file():
        prebuilt = os.environ.get("EDGE_SDK_FIXTURES")
        if prebuilt and (Path(prebuilt) / "tiny-model" / "config.json").is_file():
            shutil.copytree(Path(prebuilt) / "tiny-model", model)
        else:
            sys.path.insert(0, str(REPO / "tests"))
            from tiny_models import make_tiny_bert

            make_tiny_bert(model)
    return model


def copy_model(base: Path, destination: Path) -> Path:
    """A private copy of the session's tiny model (tests touch and edit its files)."""
    return Path(shutil.copytree(tiny_model(base), destination))


def build_environment(base: Path) -> dict[str, str]:
    """The environment for builds a test runs: the session's private build cache under ``base`` (shared, so the
    same tiny build in another test is a cache hit), no trusted keys."""
    environment = dict(os.environ)
    environment["EDGE_SDK_CACHE_DIR"] = str(base / "native-build-cache")
    environment.pop("EDGE_SDK_TRUSTED_KEYS", None)
    return environment


def touch_newer(path: Path, than: Path) -> None:
    """Give ``path`` the current time as its mtime, waiting first until that is over a second newer than
    ``than``'s (file systems with coarse timestamps must see the difference); never a time in the future, which
    would make every later build look out of date."""
    import time

    while time.time_ns() < than.stat().st_mtime_ns + 1_100_000_000:
        time.sleep(0.2)
    os.utime(path)
