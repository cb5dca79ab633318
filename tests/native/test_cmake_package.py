"""The CMake package (native_hooks/cmake) and the firmware example: configured and built from scratch with a tiny
model, the header says what the manifest says, the program verifies its bundle, and the bundle is rebuilt when
(and only when) a file the build read changes. Plus: `edge-sdk cmake-dir`, versions, argument errors, the wheel."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

import edge_sdk
from edge_sdk.cli.main import cli

sys.path.insert(0, str(Path(__file__).resolve().parent))

from native_support import (  # noqa: E402
    REPO,
    build_environment,
    check_header_matches,
    copy_model,
    header_as_json,
    tiny_model,
    touch_newer,
    write_edge_sdk_wrapper,
)

CMAKE = shutil.which("cmake")
needs_cmake = pytest.mark.skipif(CMAKE is None or shutil.which("cc") is None, reason="no cmake or C compiler")
EXAMPLE = REPO / "examples" / "firmware"
PACKAGE = REPO / "native_hooks" / "cmake"


def _cmake(*args: str | Path, cwd: Path | None = None, env: dict | None = None,
           check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([CMAKE, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"cmake {' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}")
    return result


def _build_runs(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if line.startswith("build ")] if log.exists() else []


@pytest.fixture(scope="module")
def firmware(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The example configured against a private copy of the tiny model and built once (module-wide)."""
    pytest.importorskip("torch")  # edge-sdk build runs on the host
    if CMAKE is None or shutil.which("cc") is None:
        pytest.skip("no cmake or C compiler")
    root = tmp_path_factory.mktemp("cmake-firmware")
    model = copy_model(tmp_path_factory.getbasetemp(), root / "model")
    log = root / "edge-sdk.log"
    wrapper = write_edge_sdk_wrapper(root / "bin", log)
    env = build_environment(tmp_path_factory.getbasetemp())
    build = root / "build"
    _cmake("-S", EXAMPLE, "-B", build, f"-DEDGE_SDK_EXECUTABLE={wrapper}", f"-DFIRMWARE_MODEL={model}",
           "-DFIRMWARE_BUILD_ARGS=--max-length;32", env=env)
    first = _cmake("--build", build, env=env)
    return {"root": root, "model": model, "log": log, "env": env, "build": build, "first": first,
            "bundle": build / "bundles" / "topics", "header": build / "edge_bundle_topics.h"}


@needs_cmake
def test_example_builds_runs_and_verifies_its_bundle(firmware: dict) -> None:
    bundle = firmware["bundle"]
    assert "edge-sdk: verifying bundle topics" in firmware["first"].stdout  # the POST_BUILD check ran
    result = subprocess.run([str(firmware["build"] / "firmware")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    manifest = json.loads((bundle / "manifest.json").read_text())
    sha256 = hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()
    assert f"bundle id: {manifest['bundle_id']} version {manifest['version']}" in result.stdout
    assert f"files: {len(manifest['files'])}" in result.stdout
    assert f"manifest sha256: {sha256}" in result.stdout
    assert "labels: 3: business sport tech" in result.stdout
    assert all(f"  {spec['name']} {spec['dtype']}" in result.stdout for spec in manifest["inputs"])
    assert "verified" in result.stdout and "manifest sha256 matches the header" in result.stdout


@needs_cmake
def test_generated_header_matches_the_manifest(firmware: dict) -> None:
    values = header_as_json(firmware["header"], "topics", firmware["root"] / "printer")
    check_header_matches(values, firmware["bundle"])
    assert values["inputs"][0]["shape"] == ["batch", "sequence"] and values["signed"] == 0


@needs_cmake
def test_verifier_rejects_a_tampered_bundle_at_run_time(firmware: dict, tmp_path: Path) -> None:
    tampered = Path(shutil.copytree(firmware["bundle"], tmp_path / "tampered"))
    weights = tampered / "portable" / "base.weights"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x01")
    result = subprocess.run([str(firmware["build"] / "firmware"), str(tampered)], capture_output=True, text=True)
    assert result.returncode == 1 and "verification failed" in result.stdout


@needs_cmake
def test_bundle_is_rebuilt_when_and_only_when_an_input_changes(firmware: dict) -> None:
    build, env, log = firmware["build"], firmware["env"], firmware["log"]
    manifest = firmware["bundle"] / "manifest.json"
    depfile = build / "edge_bundle_topics.d"
    listed = depfile.read_text()
    model = firmware["model"]
    assert str(model / "config.json") in listed and str(model / "model.safetensors") in listed
    runs, stamp = len(_build_runs(log)), manifest.stat().st_mtime_ns

    _cmake("--build", build, env=env)  # nothing changed: edge-sdk does not run at all
    assert len(_build_runs(log)) == runs and manifest.stat().st_mtime_ns == stamp

    config = model / "config.json"  # touched, content unchanged: edge-sdk runs (and copies from its cache)
    tokenizer = model / "tokenizer_config.json"
    data = json.loads(tokenizer.read_text())
    # A real content change (one the tokenizer ignores) of a file only the depfile names: DEPENDS has just the
    # folder's config.json.
    data["edge_sdk_test_note"] = "edited"
    tokenizer.write_text(json.dumps(data))
    touch_newer(tokenizer, manifest)
    _cmake("--build", build, env=env)
    assert len(_build_runs(log)) == runs + 1

    _cmake("--build", build, env=env)
    assert len(_build_runs(log)) == runs + 1
    touch_newer(config, manifest)
    _cmake("--build", build, env=env)
    assert len(_build_runs(log)) == runs + 2




def test_cmake_dir_prints_the_package_folder() -> None:
    result = CliRunner().invoke(cli, ["cmake-dir"])
    assert result.exit_code == 0
    folder = Path(result.output.strip())
    assert (folder / "EdgeSdkConfig.cmake").is_file() and (folder / "EdgeSdkConfigVersion.cmake").is_file()
    assert (folder.parent / "c" / "CMakeLists.txt").is_file() and (folder.parent / "make" / "edge_sdk.mk").is_file()


def test_package_version_is_the_sdk_version() -> None:
    text = (PACKAGE / "EdgeSdkConfigVersion.cmake").read_text()
    assert re.search(r'set\(PACKAGE_VERSION "([^"]+)"\)', text)[1] == edge_sdk.__version__
    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"] == edge_sdk.__version__


def _probe(tmp_path: Path, body: str, *defines: str) -> subprocess.CompletedProcess:
    """Configure a one-file project (C enabled: the verify component builds C) that runs ``body``."""
    source = tmp_path / "probe"
    source.mkdir(exist_ok=True)
    header = "cmake_minimum_required(VERSION 3.20)\nproject(probe LANGUAGES C)\n"
    (source / "CMakeLists.txt").write_text(f"{header}{body}\n")
    shutil.rmtree(tmp_path / "probe-build", ignore_errors=True)
    return _cmake("-S", source, "-B", tmp_path / "probe-build", *defines, check=False)


@needs_cmake
@pytest.mark.parametrize(("request_version", "found"), [("0.1", True), ("0.1.0", True), ("0", True), ("0.2", False),
                                                        ("1.0", False), ("0.1...0.3", True), ("0.2...1.0", False)])
def test_find_package_version_compatibility(tmp_path: Path, request_version: str, found: bool) -> None:
    result = _probe(tmp_path, f"find_package(EdgeSdk {request_version} CONFIG COMPONENTS)\n"
                              'message(STATUS "EdgeSdk_FOUND=${EdgeSdk_FOUND}")',
                    f"-DCMAKE_PREFIX_PATH={PACKAGE}")
    assert result.returncode == 0, result.stderr
    assert f"EdgeSdk_FOUND={'1' if found else '0'}" in result.stdout


@needs_cmake
def test_verify_component_and_both_ways_of_finding_the_package(tmp_path: Path) -> None:
    body = ("find_package(EdgeSdk CONFIG REQUIRED COMPONENTS verify)\n"
            "find_package(EdgeSdk CONFIG REQUIRED)\n"  # twice: the verifier is added once
            'message(STATUS "verify=${EdgeSdk_verify_FOUND}")\n'
            "if(NOT TARGET EdgeSdk::verify OR NOT TARGET edge_bundle_verify)\n  message(FATAL_ERROR missing)\nendif()")
    for define in (f"-DEdgeSdk_DIR={PACKAGE}", f"-DCMAKE_PREFIX_PATH={PACKAGE.parent}"):
        result = _probe(tmp_path, body, define)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "verify=TRUE" in result.stdout
    result = _probe(tmp_path, "find_package(EdgeSdk CONFIG REQUIRED COMPONENTS gpu)", f"-DEdgeSdk_DIR={PACKAGE}")
    assert result.returncode != 0 and "no component 'gpu'" in result.stderr


@needs_cmake
@pytest.mark.parametrize(("call", "message"), [
    ("edge_sdk_add_bundle(NAME my-bundle RECIPE r.toml OUTPUT b)", "not a C identifier"),
    ("edge_sdk_add_bundle(NAME verify RECIPE r.toml OUTPUT b)", "NAME 'verify' is reserved"),
    ("edge_sdk_add_bundle(NAME b MODEL m OUTPUT b)", "MODEL needs TASK"),
    ("edge_sdk_add_bundle(NAME b RECIPE r.toml MODEL m TASK seq-cls OUTPUT b)", "RECIPE or MODEL, not both"),
    ("edge_sdk_add_bundle(NAME b RECIPE r.toml)", "OUTPUT <bundle dir> is required"),
    ("edge_sdk_add_bundle(NAME b RECIPE r.toml OUTPUT b BOGUS x)", "unknown arguments"),
    ("add_executable(fw main.c)\nedge_sdk_verify_bundle(TARGET fw BUNDLE nope)", "no bundle 'nope'"),
])
def test_function_arguments_are_checked(tmp_path: Path, call: str, message: str) -> None:
    result = _probe(tmp_path, f"find_package(EdgeSdk CONFIG REQUIRED COMPONENTS)\n{call}",
                    f"-DEdgeSdk_DIR={PACKAGE}", "-DEDGE_SDK_EXECUTABLE=/bin/true")
    assert result.returncode != 0
    assert message in " ".join(result.stderr.split()), result.stderr


def test_wheel_carries_the_native_hooks(tmp_path: Path) -> None:
    pytest.importorskip("setuptools")
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "build")
    shutil.copytree(REPO / "edge_sdk", source / "edge_sdk", symlinks=True, ignore=ignore)
    shutil.copytree(REPO / "native_hooks", source / "native_hooks", ignore=ignore)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                             str(tmp_path / "wheel"), str(source)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    wheel = next((tmp_path / "wheel").glob("*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ("edge_sdk/native_hooks/cmake/EdgeSdkConfig.cmake",
                     "edge_sdk/native_hooks/cmake/EdgeSdkConfigVersion.cmake",
                     "edge_sdk/native_hooks/make/edge_sdk.mk", "edge_sdk/native_hooks/c/CMakeLists.txt",
                     "edge_sdk/native_hooks/c/Makefile", "edge_sdk/native_hooks/c/include/edge_bundle_verify.h",
                     "edge_sdk/native_hooks/c/src/verify.c", "edge_sdk/native/header.py"):
        assert required in names, required
    # Installed (unpacked) without the repository, cmake-dir finds the wheel's copy.
    installed = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(installed)
    code = "from edge_sdk.native.hooks import cmake_package_dir; print(cmake_package_dir())"
    printed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path,
                             env={**os.environ, "PYTHONPATH": str(installed)}).stdout.strip()
    assert printed == str(installed / "edge_sdk" / "native_hooks" / "cmake")


_SIGNED_PROJECT = """\
cmake_minimum_required(VERSION 3.20)
project(signed_firmware LANGUAGES C)
find_package(EdgeSdk 0.1 CONFIG REQUIRED COMPONENTS verify)
edge_sdk_add_bundle(NAME signed MODEL "{model}" TASK seq-cls LABELS business sport tech PROFILE cpu
                    OUTPUT bundles/signed SIGN_KEY "{key}" EXTRA_ARGS --max-length 32)
add_executable(fw main.c)
target_link_libraries(fw PRIVATE EdgeSdk::bundle_signed)
edge_sdk_verify_bundle(TARGET fw BUNDLE signed PUBLIC_KEY "{public_key}")
get_target_property(header edge_bundle_signed EDGE_SDK_BUNDLE_HEADER)
message(STATUS "header=${{header}} dir=${{EDGE_SDK_BUNDLE_signed_DIR}}")
"""


@needs_cmake
def test_signed_bundle_is_verified_with_its_public_key_after_the_build(
        tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from edge_sdk.bundle.keys import SigningKey, generate_keys

    keys, other = generate_keys(tmp_path / "keys"), generate_keys(tmp_path / "other")
    source = tmp_path / "source"
    source.mkdir()
    model = tiny_model(tmp_path_factory.getbasetemp())  # not edited here: the shared copy, likely a cache hit
    (source / "CMakeLists.txt").write_text(_SIGNED_PROJECT.format(model=model, key=keys.private_key,
                                                                  public_key=keys.public_key))
    (source / "main.c").write_text('#include "edge_bundle_signed.h"\n'
                                   "int main(void) { return EDGE_BUNDLE_SIGNED_SIGNED == 1 ? 0 : 1; }\n")
    env = build_environment(tmp_path_factory.getbasetemp())
    wrapper = write_edge_sdk_wrapper(tmp_path / "bin")
    build = tmp_path / "build"
    configured = _cmake("-S", source, "-B", build, f"-DEdgeSdk_DIR={PACKAGE}", f"-DEDGE_SDK_EXECUTABLE={wrapper}",
                        env=env)
    assert f"header={build / 'edge_bundle_signed.h'} dir={build / 'bundles' / 'signed'}" in configured.stdout
    built = _cmake("--build", build, env=env)
    assert "edge-sdk: verifying bundle signed" in built.stdout
    assert subprocess.run([str(build / "fw")]).returncode == 0
    key_id = SigningKey.load(keys.private_key).key_id
    assert f'#define EDGE_BUNDLE_SIGNED_SIGNING_KEY_ID "{key_id}"' in (build / "edge_bundle_signed.h").read_text()
    # The POST_BUILD command is the C verifier with the key: another key fails it (exit 1, a failed check).
    verifier = build / "edge_sdk_verify" / "edge_bundle_verify"
    checked = subprocess.run([str(verifier), "--public-key", str(other.public_key), str(build / "bundles" / "signed")],
                             capture_output=True, text=True)
    assert checked.returncode == 1, checked.stdout + checked.stderr
