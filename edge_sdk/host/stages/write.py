"""Write the bundle's files: every graph and the shared weights once, the tokenizer, the initial adapter and
the ORT artifacts of a float-compute base (the pipeline then commits them with the manifest)."""

from __future__ import annotations

import os

from safetensors.numpy import save_file

from edge_sdk.bundle import BundleWriter
from edge_sdk.bundle.layout import (
    ADAPTERS_DIR,
    BASE_WEIGHTS,
    FROZEN_LORA_A,
    INITIAL_ADAPTER,
    ORT_TRAINING_DIR,
    TOKENIZER_DIR,
)
from edge_sdk.host.pipeline import BuildState, Fragment, Stage


def _run(state: BuildState, writer: BundleWriter, _draft) -> Fragment:
    state.graphs.write(writer.staging, BASE_WEIGHTS)
    state.loaded.tokenizer.save_pretrained(str(writer.folder(TOKENIZER_DIR)))
    save_file(state.initial, str(writer.path(INITIAL_ADAPTER)), metadata={"format": "edge-sdk-adapter"})
    if getattr(state, "frozen_lora_a", None):  # a build state without the field (older callers): none
        save_file(state.frozen_lora_a, str(writer.path(FROZEN_LORA_A)), metadata={"format": "edge-sdk-frozen-lora-a"})
    if state.ship_ort_artifacts:
        folder = writer.folder(ORT_TRAINING_DIR)
        for name in state.ort_artifacts.values():
            os.replace(state.ort_dir / name, folder / name)  # the scratch folder sits beside the staging one
    # The bundle holds exactly these files: a full check refuses any other, except where the device writes
    # (execution providers' compile caches under .cache/, the adapter store and its deployed graphs).
    return {"unlisted_files": "refuse", "writable_paths": [".cache/", f"{ADAPTERS_DIR}/"]}


STAGE = Stage("write", "writing the bundle", _run)
