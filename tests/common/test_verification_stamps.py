"""Verification levels and stamps: a first open hashes every file, later opens only the files whose stat changed.

Hashing is counted with a spy on ``verification.sha256_file``, never timed. Files written by a test are only a
moment old, so the racy-timestamp rule would re-hash them; ``later`` moves the verifier's clock forward
instead of sleeping.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from bundle_factory import FILES, make_bundle, rewrite_manifest
from click.testing import CliRunner

from edge_sdk.bundle import open_bundle, verification, verify_bundle
from edge_sdk.bundle.verification import TIMESTAMP_SLACK_NS, stamp_path, verification_level
from edge_sdk.cli.main import cli
from edge_sdk.errors import BundleIntegrityError, ConfigError

ALL = sorted(FILES)


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths hashed so far (cleared by the test when it wants)."""
    calls: list[str] = []
    real = verification.sha256_file

    def spy(path: Path) -> str:
        calls.append(str(path))
        return real(path)

    monkeypatch.setattr(verification, "sha256_file", spy)
    return calls


@pytest.fixture
def later(monkeypatch: pytest.MonkeyPatch) -> None:
    """The verifier's clock runs well ahead, so every file written so far is old enough to trust by stamp."""
    monkeypatch.setattr(verification, "_now_ns", lambda: time.time_ns() + 10 * TIMESTAMP_SLACK_NS)


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return make_bundle(tmp_path / "b")


def _names(calls: list[str], root: Path) -> list[str]:
    return sorted(Path(call).relative_to(root.resolve()).as_posix() for call in calls)


def test_first_open_hashes_every_file_and_later_opens_none(bundle: Path, hashed: list[str], later: None) -> None:
    open_bundle(bundle)
    assert _names(hashed, bundle) == ALL
    assert stamp_path(bundle.resolve()).is_file()
    hashed.clear()
    open_bundle(bundle)
    open_bundle(bundle, verify="stamp")
    assert hashed == []


def test_changed_file_is_rehashed_and_refused(bundle: Path, hashed: list[str], later: None) -> None:
    open_bundle(bundle)
    hashed.clear()
    (bundle / "tok.json").write_bytes(b"[]")  # same size, new content and mtime
    with pytest.raises(BundleIntegrityError, match="tok.json: content changed"):
        open_bundle(bundle)
    assert _names(hashed, bundle) == ["tok.json"]
    with pytest.raises(BundleIntegrityError, match="tok.json: content changed"):
        open_bundle(bundle)  # the failure left no stamp that trusts the changed file


def test_change_with_restored_mtime_is_caught_by_the_change_time(bundle: Path, hashed: list[str],
                                                                 later: None) -> None:
    open_bundle(bundle)
    path = bundle / "portable" / "base.weights"
    before = path.stat()
    with open(path, "r+b") as handle:  # in place: same inode, same size
        handle.write(b"\x01")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # what `touch -r` can hide, ctime cannot
    assert path.stat().st_ino == before.st_ino and path.stat().st_mtime_ns == before.st_mtime_ns
    hashed.clear()
    with pytest.raises(BundleIntegrityError, match="portable/base.weights: content changed"):
        open_bundle(bundle)
    assert _names(hashed, bundle) == ["portable/base.weights"]


def test_touch_without_change_is_rehashed_then_trusted(bundle: Path, hashed: list[str], later: None) -> None:
    open_bundle(bundle)
    os.utime(bundle / "tok.json")
    hashed.clear()
    open_bundle(bundle)
    assert _names(hashed, bundle) == ["tok.json"]
    hashed.clear()
    open_bundle(bundle)
    assert hashed == []


def test_replaced_file_with_equal_content_is_rehashed(bundle: Path, hashed: list[str], later: None) -> None:
    open_bundle(bundle)
    (bundle / "tok.json").unlink()
    (bundle / "tok.json").write_bytes(b"{}")  # a new inode (or the same one reused: the ctime differs)
    hashed.clear()
    open_bundle(bundle)
    assert _names(hashed, bundle) == ["tok.json"]


def test_full_rehashes_everything_and_verify_refreshes_the_stamp(bundle: Path, hashed: list[str],
                                                                 later: None) -> None:
    open_bundle(bundle)
    hashed.clear()
    open_bundle(bundle, verify="full")
    assert _names(hashed, bundle) == ALL
    hashed.clear()
    stamp_path(bundle.resolve()).unlink()
    verify_bundle(bundle)
    assert _names(hashed, bundle) == ALL
    hashed.clear()
    open_bundle(bundle)  # verify wrote a stamp
    assert hashed == []


def test_no_verification_hashes_nothing(bundle: Path, hashed: list[str]) -> None:
    open_bundle(bundle, verify=False)
    open_bundle(bundle, verify="none")
    assert hashed == []
    assert not stamp_path(bundle.resolve()).exists()


@pytest.mark.parametrize("content", [
    "not json", "[]", '{"format": 99}', '{"format": 1, "files": {"tok.json": [1, 2]}}',
    '{"format": 1, "bundle": "x", "manifest_sha256": "y", "checked_ns": "soon", "files": {}}',
    '{"format": 1, "bundle": 1, "manifest_sha256": "y", "checked_ns": 1, "files": {"a": [1, 2, 3, 4, 5.5]}}',
])
def test_malformed_stamp_is_ignored_and_rewritten(bundle: Path, hashed: list[str], later: None,
                                                  content: str) -> None:
    open_bundle(bundle)
    stamp = stamp_path(bundle.resolve())
    stamp.write_text(content)
    hashed.clear()
    open_bundle(bundle)
    assert _names(hashed, bundle) == ALL
    assert json.loads(stamp.read_text())["format"] == 1
    stamp.write_bytes(b"\xff\xfe binary")
    hashed.clear()
    open_bundle(bundle)
    assert _names(hashed, bundle) == ALL


def test_stamp_of_another_manifest_is_not_used(bundle: Path, hashed: list[str], later: None) -> None:
    open_bundle(bundle)
    rewrite_manifest(bundle, lambda data: data.__setitem__("labels", ["x", "y"]))
    hashed.clear()
    open_bundle(bundle)
    assert _names(hashed, bundle) == ALL


def test_a_copy_of_the_bundle_has_its_own_stamp(bundle: Path, tmp_path: Path, hashed: list[str],
                                                later: None) -> None:
    import shutil

    open_bundle(bundle)
    copy = Path(shutil.copytree(bundle, tmp_path / "copy"))
    hashed.clear()
    open_bundle(copy)
    assert _names(hashed, copy) == ALL


def test_a_just_written_file_is_not_trusted_from_the_stamp(bundle: Path, hashed: list[str]) -> None:
    """The racy rule: a file changed within the timestamp slack of the check is hashed again next time (its
    stat tuple could equal that of a write made in the same clock tick)."""
    open_bundle(bundle)
    hashed.clear()
    open_bundle(bundle)
    assert _names(hashed, bundle) == ALL


def test_unwritable_state_folder_does_not_stop_an_open(bundle: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch, hashed: list[str],
                                                      caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "state-is-a-file").write_text("x")
    monkeypatch.setenv("EDGE_SDK_STATE_DIR", str(tmp_path / "state-is-a-file"))
    open_bundle(bundle)
    open_bundle(bundle)
    assert len(hashed) == 2 * len(ALL)
    assert "could not write the verification stamp" in caplog.text


def test_levels() -> None:
    assert verification_level(True) == "stamp"
    assert verification_level(False) == verification_level(None) == verification_level("none") == "none"
    assert verification_level("full") == "full"
    with pytest.raises(ConfigError, match="unknown verification level 'quick'"):
        verification_level("quick")


def test_cli_verify_exit_codes(bundle: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(cli, ["verify", str(bundle)])
    assert ok.exit_code == 0 and ok.stdout.startswith(f"ok: {len(ALL)} files match the manifest;")
    (bundle / "tok.json").write_bytes(b"[]")
    bad = runner.invoke(cli, ["verify", str(bundle)])
    assert bad.exit_code == 1 and "tok.json: content changed" in bad.stderr and bad.stderr.count("\n") == 1
    assert "Traceback" not in bad.stderr
