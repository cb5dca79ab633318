"""Fleet learning on Flower: many devices' adapters combined into a shared one without moving their data.

Flower (``flwr``, its Message API) is the engine: its simulation runtime on one machine, its deployment runtime
(SuperLink and SuperNodes) for real fleets, its FedAvg and differential-privacy strategy wrappers. This package adds
what is ours: the ClientApp around the torch-free device runtime (:mod:`edge_sdk.fleet.client`), the ServerApp with
held-out evaluation and per-round adapter files (:mod:`edge_sdk.fleet.server`), the choice of which LoRA weights
travel (:mod:`edge_sdk.fleet.methods`) and label-skewed partitions for simulations (:mod:`edge_sdk.fleet.partition`).

Flower's and Ray's usage telemetry is off unless the environment turns it on.
"""

from __future__ import annotations

import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Simulations use no GPU; this opts in to Ray's coming behaviour for num_gpus=0 (and silences its notice).
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
