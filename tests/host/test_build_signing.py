"""`edge-sdk build --sign`, --bundle-id and --bundle-version end to end on the tiny model: the bundle comes out
signed and versioned, a device trusting the key opens it, and a failure to sign never leaves an unsigned bundle
in place of a good one. Host only (builds need torch)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from edge_sdk.bundle import open_bundle
from edge_sdk.bundle.keys import SigningKey, generate_keys
from edge_sdk.bundle.signing import TrustPolicy
from edge_sdk.cli.main import cli
from edge_sdk.errors import BundleTrustError


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def ok_json(*args: str | Path) -> dict:
    result = run(*args, "--json")
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return json.loads(result.stdout)


def fails(*args: str | Path) -> str:
    result = run(*args)
    assert result.exit_code == 1, (result.stdout, result.stderr, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.stderr and result.stdout == ""
    return result.stderr.strip().splitlines()[-1]


@pytest.fixture
def tiny_model(fixtures_dir: Path) -> Path:
    return fixtures_dir / "tiny-model"


def test_build_sign_then_a_device_trusting_the_key_opens_it(tiny_model: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from signed_bundles import with_version

    from edge_sdk.device.runtime import DeviceBundle

    keys = generate_keys(tmp_path / "keys")
    out = tmp_path / "bundle"
    report = ok_json("build", tiny_model, "--task", "seq-cls", "--labels", "a,b", "--out", out,
                     "--sign", keys.private_key, "--bundle-id", "tiny-topics", "--bundle-version", "3")
    assert report["signed_by"] == keys.key_id
    assert report["bundle_id"] == "tiny-topics" and report["version"] == 3
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["bundle_id"] == "tiny-topics" and manifest["version"] == 3
    assert "manifest.sig" not in {entry["path"] for entry in manifest["files"]}
    verified = ok_json("verify", out, "--trusted-key", keys.public_key)
    assert verified["verified_by"] == [keys.key_id]
    monkeypatch.setenv("EDGE_SDK_TRUSTED_KEYS", str(keys.public_key))
    assert len(DeviceBundle.open(out).infer(["the team won"])) == 1
    # An older release of the same id, signed by the same key, is refused now that version 3 was accepted.
    older = with_version(out, tmp_path / "v2", 2, SigningKey.load(keys.private_key))
    with pytest.raises(BundleTrustError, match="version 2, but this device already accepted version 3"):
        DeviceBundle.open(older)


def test_a_bad_signing_key_fails_before_the_build(tiny_model: Path, tmp_path: Path) -> None:
    generate_keys(tmp_path / "keys")
    message = fails("build", tiny_model, "--task", "seq-cls", "--labels", "a,b", "--out", tmp_path / "out",
                    "--sign", tmp_path / "keys" / "edge-sdk.pub")
    assert "is a public key" in message
    assert sorted(path.name for path in tmp_path.iterdir()) == ["keys"]


class _BrokenKey(SigningKey):
    def sign(self, data: bytes) -> bytes:
        raise OSError("the hardware token was unplugged")


def test_a_failure_to_sign_keeps_the_previous_bundle(tiny_model: Path, tmp_path: Path) -> None:
    from edge_sdk.host.build import build_bundle
    from edge_sdk.host.config import BuildConfig

    keys = generate_keys(tmp_path / "keys")
    key = SigningKey.load(keys.private_key)
    config = BuildConfig(model_dir=tiny_model, task="seq-cls", labels=("a", "b"))
    out = build_bundle(config, tmp_path / "bundle", sign=key)
    before = {path.relative_to(out): path.read_bytes() for path in out.rglob("*") if path.is_file()}
    broken = _BrokenKey(key._key, key.path)
    with pytest.raises(OSError, match="unplugged"):
        build_bundle(config.with_overrides(labels=("x", "y")), out, overwrite=True, sign=broken)
    assert {path.relative_to(out): path.read_bytes() for path in out.rglob("*") if path.is_file()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bundle", "keys"]  # no staging folder left
    open_bundle(out, trust=TrustPolicy.from_paths([keys.public_key]))


def test_recipe_keys_and_defaults_for_the_bundle_id(tiny_model: Path, tmp_path: Path) -> None:
    plan = ok_json("build", tiny_model, "--task", "seq-cls", "--labels", "a,b", "--out", tmp_path / "out", "--dry-run")
    assert plan["config"]["bundle_id"] == "tiny-model-seq-cls" and plan["config"]["bundle_version"] == 1
    recipe = tmp_path / "news-topics.toml"
    recipe.write_text(f'model = "{tiny_model}"\ntask = "seq-cls"\nlabels = ["a", "b"]\n', encoding="utf-8")
    plan = ok_json("build", recipe, "--out", tmp_path / "out", "--dry-run")
    assert plan["config"]["bundle_id"] == "news-topics-seq-cls" and plan["config"]["bundle_version"] == 1
    recipe.write_text(recipe.read_text() + 'bundle_id = "news"\nbundle_version = 4\n', encoding="utf-8")
    plan = ok_json("build", recipe, "--out", tmp_path / "out", "--dry-run")
    assert plan["config"]["bundle_id"] == "news" and plan["config"]["bundle_version"] == 4
    plan = ok_json("build", recipe, "--out", tmp_path / "out", "--dry-run", "--bundle-version", "5")
    assert plan["config"]["bundle_version"] == 5
    recipe.write_text(recipe.read_text().replace('"news"', '"bad id!"'), encoding="utf-8")
    message = fails("build", recipe, "--out", tmp_path / "out", "--dry-run")
    assert "bundle id 'bad id!'" in message and "recipe key bundle_id" in message
    message = fails("build", tiny_model, "--task", "seq-cls", "--labels", "a,b", "--out", tmp_path / "out",
                    "--bundle-id", "../escape", "--dry-run")
    assert "--bundle-id" in message
    assert not (tmp_path / "out").exists()
