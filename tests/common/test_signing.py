"""Signed bundles: keys, manifest.sig, and a device with trusted keys refusing unsigned, wrongly signed and
tampered bundles before it loads anything (docs/signed-bundles.md). Runs in the host, device and stock envs."""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import tarfile
from functools import partial
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from signed_bundles import new_key, synthetic_bundle, trusting

from edge_sdk.bundle import BundleWriter, open_bundle, pack_bundle, verify_bundle
from edge_sdk.bundle.keys import PRIVATE_KEY_FILE, PUBLIC_KEY_FILE, SigningKey, generate_keys, key_id, load_public_key
from edge_sdk.bundle.manifest import UNVERSIONED, Manifest
from edge_sdk.bundle.signing import (
    TrustPolicy,
    check_manifest_signature,
    parse_signatures,
    sign_bundle,
    signature_file,
)
from edge_sdk.bundle.trust import resolve_trust
from edge_sdk.errors import BundleError, BundleIntegrityError, BundleTrustError, ConfigError

# --- keys ---------------------------------------------------------------------------------------------------


def test_generate_writes_a_private_0600_key_and_a_public_key_with_one_id(tmp_path: Path) -> None:
    made = generate_keys(tmp_path / "keys")
    assert made.private_key == tmp_path / "keys" / PRIVATE_KEY_FILE
    assert made.public_key == tmp_path / "keys" / PUBLIC_KEY_FILE
    if os.name == "posix":
        assert stat.S_IMODE(made.private_key.stat().st_mode) == 0o600
    assert made.private_key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert made.public_key.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert sorted(path.name for path in (tmp_path / "keys").iterdir()) == [PRIVATE_KEY_FILE, PUBLIC_KEY_FILE]
    public = load_public_key(made.public_key)
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    import hashlib

    assert made.key_id == key_id(public) == hashlib.sha256(raw).hexdigest()[:16]
    assert SigningKey.load(made.private_key).key_id == made.key_id


def test_generate_keeps_existing_keys_unless_overwrite(tmp_path: Path) -> None:
    first = generate_keys(tmp_path)
    before = first.private_key.read_bytes()
    with pytest.raises(ConfigError, match="already exist.*--overwrite"):
        generate_keys(tmp_path)
    assert first.private_key.read_bytes() == before
    second = generate_keys(tmp_path, overwrite=True)
    assert second.key_id != first.key_id and first.private_key.read_bytes() != before
    assert sorted(path.name for path in tmp_path.iterdir()) == [PRIVATE_KEY_FILE, PUBLIC_KEY_FILE]  # no litter


def test_generate_into_a_file_path_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        generate_keys(tmp_path / "file")


# --- signing and checking -----------------------------------------------------------------------------------


def test_signed_bundle_opens_with_its_trusted_key(tmp_path: Path) -> None:
    key, public = new_key(tmp_path / "keys")
    root = synthetic_bundle(tmp_path / "b")
    result = sign_bundle(root, key.path)
    assert result.key_id == key.key_id and result.key_ids == [key.key_id]
    assert "manifest.sig" not in {entry.path for entry in verify_bundle(root).files}  # detached, not listed
    opened = open_bundle(root, trust=trusting(public))
    assert opened.manifest.bundle_id == "demo" and opened.manifest.version == 1
    signature = json.loads((root / "manifest.sig").read_text())
    assert signature["format"] == 1 and signature["algorithm"] == "ed25519"
    assert [entry["key_id"] for entry in signature["signatures"]] == [key.key_id]


def test_unsigned_bundle_is_refused_under_a_policy_and_opens_without_one(tmp_path: Path) -> None:
    _, public = new_key(tmp_path / "keys")
    root = synthetic_bundle(tmp_path / "b")
    open_bundle(root)  # no policy: as before
    with pytest.raises(BundleTrustError) as caught:
        open_bundle(root, trust=trusting(public))
    message = str(caught.value)
    assert str(root) in message and "not signed" in message and "edge-sdk sign" in message
    assert load_public_key(public) and key_id(load_public_key(public)) in message


def test_environment_variable_configures_the_policy_from_a_file_or_folder(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    key, public = new_key(tmp_path / "keys")
    root = synthetic_bundle(tmp_path / "b")
    monkeypatch.setenv("EDGE_SDK_TRUSTED_KEYS", str(public))
    with pytest.raises(BundleTrustError, match="not signed.*EDGE_SDK_TRUSTED_KEYS="):
        open_bundle(root)
    with pytest.raises(BundleTrustError, match="not signed"):
        verify_bundle(root)
    sign_bundle(root, key)
    open_bundle(root)
    monkeypatch.setenv("EDGE_SDK_TRUSTED_KEYS", str(public.parent))
    open_bundle(root)
    assert open_bundle(root, trust=False).manifest.bundle_id == "demo"  # an explicit opt-out for inspection
    monkeypatch.setenv("EDGE_SDK_TRUSTED_KEYS", "")
    assert resolve_trust(None) is None


def test_wrong_key_is_refused_naming_both_key_ids(tmp_path: Path) -> None:
    signer, _ = new_key(tmp_path / "publisher")
    _, device_key = new_key(tmp_path / "device")
    root = synthetic_bundle(tmp_path / "b")
    sign_bundle(root, signer)
    with pytest.raises(BundleTrustError) as caught:
        open_bundle(root, trust=trusting(device_key))
    message = str(caught.value)
    assert signer.key_id in message and key_id(load_public_key(device_key)) in message
    assert "does not trust" in message


@pytest.mark.parametrize("position", [0, "labels", -2])
def test_one_changed_byte_of_the_manifest_breaks_the_signature(tmp_path: Path, position) -> None:
    key, public = new_key(tmp_path / "keys")
    root = synthetic_bundle(tmp_path / "b")
    sign_bundle(root, key)
    data = bytearray((root / "manifest.json").read_bytes())
    index = data.index(b'"a"') + 1 if position == "labels" else position  # label "a" -> "b": still valid JSON
    data[index] = ord("b") if position == "labels" else data[index] ^ 0x20
    (root / "manifest.json").write_bytes(bytes(data))
    with pytest.raises(BundleTrustError, match=f"trusted key {key.key_id} does not match manifest.json"):
        open_bundle(root, trust=trusting(public))


def test_a_tampered_file_of_a_signed_bundle_is_refused_at_open(tmp_path: Path) -> None:
    key, public = new_key(tmp_path / "keys")
    root = synthetic_bundle(tmp_path / "b")
    sign_bundle(root, key)
    (root / "portable" / "inference.onnx").write_bytes(b"not really onnx, but evil")
    with pytest.raises(BundleIntegrityError, match="portable/inference.onnx: content changed"):
        open_bundle(root, trust=trusting(public))


def test_refusal_comes_before_any_hashing_or_loading(tmp_path: Path) -> None:
    """Graph and tokenizer are garbage and a listed file is missing: the signature problem is what is reported."""
    _, public = new_key(tmp_path / "keys")
    root = synthetic_bundle(tmp_path / "b")
    (root / "portable" / "inference.onnx").unlink()
    with pytest.raises(BundleTrustError, match="not signed"):
        open_bundle(root, trust=trusting(public))


def test_manifest_that_is_not_json_reports_the_signature_first(tmp_path: Path) -> None:
    key, public = new_key(tmp_path / "keys")
    root = synthetic_bundle(tmp_path / "b")
    sign_bundle(root, key)
    (root / "manifest.json").write_bytes(b"\xff\xfe garbage")
    with pytest.raises(BundleTrustError, match="does not match"):
        open_bundle(root, trust=trusting(public))
    with pytest.raises(BundleError, match="not UTF-8"):
        open_bundle(root)


def _signature_file(key_id_value: str = "0123456789abcdef", signature: str | None = None, **changes) -> bytes:
    document = {"format": 1, "algorithm": "ed25519",
                "signatures": [{"key_id": key_id_value,
                                "signature": signature or base64.b64encode(bytes(64)).decode()}]}
    document.update(changes)
    return json.dumps(document).encode()


@pytest.mark.parametrize("contents, problem", [
    (b"", "not JSON"),
    (b'{"format": 1, "algorithm": "ed25519", "signatures": [{"key_id": "01', "not JSON"),   # truncated
    (b"[1, 2]", "not an object"),
    (_signature_file(format=0), "'format' is 0"),
    (_signature_file(algorithm="rsa"), "'algorithm' is 'rsa'"),
    (_signature_file(signatures=[]), "non-empty list"),
    (_signature_file(signatures=["x"]), "signature 1 is not an object"),
    (_signature_file("ABCDEF"), "not 16 lowercase hex"),
    (_signature_file(signature="%%%not base64"), "not 64 bytes"),
    (_signature_file(signature=base64.b64encode(bytes(63)).decode()), "not 64 bytes"),
    (b"x" * 300_000, "far more than"),
])
def test_malformed_signature_files_are_refused_with_what_is_wrong(tmp_path: Path, contents: bytes,
                                                                  problem: str) -> None:
    _, public = new_key(tmp_path / "keys")
    root = synthetic_bundle(tmp_path / "b")
    (root / "manifest.sig").write_bytes(contents)
    with pytest.raises(BundleTrustError) as caught:
        open_bundle(root, trust=trusting(public))
    message = str(caught.value)
    assert f"{root}/manifest.sig is malformed" in message and problem in message
    assert "get the bundle again" in message


def test_newer_signature_format_asks_for_an_upgrade() -> None:
    with pytest.raises(BundleTrustError, match="signature format 2.*upgrade edge-sdk"):
        parse_signatures(_signature_file(format=2), "x/manifest.sig")


def test_check_manifest_signature_for_the_archive_unpacker(tmp_path: Path) -> None:
    key, public = new_key(tmp_path / "keys")
    data = b'{"schema_version": 1}\n'
    signature = signature_file(key, data)
    policy = trusting(public)
    assert check_manifest_signature(data, signature, "bundle.tar.gz", policy) == [key.key_id]
    assert check_manifest_signature(data, None, "bundle.tar.gz", None) == []  # no policy: no check
    with pytest.raises(BundleTrustError, match="bundle.tar.gz.*not signed"):
        check_manifest_signature(data, None, "bundle.tar.gz", policy)
    with pytest.raises(BundleTrustError, match="does not match"):
        check_manifest_signature(data + b" ", signature, "bundle.tar.gz", policy)


# --- rotation -----------------------------------------------------------------------------------------------


def test_rotation_two_trusted_keys_and_two_signatures(tmp_path: Path) -> None:
    old, old_public = new_key(tmp_path / "old")
    new, new_public = new_key(tmp_path / "new")
    both = TrustPolicy.from_paths([old_public, new_public])
    assert both.key_ids == sorted([old.key_id, new.key_id])
    by_old, by_new = synthetic_bundle(tmp_path / "a"), synthetic_bundle(tmp_path / "b")
    sign_bundle(by_old, old)
    sign_bundle(by_new, new)
    open_bundle(by_old, trust=both)
    open_bundle(by_new, trust=both)
    # One bundle signed by both keys opens on devices that trust either one.
    assert sign_bundle(by_old, new).key_ids == [old.key_id, new.key_id]
    open_bundle(by_old, trust=trusting(old_public))
    open_bundle(by_old, trust=trusting(new_public))
    # Signing again with the same key replaces its entry.
    first = json.loads((by_old / "manifest.sig").read_text())
    assert sign_bundle(by_old, old).key_ids == [old.key_id, new.key_id]
    assert json.loads((by_old / "manifest.sig").read_text())["signatures"][1] == first["signatures"][1]


def test_a_folder_of_trusted_keys_trusts_every_pub_file_in_it(tmp_path: Path) -> None:
    old, _ = new_key(tmp_path / "old")
    new, _ = new_key(tmp_path / "new")
    folder = tmp_path / "trusted"
    folder.mkdir()
    shutil.copy(tmp_path / "old" / PUBLIC_KEY_FILE, folder / "2025.pub")
    shutil.copy(tmp_path / "new" / PUBLIC_KEY_FILE, folder / "2026.pub")
    (folder / "README.txt").write_text("the publisher's keys")
    assert TrustPolicy.from_paths([folder]).key_ids == sorted([old.key_id, new.key_id])


def test_a_stale_signature_beside_a_good_one_does_not_matter(tmp_path: Path) -> None:
    old, old_public = new_key(tmp_path / "old")
    new, new_public = new_key(tmp_path / "new")
    root = synthetic_bundle(tmp_path / "b")
    stale = signature_file(old, b"an earlier manifest")
    (root / "manifest.sig").write_bytes(stale)
    sign_bundle(root, new)
    open_bundle(root, trust=trusting(old_public, new_public))
    with pytest.raises(BundleTrustError, match=f"trusted key {old.key_id} does not match"):
        open_bundle(root, trust=trusting(old_public))


# --- bad key files ------------------------------------------------------------------------------------------


def _pem_of_other_kind(path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


@pytest.mark.parametrize("make, problem", [
    (lambda p: p.write_text("hello") and p, "not a PEM public key"),
    (lambda p: p.write_bytes(bytes(range(256))) and p, "not a PEM public key"),
    (lambda p: _pem_of_other_kind(p), "not an Ed25519 key"),
    (lambda p: shutil.copy(generate_keys(p.parent / "k").private_key, p), "is a private key"),
    (lambda p: p.write_bytes(b"x" * 100_000) and p, "far too large"),
    (lambda p: p, "does not exist"),
])
def test_bad_trusted_key_files_name_the_file(tmp_path: Path, make, problem: str) -> None:
    path = tmp_path / "trusted.pub"
    make(path)
    with pytest.raises(ConfigError) as caught:
        TrustPolicy.from_paths([path])
    assert problem in str(caught.value) and str(path) in str(caught.value)


def test_empty_trusted_folder_and_bad_environment_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no .pub file"):
        TrustPolicy.from_paths([tmp_path / "empty"])
    root = synthetic_bundle(tmp_path / "b")
    monkeypatch.setenv("EDGE_SDK_TRUSTED_KEYS", str(tmp_path / "nowhere.pub"))
    with pytest.raises(ConfigError, match="nowhere.pub.*does not exist"):
        open_bundle(root)  # a misconfigured device refuses rather than silently opening unsigned bundles
    with pytest.raises(ConfigError, match="no trusted key"):
        TrustPolicy.from_public_keys([])


def test_bad_signing_keys_name_the_file(tmp_path: Path) -> None:
    made = generate_keys(tmp_path / "k")
    with pytest.raises(ConfigError, match="is a public key; signing needs the private key"):
        SigningKey.load(made.public_key)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    with pytest.raises(ConfigError, match="encrypted.key.*encrypted private key"):
        SigningKey.load(encrypted)
    other = tmp_path / "ec.key"
    other.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(ConfigError, match="ec.key.*not an Ed25519 key"):
        SigningKey.load(other)
    (tmp_path / "junk.key").write_text("junk")
    with pytest.raises(ConfigError, match="junk.key.*not a PEM private key"):
        SigningKey.load(tmp_path / "junk.key")
    with pytest.raises(ConfigError, match="missing.key.*does not exist"):
        SigningKey.load(tmp_path / "missing.key")


# --- the bundle on disk -------------------------------------------------------------------------------------


def test_sign_checks_the_files_first_and_refuses_a_damaged_bundle(tmp_path: Path) -> None:
    key, _ = new_key(tmp_path / "keys")
    root = synthetic_bundle(tmp_path / "b")
    (root / "tokenizer" / "tokenizer.json").write_bytes(b"changed")
    with pytest.raises(BundleIntegrityError, match="tokenizer/tokenizer.json"):
        sign_bundle(root, key)
    assert not (root / "manifest.sig").exists()


def test_sign_refuses_to_extend_a_malformed_signature_file(tmp_path: Path) -> None:
    key, _ = new_key(tmp_path / "keys")
    root = synthetic_bundle(tmp_path / "b")
    (root / "manifest.sig").write_bytes(b"{trunc")
    with pytest.raises(BundleTrustError, match="manifest.sig is malformed.*delete it"):
        sign_bundle(root, key)
    assert (root / "manifest.sig").read_bytes() == b"{trunc"


def test_commit_signs_in_the_staging_folder_and_a_failed_signature_keeps_the_old_bundle(tmp_path: Path) -> None:
    key, public = new_key(tmp_path / "keys")
    root = synthetic_bundle(tmp_path / "b", version=1)
    sign_bundle(root, key)
    before = {path.name: path.read_bytes() for path in root.iterdir() if path.is_file()}

    def broken_signer(_manifest: bytes) -> bytes:
        raise OSError("the key's token was unplugged")

    with pytest.raises(OSError, match="unplugged"):
        with BundleWriter(root, overwrite=True) as writer:
            writer.add_bytes(b"new graph", "portable/inference.onnx")
            writer.commit(open_bundle(root).manifest, signer=broken_signer)
    assert {path.name: path.read_bytes() for path in root.iterdir() if path.is_file()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["b", "keys"]  # no staging folder left
    with BundleWriter(root, overwrite=True) as writer:
        writer.add_bytes(b"new graph", "portable/inference.onnx")
        writer.commit(open_bundle(root).manifest, signer=partial(signature_file, key))
    assert open_bundle(root, trust=trusting(public)).manifest.file("portable/inference.onnx").size == 9


def test_pack_carries_the_signature(tmp_path: Path) -> None:
    key, _ = new_key(tmp_path / "keys")
    root = synthetic_bundle(tmp_path / "b")
    sign_bundle(root, key)
    with tarfile.open(pack_bundle(root, tmp_path / "b.tar.gz")) as tar:
        assert "b/manifest.sig" in tar.getnames()


# --- the manifest's identity and version --------------------------------------------------------------------


def test_older_manifests_get_a_derived_id_and_version_zero(tmp_path: Path) -> None:
    root = synthetic_bundle(tmp_path / "b")
    document = json.loads((root / "manifest.json").read_text())
    del document["bundle_id"], document["version"]
    legacy = Manifest.from_json(json.dumps(document))
    assert legacy.version == UNVERSIONED == 0
    assert legacy.bundle_id == "demo-model-seq-cls"
    assert Manifest.from_json(json.dumps(document)).bundle_id == legacy.bundle_id  # deterministic


@pytest.mark.parametrize("key, value, problem", [
    ("version", 0, "bundle version 0"), ("version", "2", "bundle version '2'"), ("version", True, "True"),
    ("bundle_id", "", "bundle id ''"), ("bundle_id", "../x", "'../x'"), ("bundle_id", 7, "bundle id 7"),
])
def test_malformed_id_or_version_in_a_manifest_is_refused(tmp_path: Path, key: str, value, problem: str) -> None:
    root = synthetic_bundle(tmp_path / "b")
    document = json.loads((root / "manifest.json").read_text())
    document[key] = value
    (root / "manifest.json").write_text(json.dumps(document))
    with pytest.raises(BundleError, match=f"manifest.json, key '{key}'.*{problem}"):
        open_bundle(root)


def test_an_unreadable_trusted_key_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made = generate_keys(tmp_path / "k")
    real_read = Path.read_bytes

    def denied(self: Path) -> bytes:
        if self == made.public_key:
            raise PermissionError(13, "Permission denied")
        return real_read(self)

    monkeypatch.setattr(Path, "read_bytes", denied)  # root reads any file, so chmod 000 would prove nothing
    with pytest.raises(ConfigError, match=f"cannot read trusted key '{made.public_key}': Permission denied"):
        TrustPolicy.from_paths([made.public_key])
