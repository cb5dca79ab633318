"""The device runtime opens bundle files only inside the bundle, and `--verify` picks the check (on the tiny
text-classification bundle; docs/bundle-integrity.md)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_sdk.bundle import verification
from edge_sdk.cli.main import cli
from edge_sdk.device import DeviceBundle
from edge_sdk.errors import AdapterError, BundleError, BundleIntegrityError

TOKENIZER = "tokenizer/tokenizer.json"


def _fails(*args: str | Path) -> str:
    result = CliRunner().invoke(cli, [str(arg) for arg in args])
    assert result.exit_code == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_tokenizer_symlinked_out_of_the_bundle_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.json"
    shutil.copyfile(tiny_bundle / TOKENIZER, elsewhere)  # same bytes: its hash matches the manifest
    (tiny_bundle / TOKENIZER).unlink()
    (tiny_bundle / TOKENIZER).symlink_to(elsewhere)
    for verify in (True, "full", False):
        with pytest.raises(BundleIntegrityError, match=f"{TOKENIZER}.*resolves to .*elsewhere.json.*outside"):
            DeviceBundle.open(tiny_bundle, verify=verify)
    assert "outside the bundle folder" in _fails("verify", tiny_bundle)
    assert "outside the bundle folder" in _fails("infer", tiny_bundle, "--text", "goal")
    assert "outside the bundle folder" in _fails("inspect", tiny_bundle)


def test_manifest_naming_a_tokenizer_outside_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    """The issue's case: a manifest listing ../outside.txt with its correct hash, and the tokenizer pointing at
    it, used to pass verify and be opened by infer."""
    outside = tmp_path / "outside.txt"
    shutil.copyfile(tiny_bundle / TOKENIZER, outside)
    data = json.loads((tiny_bundle / "manifest.json").read_text())
    data["files"].append({"path": "../outside.txt", "sha256": hashlib.sha256(outside.read_bytes()).hexdigest(),
                          "size": outside.stat().st_size})
    data["tokenizer"]["file"] = "../outside.txt"
    (tiny_bundle / "manifest.json").write_text(json.dumps(data))
    for args in (("verify",), ("infer", "--text", "goal"), ("infer", "--text", "goal", "--verify", "full"),
                 ("inspect",)):
        assert "path '../outside.txt' has a '.' or '..' component" in _fails(args[0], tiny_bundle, *args[1:])
    with pytest.raises(BundleError, match="'../outside.txt'"):
        DeviceBundle.open(tiny_bundle, verify=False)


def test_user_adapter_symlinked_out_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    shutil.copyfile(tiny_bundle / "adapters" / "initial.safetensors", tmp_path / "alice.safetensors")
    (tiny_bundle / "adapters" / "alice.safetensors").symlink_to(tmp_path / "alice.safetensors")
    bundle = DeviceBundle.open(tiny_bundle)
    with pytest.raises(BundleIntegrityError, match="adapter 'alice' 'adapters/alice.safetensors' resolves to"):
        bundle.infer(["goal"], adapter="alice")
    with pytest.raises(AdapterError, match="not allowed"):
        bundle.infer(["goal"], adapter="../alice")


def test_verify_flag(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setattr(verification, "_now_ns", lambda: time.time_ns() + 10 * verification.TIMESTAMP_SLACK_NS)
    hashed: list[str] = []
    real = verification.sha256_file
    monkeypatch.setattr(verification, "sha256_file", lambda path: hashed.append(str(path)) or real(path))
    files = len(json.loads((tiny_bundle / "manifest.json").read_text())["files"])
    runner = CliRunner()
    counts = []
    for flags in ([], ["--verify", "stamp"], ["--verify", "full"], []):
        hashed.clear()
        result = runner.invoke(cli, ["infer", str(tiny_bundle), "--text", "goal", *flags])
        assert result.exit_code == 0, result.stderr
        counts.append(len(hashed))
    assert counts == [files, 0, files, 0]  # first open (no stamp), stamp, full, stamp again
    bad = runner.invoke(cli, ["infer", str(tiny_bundle), "--text", "goal", "--verify", "quick"])
    assert bad.exit_code == 2 and "'quick' is not one of 'stamp', 'full'" in bad.stderr


def test_tampered_file_is_refused_at_the_stamp_level_too(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setattr(verification, "_now_ns", lambda: time.time_ns() + 10 * verification.TIMESTAMP_SLACK_NS)
    DeviceBundle.open(tiny_bundle)  # writes the stamp
    weights = tiny_bundle / "portable" / "base.weights"
    data = bytearray(weights.read_bytes())
    data[0] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleIntegrityError, match="portable/base.weights: content changed"):
        DeviceBundle.open(tiny_bundle)
