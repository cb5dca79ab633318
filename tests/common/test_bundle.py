"""The bundle format: atomic writes, hash verification, schema versioning, packing."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from edge_sdk.bundle import SCHEMA_VERSION, BundleWriter, Manifest, TensorSpec, open_bundle, pack_bundle, verify_bundle
from edge_sdk.errors import BundleError, BundleIntegrityError, BundleVersionError


def _manifest() -> Manifest:
    return Manifest(
        task="seq-cls", labels=["a", "b"], model={"source": "x"}, tokenizer={"file": "tok.json", "pad_token_id": 0},
        max_length=16, inputs=[TensorSpec("input_ids", "int64", ["batch", "sequence"])],
        outputs=[TensorSpec("logits", "float32", ["batch", 2])], trainable=[TensorSpec("w", "float32", [2, 2])],
        peft={}, training={}, inference={}, profile={}, build={}, sdk_version="0.1.0",
    )


def _write(destination: Path, **kwargs) -> Path:
    with BundleWriter(destination, **kwargs) as writer:
        writer.add_bytes(b"weights", "inference/model.onnx")
        writer.add_bytes(b"{}", "tok.json")
        return writer.commit(_manifest())


def test_commit_records_every_file_with_hash_and_size(tmp_path: Path) -> None:
    root = _write(tmp_path / "b")
    manifest = verify_bundle(root)
    assert {entry.path: entry.size for entry in manifest.files} == {"inference/model.onnx": 7, "tok.json": 2}
    assert manifest.file("tok.json").sha256 == "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    assert manifest.schema_version == SCHEMA_VERSION
    assert open_bundle(root).path("tok.json") == root.resolve() / "tok.json"


def test_failed_write_leaves_nothing_behind(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with BundleWriter(tmp_path / "b") as writer:
            writer.add_bytes(b"half", "inference/model.onnx")
            raise RuntimeError("export failed")
    assert list(tmp_path.iterdir()) == []


def test_existing_bundle_is_kept_unless_overwrite(tmp_path: Path) -> None:
    root = _write(tmp_path / "b")
    with pytest.raises(BundleError, match="already exists.*--overwrite"):
        BundleWriter(root)
    with pytest.raises(RuntimeError):
        with BundleWriter(root, overwrite=True) as writer:
            writer.add_bytes(b"new", "tok.json")
            raise RuntimeError("boom")
    assert verify_bundle(root).file("tok.json").size == 2  # the old bundle survived the failed rebuild
    _write(root, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_refuses_to_replace_a_folder_that_is_not_a_bundle(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "thesis.tex").write_text("precious")
    with pytest.raises(BundleError, match="not a bundle"):
        BundleWriter(tmp_path / "docs", overwrite=True)
    assert (tmp_path / "docs" / "thesis.tex").read_text() == "precious"


def test_tampered_and_missing_files_are_named(tmp_path: Path) -> None:
    root = _write(tmp_path / "b")
    (root / "tok.json").write_bytes(b"{!}")
    (root / "inference" / "model.onnx").unlink()
    with pytest.raises(BundleIntegrityError) as caught:
        open_bundle(root)
    message = str(caught.value)
    assert "tok.json: content changed" in message
    assert "inference/model.onnx: missing" in message


def test_newer_schema_is_refused_with_versions(tmp_path: Path) -> None:
    root = _write(tmp_path / "b")
    data = json.loads((root / "manifest.json").read_text())
    data["schema_version"] = SCHEMA_VERSION + 1
    (root / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleVersionError, match=f"version {SCHEMA_VERSION + 1}.*up to {SCHEMA_VERSION}"):
        open_bundle(root)


@pytest.mark.parametrize("content, pattern", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ('{"schema_version": 1}', r"manifest\.json: field model is missing"),
])
def test_damaged_manifest(tmp_path: Path, content: str, pattern: str) -> None:
    (tmp_path / "manifest.json").write_text(content)
    with pytest.raises(BundleError, match=pattern):
        open_bundle(tmp_path)


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        open_bundle(tmp_path / "nope")
    with pytest.raises(BundleError, match="no manifest.json"):
        open_bundle(tmp_path)


def test_pack_writes_one_archive_that_unpacks_to_a_valid_bundle(tmp_path: Path) -> None:
    root = _write(tmp_path / "b")
    archive = pack_bundle(root, tmp_path / "ship" / "b.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    assert len(verify_bundle(tmp_path / "unpacked" / "b").files) == 2


def test_unusable_destinations_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(BundleError, match="is a file; choose a folder path"):
        BundleWriter(tmp_path / "afile", overwrite=True)
    with pytest.raises(BundleError, match="cannot create the output folder"):
        BundleWriter(tmp_path / "afile" / "sub")
    root = _write(tmp_path / "b")
    with pytest.raises(BundleError, match="is a folder; give the archive's file name"):
        pack_bundle(root, tmp_path)
    with pytest.raises(BundleError, match="cannot write the archive"):
        pack_bundle(root, tmp_path / "afile" / "b.tar.gz")
    with pytest.raises(BundleError, match="is a file; pass the bundle folder"):
        open_bundle(root / "manifest.json")


def test_pack_leaves_out_files_the_manifest_does_not_list(tmp_path: Path) -> None:
    root = _write(tmp_path / "b")
    (root / "adapters").mkdir()
    (root / "adapters" / "alice.safetensors").write_bytes(b"personal")
    with tarfile.open(pack_bundle(root, tmp_path / "b.tar.gz")) as tar:
        assert sorted(tar.getnames()) == ["b/inference/model.onnx", "b/manifest.json", "b/tok.json"]


def test_published_bundle_has_ordinary_permissions(tmp_path: Path) -> None:
    import os
    import stat

    root = _write(tmp_path / "b")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(root.stat().st_mode) == 0o777 & ~umask  # not mkdtemp's private 0o700
    assert stat.S_IMODE((root / "manifest.json").stat().st_mode) == 0o666 & ~umask
