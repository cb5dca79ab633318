"""Signed bundles through the CLI and DeviceBundle on a real tiny bundle: `keys generate`, `sign`, `verify
--trusted-key`, `inspect`, and a device (EDGE_SDK_TRUSTED_KEYS) refusing with one line and exit code 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from signed_bundles import new_key, synthetic_bundle, with_version

from edge_sdk.cli.main import cli
from edge_sdk.device.runtime import DeviceBundle
from edge_sdk.errors import BundleIntegrityError, BundleTrustError


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def ok(*args: str | Path) -> str:
    result = run(*args)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return result.stdout


def fails(*args: str | Path) -> str:
    """exit 1, one 'Error: ...' line on stderr, nothing on stdout, no traceback."""
    result = run(*args)
    assert result.exit_code == 1, (result.stdout, result.stderr, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert result.stdout == ""
    return lines[0]


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    folder = tmp_path / "keys"
    report = json.loads(ok("keys", "generate", "--out", folder, "--json"))
    assert report["private_key"] == str(folder / "edge-sdk.key") and len(report["key_id"]) == 16
    return folder


def test_keys_generate_prints_the_id_and_refuses_to_overwrite(tmp_path: Path) -> None:
    out = ok("keys", "generate", "--out", tmp_path / "k")
    assert "key id" in out and "edge-sdk.key" in out and "edge-sdk.pub" in out
    assert "already exist" in fails("keys", "generate", "--out", tmp_path / "k")
    ok("keys", "generate", "--out", tmp_path / "k", "--overwrite")


def test_sign_verify_inspect_and_open_on_a_device(tiny_bundle: Path, keys: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    key_id = json.loads(ok("sign", tiny_bundle, "--key", keys / "edge-sdk.key", "--json"))["key_id"]
    assert "not checked" in ok("verify", tiny_bundle)
    report = json.loads(ok("verify", tiny_bundle, "--trusted-key", keys / "edge-sdk.pub", "--json"))
    assert report["ok"] and report["signed"] and report["trust_checked"]
    assert report["signed_by"] == report["verified_by"] == [key_id]
    assert f"signed by trusted key {key_id}" in ok("verify", tiny_bundle, "--trusted-key", keys / "edge-sdk.pub")
    shown = ok("inspect", tiny_bundle)
    assert f"signed by   {key_id}" in shown and "bundle id" in shown
    monkeypatch.setenv("EDGE_SDK_TRUSTED_KEYS", str(keys / "edge-sdk.pub"))
    assert "\t" in ok("infer", tiny_bundle, "--text", "the team won the cup")  # label<TAB>text
    ok("adapters", "list", tiny_bundle)


def test_a_device_with_trusted_keys_refuses_unsigned_and_foreign_bundles(tiny_bundle: Path, keys: Path,
                                                                        tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    assert "signed" in fails("verify", tiny_bundle, "--trusted-key", keys / "edge-sdk.pub")
    monkeypatch.setenv("EDGE_SDK_TRUSTED_KEYS", str(keys))
    for command in (["infer", tiny_bundle, "--text", "x"], ["adapters", "show", tiny_bundle, "initial"],
                    ["verify", tiny_bundle], ["pack", tiny_bundle, "--out", tmp_path / "b.tar.gz"]):
        assert "is not signed" in fails(*command)
    assert not (tmp_path / "b.tar.gz").exists()
    assert "signed by   no (unsigned)" in ok("inspect", tiny_bundle)  # inspecting runs nothing: allowed
    ok("keys", "generate", "--out", tmp_path / "stranger")
    ok("sign", tiny_bundle, "--key", tmp_path / "stranger" / "edge-sdk.key")
    assert "does not trust" in fails("infer", tiny_bundle, "--text", "x")


def test_rollback_through_the_cli(tiny_bundle: Path, keys: Path, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_sdk.bundle.keys import SigningKey

    key = SigningKey.load(keys / "edge-sdk.key")
    v1 = with_version(tiny_bundle, tmp_path / "v1", 1, key)
    v2 = with_version(tiny_bundle, tmp_path / "v2", 2, key)
    monkeypatch.setenv("EDGE_SDK_TRUSTED_KEYS", str(keys / "edge-sdk.pub"))
    ok("verify", v1)  # verify checks the record but never writes it
    ok("infer", v2, "--text", "x")
    assert "version 1, but this device already accepted version 2" in fails("verify", v1)
    assert "version 1, but this device already accepted version 2" in fails("infer", v1, "--text", "x")


def test_device_bundle_refuses_a_tampered_graph_of_a_signed_bundle(tiny_bundle: Path, keys: Path) -> None:
    from edge_sdk.bundle.signing import TrustPolicy

    ok("sign", tiny_bundle, "--key", keys / "edge-sdk.key")
    policy = TrustPolicy.from_paths([keys])
    DeviceBundle.open(tiny_bundle, trust=policy)
    graph = tiny_bundle / json.loads((tiny_bundle / "manifest.json").read_text())["inference"]["model"]
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0x01
    graph.write_bytes(bytes(data))
    with pytest.raises(BundleIntegrityError, match="content changed"):
        DeviceBundle.open(tiny_bundle, trust=policy)


def test_device_bundle_reports_the_signature_of_a_bundle_it_could_not_even_load(tmp_path: Path) -> None:
    """The graph and tokenizer are garbage: the trust check refuses before anything tries to load them."""
    from edge_sdk.bundle.signing import TrustPolicy, sign_bundle

    stranger, _ = new_key(tmp_path / "stranger")
    _, trusted = new_key(tmp_path / "trusted")
    root = synthetic_bundle(tmp_path / "b")
    sign_bundle(root, stranger)
    with pytest.raises(BundleTrustError, match="does not trust"):
        DeviceBundle.open(root, trust=TrustPolicy.from_paths([trusted]))
