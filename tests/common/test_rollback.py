"""Rollback protection: a device with trusted keys refuses a signed bundle older than one it accepted for the
same bundle id; the record survives the process, is never lost by concurrent writers, and a damaged record is
an error, not a reset (docs/signed-bundles.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from signed_bundles import new_key, synthetic_bundle, trusting

from edge_sdk.bundle import open_bundle
from edge_sdk.bundle.rollback import accepted_versions_path, check_rollback, read_accepted_versions
from edge_sdk.bundle.signing import sign_bundle
from edge_sdk.errors import BundleTrustError

TESTS = Path(__file__).resolve().parents[1]


@pytest.fixture
def releases(tmp_path: Path) -> tuple:
    """Signed versions 1, 2 and 3 of bundle 'demo', and a policy trusting their key."""
    key, public = new_key(tmp_path / "keys")
    bundles = {}
    for version in (1, 2, 3):
        bundles[version] = synthetic_bundle(tmp_path / f"v{version}", version=version)
        sign_bundle(bundles[version], key)
    return bundles, trusting(public), public


def test_accept_v2_refuse_v1_accept_v2_again_and_v3(releases) -> None:
    bundles, policy, _ = releases
    open_bundle(bundles[2], trust=policy)
    with pytest.raises(BundleTrustError) as caught:
        open_bundle(bundles[1], trust=policy)
    message = str(caught.value)
    assert "'demo'" in message and "version 1" in message and "already accepted version 2" in message
    assert str(bundles[1]) in message and str(accepted_versions_path()) in message
    open_bundle(bundles[2], trust=policy)
    open_bundle(bundles[3], trust=policy)
    assert read_accepted_versions() == {"demo": 3}
    with pytest.raises(BundleTrustError, match="version 2, but this device already accepted version 3"):
        open_bundle(bundles[2], trust=policy)


def test_bundle_ids_are_independent(tmp_path: Path, releases) -> None:
    bundles, policy, _ = releases
    key, public = new_key(tmp_path / "other-keys")
    other = synthetic_bundle(tmp_path / "other", bundle_id="other", version=1)
    sign_bundle(other, key)
    open_bundle(bundles[3], trust=policy)
    open_bundle(other, trust=trusting(public))
    assert read_accepted_versions() == {"demo": 3, "other": 1}


def test_unsigned_or_unchecked_opens_record_nothing(releases) -> None:
    bundles, policy, _ = releases
    open_bundle(bundles[3])  # no policy: an unsigned version number proves nothing
    open_bundle(bundles[3], trust=policy.with_rollback("check"))
    open_bundle(bundles[3], trust=policy.with_rollback("off"))
    assert not accepted_versions_path().exists()
    open_bundle(bundles[1], trust=policy)
    assert read_accepted_versions() == {"demo": 1}


def test_the_record_survives_a_new_process(releases, monkeypatch: pytest.MonkeyPatch) -> None:
    bundles, policy, public = releases
    open_bundle(bundles[3], trust=policy)
    monkeypatch.setenv("EDGE_SDK_TRUSTED_KEYS", str(public))
    code = (f"import sys; sys.path.insert(0, {str(TESTS)!r})\n"
            "from edge_sdk.bundle import open_bundle\n"
            "from edge_sdk.errors import BundleTrustError\n"
            f"open_bundle({str(bundles[3])!r})\n"
            f"try:\n    open_bundle({str(bundles[2])!r})\nexcept BundleTrustError as exc:\n    print(exc)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "version 2, but this device already accepted version 3" in result.stdout


def test_concurrent_processes_lose_no_update(tmp_path: Path) -> None:
    """Four processes record 15 bundle ids each at the same time: all 60 are in the record afterwards."""
    code = ("import sys\nfrom edge_sdk.bundle.rollback import check_rollback\n"
            "for n in range(15):\n    check_rollback(f'{sys.argv[1]}-{n}', 1, 'b', record=True)\n")
    workers = [subprocess.Popen([sys.executable, "-c", code, f"w{worker}"]) for worker in range(4)]
    assert [worker.wait() for worker in workers] == [0, 0, 0, 0]
    assert read_accepted_versions() == {f"w{worker}-{n}": 1 for worker in range(4) for n in range(15)}


@pytest.mark.parametrize("damage", ["{not json", '{"format": 1}', '{"format": 9, "bundles": {}}',
                                    '{"format": 1, "bundles": {"demo": {"version": "3"}}}', "\udcff"])
def test_a_damaged_record_is_an_error_naming_it_and_the_fix(releases, damage: str) -> None:
    bundles, policy, _ = releases
    open_bundle(bundles[3], trust=policy)
    path = accepted_versions_path()
    path.write_bytes(damage.encode("utf-8", "surrogateescape"))
    with pytest.raises(BundleTrustError) as caught:
        open_bundle(bundles[1], trust=policy)
    message = str(caught.value)
    assert str(path) in message and "damaged" in message and "delete it" in message
    assert path.read_bytes() == damage.encode("utf-8", "surrogateescape")  # left for the user to inspect
    path.unlink()  # the documented reset: the device then accepts any signed version once more
    open_bundle(bundles[1], trust=policy)
    assert read_accepted_versions() == {"demo": 1}


def test_record_is_replaced_atomically_with_no_litter(releases) -> None:
    bundles, policy, _ = releases
    for version in (1, 2, 3):
        open_bundle(bundles[version], trust=policy)
    folder = accepted_versions_path().parent
    # Beside the record and its lock, only the verification stamps' folder (the opens above verified the bundles).
    assert sorted(path.name for path in folder.iterdir()) == [
        "accepted-versions.json", "accepted-versions.json.lock", "stamps"]
    assert not [path for path in folder.rglob("*") if path.suffix == ".tmp"]
    assert json.loads(accepted_versions_path().read_text()) == {"format": 1, "bundles": {"demo": {"version": 3}}}


def test_check_rollback_read_only_refuses_without_writing(releases) -> None:
    bundles, policy, _ = releases
    open_bundle(bundles[2], trust=policy)
    before = accepted_versions_path().read_bytes()
    with pytest.raises(BundleTrustError, match="version 1, but this device already accepted version 2"):
        check_rollback("demo", 1, "b", record=False)
    check_rollback("demo", 5, "b", record=False)
    assert accepted_versions_path().read_bytes() == before
