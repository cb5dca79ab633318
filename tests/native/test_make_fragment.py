"""The Make fragment (native_hooks/make/edge_sdk.mk): a Makefile that includes it builds the bundle, the header
and a program using it; reruns edge-sdk when (and only when) a file in the depfile changes; builds and runs the C
verifier; and the old include path still works."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from native_support import (  # noqa: E402
    REPO,
    build_environment,
    check_header_matches,
    copy_model,
    header_as_json,
    touch_newer,
    write_edge_sdk_wrapper,
)

MAKE = shutil.which("make")
needs_make = pytest.mark.skipif(MAKE is None or shutil.which("cc") is None, reason="no make or C compiler")

_RECIPE = """\
model = "{model}"
task = "seq-cls"
labels = ["business", "sport", "tech"]
max_length = 32
"""
_MAKEFILE = """\
EDGE_SDK_RECIPE := topics.toml
EDGE_SDK_BUNDLE := out/topics
EDGE_SDK_NAME := topics
include {fragment}

all: firmware

firmware: main.c $(EDGE_SDK_HEADER) $(EDGE_SDK_BUNDLE)/manifest.json
\t$(CC) -std=c99 -Wall -Wextra -Werror -pedantic -I$(dir $(EDGE_SDK_HEADER)) main.c -o $@
"""
_MAIN = """\
#include <stdio.h>
#include "edge_bundle_topics.h"
int main(void) {
    printf("%s %d %s\\n", EDGE_BUNDLE_TOPICS_ID, EDGE_BUNDLE_TOPICS_FILE_COUNT, edge_bundle_topics_labels[0]);
    return 0;
}
"""


def _make(project: Path, *args: str, env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run([MAKE, "-C", str(project), *args], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise AssertionError(f"make {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def _build_runs(log: Path) -> int:
    return sum(line.startswith("build ") for line in log.read_text().splitlines()) if log.exists() else 0




@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict:
    pytest.importorskip("torch")  # edge-sdk build runs on the host
    if MAKE is None or shutil.which("cc") is None:
        pytest.skip("no make or C compiler")
    root = tmp_path_factory.mktemp("make-firmware")
    model = copy_model(tmp_path_factory.getbasetemp(), root / "model")
    log = root / "edge-sdk.log"
    wrapper = write_edge_sdk_wrapper(root / "bin", log)
    folder = root / "project"
    folder.mkdir()
    (folder / "topics.toml").write_text(_RECIPE.format(model=model))
    (folder / "Makefile").write_text(_MAKEFILE.format(fragment=REPO / "native_hooks/make/edge_sdk.mk"))
    (folder / "main.c").write_text(_MAIN)
    env = build_environment(tmp_path_factory.getbasetemp()) | {"EDGE_SDK": str(wrapper)}
    first = _make(folder, env=env)
    return {"folder": folder, "model": model, "log": log, "env": env, "first": first,
            "bundle": folder / "out" / "topics", "header": folder / "out" / "edge_bundle_topics.h"}


@needs_make
def test_makefile_builds_bundle_header_and_program(project: dict) -> None:
    folder = project["folder"]
    assert (project["bundle"] / "manifest.json").is_file() and (folder / "out" / "topics.d").is_file()
    assert (folder / "out" / "topics.build.json").read_text().lstrip().startswith("{")  # the --json report, kept
    output = subprocess.run([str(folder / "firmware")], capture_output=True, text=True, check=True).stdout
    assert output.split()[2] == "business"
    check_header_matches(header_as_json(project["header"], "topics", folder / "printer"), project["bundle"])


@needs_make
def test_make_reruns_edge_sdk_when_and_only_when_an_input_changes(project: dict) -> None:
    folder, env, log = project["folder"], project["env"], project["log"]
    manifest = project["bundle"] / "manifest.json"
    runs, stamp = _build_runs(log), manifest.stat().st_mtime_ns
    assert runs >= 1

    result = _make(folder, env=env)
    assert "Nothing to be done" in result.stdout
    assert _build_runs(log) == runs and manifest.stat().st_mtime_ns == stamp

    weights = project["model"] / "model.safetensors"  # named only by the depfile, not by the Makefile
    assert str(weights) in (folder / "out" / "topics.d").read_text()
    touch_newer(weights, manifest)
    _make(folder, env=env)
    assert _build_runs(log) == runs + 1
    assert "Nothing to be done" in _make(folder, env=env).stdout

    recipe = folder / "topics.toml"  # a new release in the recipe: rebuilt, and the header follows
    recipe.write_text(recipe.read_text() + "bundle_version = 2\n")
    touch_newer(recipe, manifest)
    _make(folder, env=env)
    assert _build_runs(log) == runs + 2
    assert json.loads(manifest.read_text())["version"] == 2
    assert "#define EDGE_BUNDLE_TOPICS_VERSION 2\n" in project["header"].read_text()


@needs_make
def test_c_verifier_target_builds_and_checks_the_bundle(project: dict) -> None:
    if subprocess.run(["pkg-config", "--exists", "libsodium"]).returncode != 0:
        pytest.skip("no libsodium: the C verifier needs it")
    result = _make(project["folder"], "edge-sdk-verify-c", env=project["env"])
    assert "ok" in result.stdout
    assert (project["folder"] / "out" / "edge_sdk_verify" / "edge_bundle_verify").is_file()
    assert not (REPO / "native_hooks" / "c" / "build").exists()  # built beside the bundle, not in the sources


@needs_make
def test_old_include_path_and_missing_settings(tmp_path: Path) -> None:
    makefile = tmp_path / "Makefile"
    makefile.write_text(f"EDGE_SDK_RECIPE := r.toml\nEDGE_SDK_BUNDLE := b\ninclude {REPO}/native_hooks/edge_sdk.mk\n")
    (tmp_path / "r.toml").write_text("")
    result = subprocess.run([MAKE, "-n", "-C", str(tmp_path), "b/manifest.json"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "edge-sdk build r.toml --out b --overwrite --quiet --json" in " ".join(result.stdout.split())
    makefile.write_text(f"EDGE_SDK_BUNDLE := b\ninclude {REPO}/native_hooks/make/edge_sdk.mk\n")
    result = subprocess.run([MAKE, "-n", "-C", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode != 0 and "set EDGE_SDK_RECIPE" in result.stderr
