"""`edge-sdk build` as an ordered list of stages over graphs held in memory.

Each stage is one module under ``edge_sdk.host.stages`` exposing ``STAGE``: it reads and extends the
:class:`BuildState` (the loaded model, the exported graph, the :class:`GraphSet` the bundle will ship)
and returns a manifest fragment. Nothing is written into the bundle before the last stage, which writes
every graph and the shared weights once; then the pipeline commits, hashing the files once. :func:`plan` is the
one place that says which stages a build runs; ``edge-sdk build --dry-run --json`` prints it.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_sdk.bundle import BundleWriter, Manifest
from edge_sdk.bundle.atomic import storage_errors
from edge_sdk.bundle.source_date import source_date_epoch
from edge_sdk.host.build_inputs import InputFile, manifest_record, shaping_versions
from edge_sdk.host.config import BuildConfig
from edge_sdk.host.graph_set import GraphSet
from edge_sdk.profiles import Profile
from edge_sdk.tasks.registry import task_spec
from edge_sdk.tasks.spec import TaskSpec

Progress = Callable[[str], None]
Fragment = dict[str, Any]   # manifest section -> values merged into it (a dict section) or the value itself


@dataclass
class BuildState:
    """What the stages share. Stages fill it in order; see each stage module for what it adds."""

    config: BuildConfig
    spec: TaskSpec
    profile: Profile
    scratch: Path                           # the exporters' and ONNX Runtime's own files; never shipped
    graphs: GraphSet = field(default_factory=GraphSet)
    loaded: Any = None                      # host.model_loading.LoadedModel
    base_rewrite: Any = None                # host.quantize.QuantizedBase of an int8-storage base
    exported: Any = None                    # host.export.ExportedGraph (its model in memory)
    input_names: list[str] = field(default_factory=list)
    export_batch: dict[str, np.ndarray] = field(default_factory=dict)
    validation_batch: dict[str, np.ndarray] = field(default_factory=dict)
    step_feeds: dict[str, np.ndarray] = field(default_factory=dict)   # validation batch + sample targets
    classes: int = 0                        # size of the outputs' class axis (labels or vocabulary)
    initial: dict[str, np.ndarray] = field(default_factory=dict)      # the initial adapter
    frozen_lora_a: dict[str, np.ndarray] = field(default_factory=dict)  # LoRA A of a --freeze-lora-a build
    ort_artifacts: dict[str, str] = field(default_factory=dict)       # artifact key -> file in ort_dir
    ship_ort_artifacts: bool = True         # False when the frozen graphs compute in int8 (no ORT gradients)

    @property
    def ort_dir(self) -> Path:
        return self.scratch / "ort-training"

    def perturbed_adapter(self) -> dict[str, np.ndarray]:
        """Non-zero adapter weights for checks: a zero-initialised LoRA B would hide a broken adapter path."""
        rng = np.random.default_rng(self.config.seed)
        return {name: (value + rng.normal(0.0, 0.05, value.shape)).astype(np.float32)
                for name, value in self.initial.items()}


@dataclass(frozen=True)
class Stage:
    name: str
    summary: str
    # (state, the bundle's writer, the manifest draft so far) -> this stage's manifest fragment
    run: Callable[[BuildState, BundleWriter, Fragment], Fragment]


def plan(config: BuildConfig) -> list[Stage]:
    """The stages a build of ``config`` runs, in order."""
    from edge_sdk.host.stages import (
        backend_check,
        check_export,
        export,
        generation,
        inference,
        int8_compute,
        int8_storage,
        load_model,
        portable_step,
        target_graph,
        training_artifacts,
        validation,
        write,
    )

    spec = task_spec(config.task)
    config, profile = config.for_profile()
    stages = [load_model.STAGE]
    if config.base == "int8-storage":
        stages.append(int8_storage.STAGE)
    stages += [export.STAGE, check_export.STAGE, training_artifacts.STAGE, portable_step.STAGE, inference.STAGE]
    if spec.generates:
        stages.append(generation.STAGE)
    stages += [validation.STAGE, backend_check.STAGE]
    if config.base == "int8-compute":
        stages.append(int8_compute.STAGE)
    stages.append(write.STAGE)
    if profile.has_target_graph:
        stages.append(target_graph.STAGE)  # reads the written bundle: the graph the device would merge into
    return stages


def merge_fragment(manifest: Fragment, fragment: Fragment) -> None:
    """Merge a stage's fragment into the manifest draft, dict sections key by key (recursively)."""
    for key, value in fragment.items():
        if isinstance(value, dict) and isinstance(manifest.get(key), dict):
            merge_fragment(manifest[key], value)
        else:
            manifest[key] = value


def run_build(config: BuildConfig, out: str | Path, overwrite: bool = False, progress: Progress | None = None,
              signer: Callable[[bytes], bytes] | None = None, *, inputs: list[InputFile]) -> Path:
    """Build a bundle for ``config`` at ``out`` (atomically: on failure nothing is left at ``out``); ``signer``
    makes the signature file from the manifest's bytes (see ``BundleWriter.commit``); ``inputs``: the files the
    build reads, hashed (``build_inputs.config_inputs``), recorded in the manifest.

    The bundle is a function of its inputs: no clock, host name or absolute path reaches it (``build.created``
    only from ``$SOURCE_DATE_EPOCH``), so the same inputs give the same bytes."""
    report = progress or (lambda _message: None)
    config.validate()
    config, profile = config.for_profile()
    epoch = source_date_epoch()
    stages = plan(config)
    # The writer checks the destination first, so a build that cannot be written fails before the work. A full
    # disk at any write (the exporter's, ONNX Runtime's, the staged files, the swap) is reported as such; the
    # writer has then removed its staging folder and left the previous bundle in place.
    with storage_errors(out), BundleWriter(out, overwrite=overwrite) as writer, tempfile.TemporaryDirectory(
            prefix=".edge-sdk-build.", dir=writer.staging.parent) as scratch:
        state = BuildState(config=config, spec=task_spec(config.task), profile=profile,
                           scratch=Path(scratch))
        draft: Fragment = {"build": {"stages": [stage.name for stage in stages], "inputs": manifest_record(inputs),
                                     "versions": shaping_versions()}}
        if epoch is not None:
            draft["build"]["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
        for stage in stages:
            report(stage.summary)
            merge_fragment(draft, stage.run(state, writer, draft))
        return writer.commit(Manifest(**draft), signer=signer)
