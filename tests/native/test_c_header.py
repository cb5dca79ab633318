"""`edge-sdk header`: the generated C header compiles strictly (C99 and C++), says exactly what the manifest says
(read back by compiling a program that prints it), escapes every string, validates its name, and is
deterministic. Synthetic bundles only (no model): these run in every environment with a C compiler."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_sdk.bundle.keys import SigningKey, generate_keys
from edge_sdk.bundle.signing import sign_bundle
from edge_sdk.cli.main import cli
from edge_sdk.errors import BundleError, ConfigError
from edge_sdk.native.header import c_identifier, c_string, check_header_name, render_header, write_header

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle_factory import make_bundle, rewrite_manifest  # noqa: E402
from native_support import STRICT_C, check_header_matches, compilers, cxx_compilers, header_as_json  # noqa: E402

needs_cc = pytest.mark.skipif(not compilers(), reason="no C compiler")
# Strings a careless generator gets wrong: quotes, backslashes, trigraphs, control characters, non-ASCII
# followed by what would extend a hex escape, a comment terminator.
TRICKY = ['say "hi"', "back\\slash", "??=trigraph??/", "tab\there\nnewline", "café", "é9f", "ünï\u00e7ode ✓",
          "*/ not a comment end", "%s%d", "count", "x y", "x-y"]


def _weird_bundle(folder: Path) -> Path:
    bundle = make_bundle(folder)

    def change(data: dict) -> None:
        data["labels"] = TRICKY
        data["bundle_id"] = "weird-bundle.v2"
        data["version"] = 7
        data["profile"] = {"name": "fpga-vitisai", "precision": "int8-qdq"}
        data["inputs"] = [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]},
                          {"name": "pixel \"values\"", "dtype": "float32", "shape": [1, 3, "height", 224]},
                          {"name": "scalar", "dtype": "float32", "shape": []}]
        data["outputs"] = [{"name": "logits", "dtype": "float32", "shape": ["batch", len(TRICKY)]}]
    rewrite_manifest(bundle, change)
    return bundle


@pytest.mark.parametrize("name", ["topics", "_x", "A1_b2", "a" * 64])
def test_valid_names_are_accepted(name: str) -> None:
    assert check_header_name(name) == name


@pytest.mark.parametrize("name", ["", "1topics", "my-bundle", "a b", "café", "a" * 65, "x;y", None])
def test_names_that_are_not_c_identifiers_are_refused(name) -> None:
    with pytest.raises(ConfigError, match="not a C identifier"):
        check_header_name(name)


@pytest.mark.parametrize("name", ["verify", "Types", "DIM"])
def test_names_of_shared_symbols_are_reserved(name: str) -> None:
    with pytest.raises(ConfigError, match="reserved"):
        check_header_name(name)


def test_c_string_escapes_are_exact_and_never_merge() -> None:
    assert c_string('a"b\\c') == '"a\\"b\\\\c"'
    assert c_string("??=") == '"\\?\\?="'  # no trigraph survives
    # Octal escapes are always three digits: the "9" and "f" after é stay characters of their own.
    assert c_string("é9f") == '"\\303\\2519f"'
    assert c_string("\n\t\x00") == '"\\n\\t\\000"'
    assert c_identifier("pixel values") == "PIXEL_VALUES"
    assert c_identifier("3d-shape") == "_3D_SHAPE"
    assert c_identifier("✓") == c_identifier("café") == ""


@needs_cc
def test_header_round_trips_every_value_and_compiles_strictly(tmp_path: Path) -> None:
    bundle = _weird_bundle(tmp_path / "bundle")
    header = write_header(bundle, "weird", tmp_path / "include" / "edge_bundle_weird.h")
    for compiler, flags in compilers():
        values = header_as_json(header, "weird", tmp_path / compiler, compiler, flags)
        check_header_matches(values, bundle)
        assert values["labels"] == TRICKY
        assert values["signed"] == 0 and values["unsigned_define"] == 1 and values["signing_key_ids"] == []
    assert header.read_bytes().isascii()
    text = header.read_text()
    assert "#define EDGE_BUNDLE_WEIRD_LABEL_SAY_HI 0" in text
    # Non-ASCII names get no index macro ("café" would become a misleading CAF).
    assert "EDGE_BUNDLE_WEIRD_LABEL_CAF" not in text and "_9F" not in text
    # "count" must not redefine the label count; "x y" and "x-y" collide as X_Y: neither gets a macro.
    assert f"#define EDGE_BUNDLE_WEIRD_LABEL_COUNT {len(TRICKY)}\n" in text and text.count("_LABEL_COUNT ") == 1
    assert "_LABEL_X_Y" not in text


@pytest.mark.skipif(not cxx_compilers(), reason="no C++ compiler")
def test_header_is_valid_cplusplus(tmp_path: Path) -> None:
    bundle = _weird_bundle(tmp_path / "bundle")
    header = write_header(bundle, "weird", tmp_path / "edge_bundle_weird.h")
    for compiler, flags in cxx_compilers():
        values = header_as_json(header, "weird", tmp_path / compiler, compiler, flags, suffix=".cpp")
        check_header_matches(values, bundle)


@needs_cc
def test_two_bundle_headers_share_one_translation_unit(tmp_path: Path) -> None:
    first, second = make_bundle(tmp_path / "one"), _weird_bundle(tmp_path / "two")
    write_header(first, "one", tmp_path / "edge_bundle_one.h")
    write_header(second, "two", tmp_path / "edge_bundle_two.h")
    source = tmp_path / "both.c"
    source.write_text('#include "edge_bundle_one.h"\n#include "edge_bundle_two.h"\n#include "edge_bundle_one.h"\n'
                      "int main(void) { return EDGE_BUNDLE_ONE_FILE_COUNT + EDGE_BUNDLE_TWO_FILE_COUNT"
                      " == 6 ? 0 : 1; }\n")
    compiler = compilers()[0][0]
    subprocess.run([compiler, *STRICT_C, str(source), "-o", str(tmp_path / "both")], check=True)
    assert subprocess.run([str(tmp_path / "both")]).returncode == 0


@needs_cc
def test_signed_bundle_names_its_keys(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle")
    keys = [SigningKey.load(generate_keys(tmp_path / f"key{index}").private_key) for index in range(2)]
    for key in keys:
        sign_bundle(bundle, key)
    header = write_header(bundle, "signed", tmp_path / "edge_bundle_signed.h")
    values = header_as_json(header, "signed", tmp_path / "c")
    ids = [key.key_id for key in keys]
    assert values["signed"] == 1 and "unsigned_define" not in values
    assert values["signing_key_ids"] == ids and values["signing_key_id"] == ids[0] and values["key_ids_sentinel"]
    check_header_matches(values, bundle)


def test_header_is_deterministic(tmp_path: Path) -> None:
    first, second = make_bundle(tmp_path / "a"), make_bundle(tmp_path / "b")
    assert (first / "manifest.json").read_bytes() == (second / "manifest.json").read_bytes()
    assert render_header(first, "x") == render_header(second, "x")
    out = tmp_path / "edge_bundle_x.h"
    runner = CliRunner()
    result = runner.invoke(cli, ["header", str(first), "--name", "x", "--out", str(out)])
    assert result.exit_code == 0, result.output
    once = out.read_bytes()
    assert runner.invoke(cli, ["header", str(second), "--name", "x", "--out", str(out)]).exit_code == 0
    assert out.read_bytes() == once
    assert str(tmp_path) not in once.decode()  # no absolute paths: the same bundle anywhere gives the same header
    assert [entry.name for entry in tmp_path.iterdir() if entry.name.startswith(".")] == []  # no temporaries left


def test_cli_refuses_bad_names_and_non_bundles_with_exit_1(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle")
    runner = CliRunner()
    result = runner.invoke(cli, ["header", str(bundle), "--name", "my-bundle", "--out", str(tmp_path / "h.h")])
    assert result.exit_code == 1 and "not a C identifier" in result.output
    result = runner.invoke(cli, ["header", str(tmp_path), "--name", "x", "--out", str(tmp_path / "h.h")])
    assert result.exit_code == 1 and "holds no manifest.json" in result.output
    assert not (tmp_path / "h.h").exists()
    result = runner.invoke(cli, ["header", str(bundle), "--name", "x", "--out", str(tmp_path / "h.h"), "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["header"] == str(tmp_path / "h.h")


def test_malformed_signature_file_is_a_bundle_error(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle")
    (bundle / "manifest.sig").write_text('{"format": 1, "signatures": [{"key_id": "NOT HEX"}]}')
    with pytest.raises(BundleError, match="key_id"):
        render_header(bundle, "x")


def test_header_module_imports_no_third_party_library() -> None:
    # The header runs wherever the CLI runs, devices and CI images without torch, onnx or cryptography.
    code = ("import sys, edge_sdk.native.header; print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'numpy', 'torch', 'onnx', 'onnxruntime', 'cryptography', 'click', 'transformers'}))")
    result = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.stdout.strip() == "[]"
