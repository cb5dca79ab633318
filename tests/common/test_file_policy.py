"""The manifest's file policy: ``unlisted_files`` ("allow", the default for old bundles, or "refuse") and
``writable_paths`` (folders the device writes into). A full check under "refuse" names every file the manifest
neither lists nor allows; the stamp and none levels do not walk the folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from bundle_factory import make_bundle, manifest, rewrite_manifest

from edge_sdk.bundle.manifest import Manifest
from edge_sdk.bundle.store import open_bundle, verify_bundle
from edge_sdk.errors import BundleError, BundleIntegrityError


def _refusing(root: Path, writable: list[str] | None = None) -> Path:
    rewrite_manifest(root, lambda data: data.update(unlisted_files="refuse",
                                                    writable_paths=[".cache/"] if writable is None else writable))
    return root


def test_old_manifests_keep_their_bytes_and_mean_allow() -> None:
    old = manifest()
    data = json.loads(old.to_json())
    assert "unlisted_files" not in data and "writable_paths" not in data
    parsed = Manifest.from_json(old.to_json())
    assert (parsed.unlisted_files, parsed.writable_paths) == ("allow", [])


def test_the_policy_round_trips() -> None:
    policy = manifest()
    policy.unlisted_files, policy.writable_paths = "refuse", [".cache/", "adapters/"]
    parsed = Manifest.from_json(policy.to_json())
    assert (parsed.unlisted_files, parsed.writable_paths) == ("refuse", [".cache/", "adapters/"])


@pytest.mark.parametrize(("field", "value", "says"), [
    ("unlisted_files", "maybe", "field unlisted_files must be 'allow' or 'refuse'"),
    ("unlisted_files", None, "field unlisted_files must be 'allow' or 'refuse'"),
    ("writable_paths", ".cache/", "field writable_paths must be an array of strings"),
    ("writable_paths", [1], "field writable_paths must be an array of strings"),
    ("writable_paths", [".cache"], "field writable_paths[0] must be a folder path ending in '/'"),
    ("writable_paths", ["/"], "field writable_paths[0] must be a folder path ending in '/'"),
    ("writable_paths", ["../up/"], "writable_paths[0]: path '../up' has a '.' or '..' component"),
    ("writable_paths", ["/abs/"], "writable_paths[0]: path '/abs' is absolute"),
])
def test_a_malformed_policy_is_refused_naming_the_manifest(field: str, value: object, says: str) -> None:
    data = json.loads(manifest().to_json()) | {field: value}
    with pytest.raises(BundleError, match="manifest.json") as caught:
        Manifest.from_json(json.dumps(data))
    assert says in str(caught.value)


def test_full_verification_names_every_unlisted_file(tmp_path: Path) -> None:
    root = _refusing(make_bundle(tmp_path / "b"))
    (root / "stray.txt").write_text("x")
    (root / "inference/extra.onnx").write_bytes(b"x")
    os.symlink("/etc/hostname", root / "link")
    (root / "empty-folder").mkdir()  # folders alone are not files: nothing to refuse
    with pytest.raises(BundleIntegrityError) as caught:
        verify_bundle(root, trust=False)
    message = str(caught.value)
    for name in ("stray.txt", "inference/extra.onnx", "link"):
        assert f"{name}: not listed in the manifest (its unlisted_files is 'refuse')" in message
    assert "empty-folder" not in message
    open_bundle(root, verify="stamp", trust=False)  # only a full check walks the folder
    open_bundle(root, verify="none", trust=False)


def test_writable_paths_manifest_and_signature_are_allowed(tmp_path: Path) -> None:
    root = _refusing(make_bundle(tmp_path / "b"), writable=[".cache/", "adapters/"])
    (root / ".cache/vitisai/deep").mkdir(parents=True)
    (root / ".cache/vitisai/deep/compiled.xmodel").write_bytes(b"x")
    (root / "adapters").mkdir()
    (root / "adapters/mine.safetensors").write_bytes(b"x")
    (root / "manifest.sig").write_text("{}")  # not checked without trusted keys; never "unlisted"
    verify_bundle(root, trust=False)
    (root / ".cachex").write_bytes(b"x")  # a prefix of a writable folder's name is not inside it
    with pytest.raises(BundleIntegrityError, match=r"\.cachex: not listed"):
        verify_bundle(root, trust=False)


def test_allow_ignores_unlisted_files(tmp_path: Path) -> None:
    root = make_bundle(tmp_path / "b")
    (root / "stray.txt").write_text("x")
    verify_bundle(root, trust=False)
