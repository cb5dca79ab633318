"""The ClientApp and ServerApp as Flower's deployment runtime loads them (``module:attribute`` in the Flower App's
pyproject): settings come from the SuperNode's node config and the run's config instead of Python arguments.

node config (``edge-sdk fleet join`` sets it): ``bundle``, ``data`` (training file), optional ``test`` (the
device's own test file), ``adapter`` (the store name the latest fleet adapter is kept under; "" keeps none) and
``backend``. run config (``edge-sdk fleet serve`` sets it): ``bundle``, ``out``, ``test``, ``rounds``, ``method``,
``local-epochs``, ``learning-rate``, ``batch-size``, ``seed``, ``min-nodes``, ``dp-noise``, ``clip``; an empty
string means "not set", and so does 0 for ``dp-noise`` and ``clip`` (a run config cannot hold None).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from edge_sdk.errors import ConfigError
from edge_sdk.fleet.client import DeviceData, make_client_app
from edge_sdk.fleet.server import FleetSettings, run_fleet

FLEET_ADAPTER = "fleet"


def _value(config: dict[str, Any], key: str, default: Any = None) -> Any:
    value = config.get(key, default)
    return default if value == "" else value


def _required(config: dict[str, Any], key: str, where: str) -> Any:
    value = _value(config, key)
    if value is None:
        raise ConfigError(f"the {where} has no {key!r}; set it (edge-sdk fleet join/serve set it for you)")
    return value


def device_data(context: Context) -> DeviceData:
    """Where this SuperNode's bundle and data are, from its node config."""
    config = dict(context.node_config)
    test = _value(config, "test")
    return DeviceData(bundle=Path(str(_required(config, "bundle", "node config"))).resolve(),
                      train=Path(str(_required(config, "data", "node config"))).resolve(),
                      test=Path(str(test)).resolve() if test else None,
                      backend=str(_value(config, "backend", "auto")),
                      adapter=str(_value(config, "adapter", FLEET_ADAPTER) or "") or None)


def fleet_settings(run_config: dict[str, Any]) -> FleetSettings:
    """The run's FleetSettings from its run config."""
    config = dict(run_config)
    test = _value(config, "test")
    noise, clip = _value(config, "dp-noise") or None, _value(config, "clip") or None
    return FleetSettings(
        bundle=Path(str(_required(config, "bundle", "run config"))),
        out=Path(str(_required(config, "out", "run config"))),
        test=Path(str(test)) if test else None, rounds=int(_value(config, "rounds", 3)),
        method=str(_value(config, "method", "ffa")), local_epochs=int(_value(config, "local-epochs", 1)),
        learning_rate=float(_value(config, "learning-rate", 2e-3)), batch_size=int(_value(config, "batch-size", 16)),
        seed=int(_value(config, "seed", 0)), min_nodes=int(_value(config, "min-nodes", 2)),
        dp_noise=float(noise) if noise is not None else None, clip=float(clip) if clip is not None else None)


client_app = make_client_app(device_data)
server_app = ServerApp()


@server_app.main()
def _main(grid: Grid, context: Context) -> None:
    run_fleet(grid, fleet_settings(context.run_config))
