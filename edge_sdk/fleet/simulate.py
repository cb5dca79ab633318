"""``edge-sdk fleet simulate``: a whole fleet on one machine with Flower's simulation runtime (Ray).

The pool is split into label-skewed devices (:mod:`edge_sdk.fleet.partition`); each virtual SuperNode runs the
same ClientApp a real device runs, on its own partition; the ServerApp is the one ``fleet serve`` runs.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from edge_sdk.device.runtime import DeviceBundle
from edge_sdk.errors import ConfigError, DependencyError
from edge_sdk.fleet.client import DeviceData, make_client_app
from edge_sdk.fleet.methods import fleet_method
from edge_sdk.fleet.partition import partition
from edge_sdk.fleet.server import SUMMARY, FleetSettings, make_server_app


class _RunSimulationNotice(logging.Filter):
    """Drops Flower 1.42's notice that ``run_simulation`` is deprecated: it is still the in-process simulation API of
    that release (its successor, ``flwr run`` against a SuperLink in simulation mode, needs a Flower App project and
    a server process), and the notice tells our users to change code they do not own."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "`run_simulation` function is deprecated" not in record.getMessage()


def simulate(settings: FleetSettings, pool: Path, devices: int, alpha: float | None, backend: str = "auto",
             cpus_per_device: float = 1.0, test_fraction: float = 0.2) -> dict[str, Any]:
    """Partition ``pool`` into ``devices`` devices and run ``settings`` on them; return the run's summary."""
    settings = replace(settings, min_nodes=devices)
    settings.validate()
    # Everything a device or the server would refuse is refused here, before Ray starts.
    method = fleet_method(settings.method)
    method.check(DeviceBundle.open(settings.bundle).manifest, f"bundle {settings.bundle}")
    try:
        from flwr.simulation import run_simulation
    except ImportError as exc:
        raise DependencyError("fleet simulations need Flower's simulation engine: pip install "
                              "'edge-sdk[fleet-sim]'") from exc
    parts = partition(pool, settings.out / "partitions", devices, alpha, seed=settings.seed,
                      test_fraction=test_fraction)
    bundle = Path(settings.bundle).resolve()
    located = [DeviceData(bundle, part.train.resolve(), part.test.resolve(), backend=backend,
                          threads=max(1, int(cpus_per_device))) for part in parts]

    def locate(context) -> DeviceData:
        return located[int(context.node_config["partition-id"])]

    summary_path = settings.out / SUMMARY
    summary_path.unlink(missing_ok=True)
    notice = _RunSimulationNotice()
    flower_log = logging.getLogger("flwr")
    flower_log.addFilter(notice)
    try:
        run_simulation(
            server_app=make_server_app(settings), client_app=make_client_app(locate), num_supernodes=devices,
            backend_config={"client_resources": {"num_cpus": cpus_per_device, "num_gpus": 0.0},
                            "init_args": {"num_cpus": max(1, os.cpu_count() or 1), "include_dashboard": False,
                                          "logging_level": logging.ERROR, "log_to_driver": False}},
        )
    finally:
        flower_log.removeFilter(notice)
    if not summary_path.is_file():
        raise ConfigError(f"the simulation ended without a summary ({summary_path}); its log above says why")
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    summary["partitions"] = [{"device": part.index, "train_examples": part.train_examples,
                              "test_examples": part.test_examples, "labels": part.labels} for part in parts]
    summary["alpha"] = alpha
    summary["devices"] = devices
    summary_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
