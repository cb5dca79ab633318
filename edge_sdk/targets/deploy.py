"""``edge-sdk adapters deploy``: a personalized adapter onto the accelerator. Training stays on the CPU (the
bundle's float graphs are unchanged); the adapter is merged into the float weights and the merged graph is
quantized to the profile's static int8 QDQ target graph, validated against float32 on the CPU, and written to
``adapters/<name>.<profile>/`` with ``deploy.json`` (the adapter's sha256, the profile, the figures) and
``coverage.json``: all at once (staged, then renamed), under the adapter store's lock.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_sdk.bundle.store import Bundle, sha256_file
from edge_sdk.errors import AdapterError, ConfigError

DEPLOY_FILE = "deploy.json"


def deployed_dir(adapter: str, profile_name: str) -> str:
    """The deployed graph's folder inside the adapters folder."""
    return f"{adapter}.{profile_name}"


@dataclass
class DeployResult:
    adapter: str
    profile: str
    folder: Path
    adapter_sha256: str
    validation: dict[str, Any]
    quantization: dict[str, Any]
    coverage: dict[str, Any]
    bytes: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"adapter": self.adapter, "profile": self.profile, "folder": str(self.folder),
                "adapter_sha256": self.adapter_sha256, "validation": self.validation,
                "quantization": self.quantization, "coverage": self.coverage, "bytes": self.bytes}


def bundle_calibration(bundle: Bundle, profile_name: str):
    """The calibration inputs the build stored for ``profile_name`` (None when it stored none)."""
    from edge_sdk.targets.graph import Calibration

    target = bundle.manifest.target_spec
    if target is None or target.profile != profile_name or not target.calibration:
        return None
    return Calibration.load(bundle.path(target.calibration))


def deploy(bundle: Bundle, adapter: str, profile, calibration_data: str | os.PathLike | None = None,
           wait: float | None = 0.0) -> DeployResult:
    """Write ``adapter``'s target graph for ``profile`` (a Profile or a name/path ``load_profile`` reads)."""
    from edge_sdk.bundle.atomic import atomic_folder, default_permissions
    from edge_sdk.device.adapters import INITIAL, AdapterStore
    from edge_sdk.profiles import Profile, load_profile
    from edge_sdk.targets.graph import build_target_graph, read_calibration, write_target
    from edge_sdk.targets.static import check_static_task

    if not isinstance(profile, Profile):
        profile = load_profile(profile)
    if not profile.has_target_graph:
        raise ConfigError(f"profile {profile.name!r} (precision {profile.precision}) has no target graph to deploy "
                          "to; deploy is for profiles with precision = \"int8-qdq\" (e.g. fpga-vitisai)")
    check_static_task(bundle.manifest.task, profile)
    if bundle.manifest.compute_precision != "fp32":
        raise AdapterError(f"bundle {str(bundle.root)!r} was built with --base {bundle.manifest.base}: it holds only "
                           "int8 copies of its frozen layers, so there are no float weights to merge the adapter into; "
                           "build the bundle with --base float32 or int8-storage")
    store = AdapterStore(bundle)
    if adapter == INITIAL:
        raise AdapterError(f"{INITIAL!r} is deployed by the build (targets/{profile.name}/); deploy a personalized "
                           "adapter")
    info = store.info(adapter)            # unknown adapter: AdapterError naming the ones there are
    if calibration_data is not None:
        calibration = read_calibration(bundle, profile, calibration_data)
    else:
        calibration = bundle_calibration(bundle, profile.name)
        if calibration is None:
            raise ConfigError(f"bundle {str(bundle.root)!r} holds no calibration inputs for profile {profile.name!r}; "
                              "pass --calibration-data FILE (task data in JSONL or CSV)")
    with store.writing(wait):
        sha256 = sha256_file(info.path)
        weights = store.load(adapter)
        target = build_target_graph(bundle, weights, profile, calibration)
        destination = store.folder / deployed_dir(adapter, profile.name)
        with atomic_folder(destination, overwrite=True) as staging:
            written = write_target(staging, target, profile)
            record = {"adapter": adapter, "adapter_sha256": sha256, "profile": profile.to_dict(),
                      "base_id": store.base_id, "precision": profile.precision,
                      "static_shapes": target.static_shapes, "opset": target.opset,
                      "quantization": target.quantization, "validation": target.validation,
                      "files": written["bytes"],
                      # What the runtime checks before it runs the graph: the folder is writable by design.
                      "sha256": {name: sha256_file(staging / name) for name in written["files"]}}
            (staging / DEPLOY_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
            for path in staging.iterdir():  # onnx writes its weights file private (0600), like mkstemp
                default_permissions(path)
    return DeployResult(adapter=adapter, profile=profile.name, folder=destination, adapter_sha256=sha256,
                        validation=target.validation, quantization=target.quantization,
                        coverage=written["coverage"], bytes=written["bytes"])
