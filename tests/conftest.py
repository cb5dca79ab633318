"""Shared fixtures. Device tests get bundles built by the host (tests/make_fixtures.py): from
EDGE_SDK_FIXTURES when set (the torch-free device environment), otherwise built once per session."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))


@pytest.fixture(scope="session")
def fixtures_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    prebuilt = os.environ.get("EDGE_SDK_FIXTURES")
    if prebuilt:
        path = Path(prebuilt)
        if not (path / "tiny-seq-cls" / "manifest.json").is_file():
            pytest.fail(
                f"EDGE_SDK_FIXTURES={prebuilt} holds no fixtures; run `python tests/make_fixtures.py {prebuilt}`"
            )
        return path
    try:
        import torch  # noqa: F401
    except ImportError:
        pytest.fail("no torch here and EDGE_SDK_FIXTURES is not set: build fixtures on the host first (make test)")
    from make_fixtures import make_fixtures

    return make_fixtures(tmp_path_factory.mktemp("fixtures"))


@pytest.fixture
def tiny_bundle(fixtures_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny text-classification bundle (tests may write adapters or tamper)."""
    return Path(shutil.copytree(fixtures_dir / "tiny-seq-cls", tmp_path / "bundle"))


@pytest.fixture
def tiny_ffa_bundle(fixtures_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny text-classification bundle built with --freeze-lora-a (LoRA A frozen)."""
    return Path(shutil.copytree(fixtures_dir / "tiny-ffa", tmp_path / "ffa-bundle"))


@pytest.fixture
def tiny_data(fixtures_dir: Path) -> Path:
    return fixtures_dir / "data"


@pytest.fixture(autouse=True)
def private_device_state(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own device state folder (verification stamps, accepted versions) and no trusted
    keys from the environment, so no test reads or writes the user's real state."""
    state = tmp_path_factory.mktemp("device-state")
    monkeypatch.setenv("EDGE_SDK_STATE_DIR", str(state))
    monkeypatch.delenv("EDGE_SDK_TRUSTED_KEYS", raising=False)
    # Builds through the CLI use the build cache: each test its own, so no test is served another's bundle.
    monkeypatch.setenv("EDGE_SDK_CACHE_DIR", str(tmp_path_factory.mktemp("build-cache")))
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    return state
