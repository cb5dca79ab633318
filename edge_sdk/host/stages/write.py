"""Write the bundle: every graph and the shared weights once, the tokenizer, the initial adapter, the ORT
artifacts of a float-compute base, and the manifest; the files are hashed once, at commit."""

from __future__ import annotations

import os
from pathlib import Path

from safetensors.numpy import save_file

from edge_sdk.bundle import BundleWriter, Manifest
from edge_sdk.bundle.layout import BASE_WEIGHTS, INITIAL_ADAPTER, ORT_TRAINING_DIR, TOKENIZER_DIR
from edge_sdk.host.pipeline import BuildState, Fragment, Stage


def _run(state: BuildState, writer: BundleWriter, draft: Fragment) -> Path:
    state.graphs.write(writer.staging, BASE_WEIGHTS)
    state.loaded.tokenizer.save_pretrained(str(writer.folder(TOKENIZER_DIR)))
    save_file(state.initial, str(writer.path(INITIAL_ADAPTER)), metadata={"format": "edge-sdk-adapter"})
    if state.ship_ort_artifacts:
        folder = writer.folder(ORT_TRAINING_DIR)
        for name in state.ort_artifacts.values():
            os.replace(state.ort_dir / name, folder / name)  # the scratch folder sits beside the staging one
    return writer.commit(Manifest(**draft))


STAGE = Stage("write", "writing the bundle", _run)
