"""`edge-sdk fleet`: federated learning of one adapter over many devices on Flower — `simulate` (the whole
fleet on this machine), `serve` (a SuperLink and the ServerApp, for real fleets) and `join` (a device's SuperNode)."""

from __future__ import annotations

from pathlib import Path

import click

from edge_sdk.cli.fleet_deploy import join, serve
from edge_sdk.cli.fleet_options import load_fleet, print_summary, quiet_flower, training_options
from edge_sdk.cli.output import note


@click.group()
def fleet() -> None:
    """Federated learning of one shared adapter over many devices, on Flower; data never leaves a device."""


@fleet.command()
@click.argument("bundle", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--data", "pool", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="The labelled pool (JSON Lines or CSV) to split into simulated devices.")
@click.option("--devices", default=10, show_default=True, type=int, help="Simulated devices (virtual SuperNodes).")
@click.option("--alpha", type=float, help="Dirichlet label skew (0.1: most devices see one or two labels; large: "
                                          "near IID). Leave out to split uniformly.")
@click.option("--backend", type=click.Choice(["auto", "ort-training", "portable"]), default="auto",
              show_default=True, help="The devices' training backend.")
@click.option("--cpus-per-device", default=1.0, show_default=True, type=float,
              help="CPU cores Ray gives each simulated device (how many train at once).")
@click.option("--keep-device-updates", is_flag=True,
              help="Also write what each device sent every round (rounds/round-NNN/devices/), to audit the average.")
@training_options
def simulate(bundle: Path, pool: Path, devices: int, alpha: float | None, backend: str, cpus_per_device: float,
             keep_device_updates: bool, method: str, rounds: int, local_epochs: int, learning_rate: float,
             batch_size: int, seed: int, dp_noise: float | None, clip: float | None, test: Path | None, out: Path,
             as_json: bool, verbose: bool) -> None:
    """Simulate a fleet on this machine: split --data into label-skewed devices, each with its own test split, and
    run --rounds federated rounds with Flower's simulation engine (Ray)."""
    load_fleet(simulation=True)
    quiet_flower(verbose)
    from edge_sdk.fleet.server import FleetSettings
    from edge_sdk.fleet.simulate import simulate as run

    settings = FleetSettings(bundle=bundle, out=out, test=test, rounds=rounds, method=method,
                             local_epochs=local_epochs, learning_rate=learning_rate, batch_size=batch_size, seed=seed,
                             min_nodes=devices, dp_noise=dp_noise, clip=clip, keep_device_updates=keep_device_updates)
    note(f"edge-sdk fleet simulate: {devices} devices, {rounds} round{'s' if rounds != 1 else ''}, method {method}"
         + (f", alpha {alpha}" if alpha is not None else ", uniform split"))
    print_summary(run(settings, pool, devices, alpha, backend=backend, cpus_per_device=cpus_per_device), as_json)



fleet.add_command(serve)
fleet.add_command(join)
