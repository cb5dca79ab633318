"""Bundle paths stay inside the bundle: the manifest reader refuses names that could leave the folder, and
open/verify refuse files that lead out of it through a symlink (docs/bundle-integrity.md)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from bundle_factory import entry_for, make_bundle, rewrite_manifest
from click.testing import CliRunner

from edge_sdk.bundle import open_bundle, verify_bundle
from edge_sdk.bundle.manifest import Manifest
from edge_sdk.bundle.paths import check_relative_path, path_problem, resolve_inside
from edge_sdk.bundle.store import read_manifest
from edge_sdk.cli.main import cli
from edge_sdk.errors import BundleError, BundleIntegrityError

OUTSIDE = b"secret outside the bundle"

# (listed path, what the message says): every kind of name that could leave the bundle folder.
BAD_NAMES = [
    ("../outside.txt", "'..'"),
    ("inference/../../outside.txt", "'..'"),
    ("ABSOLUTE", "is absolute"),
    ("./tok2.json", "'.'"),
    ("a//b.json", "empty component"),
    ("dir/", "empty component"),
    ("", "is empty"),
    ("C:/outside.txt", "drive letter"),
    ("c:outside.txt", "drive letter"),
    ("dir\\..\\..\\outside.txt", "backslash"),
    ("tok\x00.json", "NUL"),
]


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    (tmp_path / "outside.txt").write_bytes(OUTSIDE)
    return make_bundle(tmp_path / "b")


def _list(root: Path, path: str) -> None:
    """Add ``path`` to the manifest with the correct hash of the outside file (what a forger would do)."""
    rewrite_manifest(root, lambda data: data["files"].append(entry_for(path, OUTSIDE)))


@pytest.mark.parametrize("name, reason", BAD_NAMES)
def test_bad_name_refused_at_read_verify_and_every_open(bundle: Path, name: str, reason: str) -> None:
    if name == "ABSOLUTE":
        name = str(bundle.parent / "outside.txt")
    _list(bundle, name)
    calls = [lambda: read_manifest(bundle), lambda: verify_bundle(bundle)]
    calls += [lambda level=level: open_bundle(bundle, verify=level) for level in (False, True, "stamp", "full")]
    for call in calls:
        with pytest.raises(BundleError) as caught:
            call()
        message = str(caught.value)
        assert "files[3]" in message and repr(name) in message and reason in message, message


def test_cli_verify_refuses_a_listed_path_outside_with_one_line(bundle: Path) -> None:
    _list(bundle, "../outside.txt")
    result = CliRunner().invoke(cli, ["verify", str(bundle)])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "'../outside.txt'" in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("names, reason", [
    (["tok.json"], "listed twice"),
    (["TOK.json"], "listed twice"),               # collides on case-insensitive file systems
    (["manifest.json"], "cannot list"),
    (["manifest.sig"], "cannot list"),
    (["tok.json/inner"], "as a file and as the folder"),
])
def test_duplicates_reserved_names_and_file_folder_clashes_are_refused(bundle: Path, names: list[str],
                                                                       reason: str) -> None:
    rewrite_manifest(bundle, lambda data: data["files"].extend(entry_for(name, b"{}") for name in names))
    with pytest.raises(BundleError, match=reason):
        read_manifest(bundle)


@pytest.mark.parametrize("field, value, reason", [
    ("sha256", "ABC", "64 lowercase hex"),
    ("size", -1, "size must be an integer >= 0"),
    ("path", 7, "path must be a string"),
])
def test_malformed_entries_are_refused_naming_them(bundle: Path, field: str, value: object, reason: str) -> None:
    rewrite_manifest(bundle, lambda data: data["files"][0].__setitem__(field, value))
    with pytest.raises(BundleError, match=reason) as caught:
        read_manifest(bundle)
    assert "files[0]" in str(caught.value)


def test_symlinked_tokenizer_leading_out_is_refused_at_every_level(bundle: Path, tmp_path: Path) -> None:
    # Same bytes as the real tokenizer, so its hash matches: only the path check can catch it.
    (tmp_path / "elsewhere.json").write_bytes(b"{}")
    (bundle / "tok.json").unlink()
    (bundle / "tok.json").symlink_to(tmp_path / "elsewhere.json")
    for level in ("full", "stamp", True):
        with pytest.raises(BundleIntegrityError, match="tok.json: resolves to .*elsewhere.json.*outside the bundle"):
            open_bundle(bundle, verify=level)
    with pytest.raises(BundleIntegrityError, match="outside the bundle folder"):
        verify_bundle(bundle)
    with pytest.raises(BundleIntegrityError, match="'tok.json' resolves to .*outside the bundle folder"):
        open_bundle(bundle, verify=False)  # no hashing, but the paths are still checked


def test_symlinked_folder_leading_out_is_refused(bundle: Path, tmp_path: Path) -> None:
    moved = tmp_path / "moved-inference"
    (bundle / "inference").rename(moved)
    (bundle / "inference").symlink_to(moved, target_is_directory=True)
    with pytest.raises(BundleIntegrityError, match="inference/model.onnx: resolves to .*outside the bundle"):
        open_bundle(bundle)


def test_path_checks_at_use_time_catch_a_link_made_after_open(bundle: Path, tmp_path: Path) -> None:
    opened = open_bundle(bundle, verify="full")
    (tmp_path / "elsewhere.json").write_bytes(b"{}")
    (bundle / "tok.json").unlink()
    (bundle / "tok.json").symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(BundleIntegrityError, match="'tok.json' resolves to"):
        opened.path("tok.json")
    with pytest.raises(BundleError, match="lists no file 'elsewhere.json'"):
        opened.path("elsewhere.json")
    with pytest.raises(BundleError, match="'..'"):
        opened.inside("adapters/../../x", "adapter")


def test_a_symlink_between_two_files_of_the_bundle_is_accepted_and_hash_checked(bundle: Path) -> None:
    """Decided: a link that stays inside the bundle is allowed (some copy tools deduplicate that way); the file
    it reaches is hashed as the listed file, so a link to a file of other content fails."""
    (bundle / "copy.json").write_bytes(b"{}")
    (bundle / "tok.json").unlink()
    (bundle / "tok.json").symlink_to("copy.json")
    opened = open_bundle(bundle, verify="full")
    assert opened.path("tok.json") == bundle.resolve() / "tok.json"
    (bundle / "tok.json").unlink()
    (bundle / "tok.json").symlink_to("inference/model.onnx")
    with pytest.raises(BundleIntegrityError, match="tok.json: content changed"):
        open_bundle(bundle, verify="full")


def test_bundle_reached_through_a_symlinked_root_opens(bundle: Path, tmp_path: Path) -> None:
    (tmp_path / "current").symlink_to(bundle, target_is_directory=True)
    assert open_bundle(tmp_path / "current").root == bundle.resolve()


def test_a_listed_path_that_is_a_folder_or_missing_is_named(bundle: Path) -> None:
    (bundle / "tok.json").unlink()
    (bundle / "tok.json").mkdir()
    (bundle / "inference" / "model.onnx").unlink()
    with pytest.raises(BundleIntegrityError) as caught:
        open_bundle(bundle)
    assert "tok.json: not a regular file" in str(caught.value)
    assert "inference/model.onnx: missing" in str(caught.value)


def test_the_check_itself() -> None:
    for good in ("a", "a/b.onnx", "tokenizer/tokenizer.json", "x..y", ".hidden", "a b/ü.json"):
        assert path_problem(good) is None
        assert check_relative_path(good, "here") == good
    for bad, _ in BAD_NAMES:
        assert path_problem("/x" if bad == "ABSOLUTE" else bad) is not None
    with pytest.raises(BundleError, match="here: path '/etc/passwd' is absolute"):
        check_relative_path("/etc/passwd", "here")


def test_resolve_inside_follows_every_link(tmp_path: Path) -> None:
    root = (tmp_path / "root")
    (root / "a").mkdir(parents=True)
    (root / "a" / "up").symlink_to("../..", target_is_directory=True)
    with pytest.raises(BundleIntegrityError, match="outside the bundle folder"):
        resolve_inside(root.resolve(), "a/up/secret")
    (root / "loop").symlink_to("loop")
    assert resolve_inside(root.resolve(), "loop") == root.resolve() / "loop"  # inside; opening it fails later


def test_manifest_parse_from_text_checks_paths() -> None:
    text = json.dumps({**json.loads(Manifest.to_json(_plain_manifest())),
                       "files": [entry_for("../x", b"")]})
    with pytest.raises(BundleError, match=r"archive.tar:b/manifest.json, files\[0\]: path '../x'"):
        Manifest.from_json(text, source="archive.tar:b/manifest.json")


def _plain_manifest() -> Manifest:
    from bundle_factory import manifest

    return manifest()


@pytest.mark.skipif(os.name == "nt", reason="POSIX symlinks")
def test_adapter_store_refuses_an_adapters_folder_leading_out(tmp_path: Path) -> None:
    pytest.importorskip("safetensors")
    from edge_sdk.device.adapters import AdapterStore

    root = make_bundle(tmp_path / "b")
    manifest_path = root / "manifest.json"
    data = json.loads(manifest_path.read_text())
    data["inference"] = {"model": "inference/model.onnx", "initial_adapter": "x"}
    manifest_path.write_text(json.dumps(data))
    (tmp_path / "elsewhere").mkdir()
    (root / "adapters").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(BundleIntegrityError, match="adapter folder 'adapters' resolves to .*elsewhere"):
        AdapterStore(open_bundle(root, verify=False))
