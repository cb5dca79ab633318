"""A build writes the file policy into its manifest: unlisted files are refused, except where a device writes
(execution providers' compile caches under .cache/, the adapter store)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from edge_sdk.bundle import BundleWriter
from edge_sdk.host.stages.write import STAGE


def test_the_write_stage_sets_the_file_policy(tmp_path: Path) -> None:
    state = SimpleNamespace(graphs=SimpleNamespace(write=lambda folder, weights: None),
                            loaded=SimpleNamespace(tokenizer=SimpleNamespace(save_pretrained=lambda folder: None)),
                            initial={}, ship_ort_artifacts=False)
    with BundleWriter(tmp_path / "bundle") as writer:
        fragment = STAGE.run(state, writer, {})
    assert fragment == {"unlisted_files": "refuse", "writable_paths": [".cache/", "adapters/"]}
