"""The target graph of a profile with precision int8-qdq (fpga-vitisai): the initial adapter merged into the float
weights, static shapes and the profile's opset, static int8 QDQ calibrated on ``--calibration-data``, validated
against float32 on the CPU provider. Runs after ``write`` on the staged bundle, through the same code the device's
``adapters deploy`` runs (edge_sdk.targets), so the build's graph is what a deploy of the same adapter gives.

Writes ``targets/<profile>/``: model.onnx (+ its weights), calibration.safetensors (what ``adapters deploy``
reuses when given no data), coverage.json and the provider's config file (vaip_config.json)."""

from __future__ import annotations

import copy

from edge_sdk.bundle import BundleWriter, Manifest
from edge_sdk.host.pipeline import BuildState, Fragment, Stage


def _run(state: BuildState, writer: BundleWriter, draft: Fragment) -> Fragment:
    from edge_sdk.targets.graph import (
        CALIBRATION_FILE,
        COVERAGE_FILE,
        MODEL_FILE,
        PROVIDER_CONFIGS,
        build_target_graph,
        read_calibration,
        target_dir,
        write_target,
    )

    profile = state.profile
    bundle = writer.staged(Manifest(**copy.deepcopy(draft)))
    calibration = read_calibration(bundle, profile, state.config.calibration_data)
    target = build_target_graph(bundle, state.initial, profile, calibration)
    folder_name = target_dir(profile.name)
    folder = writer.folder(folder_name)
    write_target(folder, target, profile)
    calibration.save(folder / CALIBRATION_FILE)
    config = next((PROVIDER_CONFIGS[name] for name in (spec.name for spec in profile.providers)
                   if name in PROVIDER_CONFIGS), None)
    return {"target": {
        "profile": profile.name,
        "model": f"{folder_name}/{MODEL_FILE}",
        "precision": profile.precision,
        "static_shapes": target.static_shapes,
        "opset": target.opset,
        "quantization": target.quantization,
        # Without the CPU timings: a measurement of the build machine's moment would make every build's bytes differ.
        "validation": {key: value for key, value in target.validation.items() if key != "cpu_ms_per_example"},
        "coverage": f"{folder_name}/{COVERAGE_FILE}",
        "calibration": f"{folder_name}/{CALIBRATION_FILE}",
        "provider_config": f"{folder_name}/{config}" if config else None,
    }}


STAGE = Stage("target-graph", "building the accelerator's static int8 target graph", _run)
