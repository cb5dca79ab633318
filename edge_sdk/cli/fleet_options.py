"""What the `edge-sdk fleet` commands share: the extra check, Flower's log level, the training options and the
summary printing (simulate, serve and join each live in their own module)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from edge_sdk.cli.output import emit_json
from edge_sdk.errors import DependencyError

METHOD_NAMES = ("ffa", "fedit", "fedsa")


def load_fleet(simulation: bool = False):
    """Import the fleet package, naming the extra to install when Flower (or its simulation engine) is missing."""
    try:
        import edge_sdk.fleet.client  # noqa: F401
        import edge_sdk.fleet.server  # noqa: F401
        if simulation:
            import ray  # noqa: F401
    except ImportError as exc:
        extra = "fleet-sim" if simulation else "fleet"
        raise DependencyError(f"`edge-sdk fleet` needs the {extra} extra ({exc.name} is missing): "
                              f'pip install "edge-sdk[{extra}]"') from exc


def quiet_flower(verbose: bool) -> None:
    """Flower logs every message at INFO; keep its warnings and errors unless asked for everything."""
    if not verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)


def round_lines(summary: dict[str, Any]) -> list[str]:
    """One line per round: the global adapter's test metrics, the devices' own-test mean and worst, traffic."""
    lines = []
    for entry in summary["rounds"]:
        parts = [f"round {entry['round']:>3}"]
        scores = entry.get("global_test")
        if scores:
            parts.append("global " + " ".join(f"{key} {value:.4f}" for key, value in scores.items()
                                              if key != "examples"))
        own = entry.get("devices_own_test")
        if own:
            metric = next((key[:-5] for key in own if key.endswith("-mean") and key != "loss-mean"), "loss")
            parts.append(f"devices {metric} mean {own[metric + '-mean']:.4f} worst {own[metric + '-worst']:.4f}")
        if "train_loss" in entry:
            parts.append(f"train loss {entry['train_loss']:.4f}")
        if "bytes_up" in entry:
            parts.append(f"bytes down {entry['bytes_down']:,} up {entry['bytes_up']:,}")
        if entry.get("fedit_factoring_error") is not None:
            parts.append(f"fedit error {entry['fedit_factoring_error']:.3g}")
        if "epsilon" in entry:
            parts.append(f"ε {entry['epsilon']:.3g} (δ {entry['delta']:g})")
        if len(parts) > 1:  # round 0 without --test has nothing to say
            lines.append("  ".join(parts))
    return lines


def print_summary(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit_json(summary)
        return
    for line in round_lines(summary):
        click.echo(line)
    if summary.get("global_adapter"):
        click.echo(f"global adapter: {summary['global_adapter']} (adapter.safetensors, peft/)")


_METHOD = click.option("--method", type=click.Choice(METHOD_NAMES), default="ffa", show_default=True,
                       help="ffa: A frozen (bundle built with --freeze-lora-a), B and head averaged: exact. fedit: A "
                            "and B averaged separately (inexact baseline). fedsa: only A shared; B and head stay.")
_TRAINING = [
    click.option("--rounds", default=3, show_default=True, type=int, help="Federated rounds."),
    click.option("--local-epochs", default=1, show_default=True, type=int,
                 help="Epochs each device trains on its own data per round."),
    click.option("--learning-rate", default=2e-3, show_default=True, type=float),
    click.option("--batch-size", default=16, show_default=True, type=int),
    click.option("--seed", default=0, show_default=True, type=int),
    click.option("--dp-noise", type=float,
                 help="Differential privacy: the Gaussian noise multiplier (noise σ = multiplier × clip / devices), "
                      "added by the server to the mean of device updates clipped on the devices. Needs --clip."),
    click.option("--clip", type=float, help="Differential privacy: the L2 norm each device clips its update to."),
    click.option("--test", type=click.Path(path_type=Path, dir_okay=False),
                 help="Held-out labelled data the server scores every round's global adapter on."),
    click.option("--out", required=True, type=click.Path(path_type=Path, file_okay=False),
                 help="Folder for the rounds' adapters (safetensors and PEFT), the global adapter and summary.json."),
    click.option("--json", "as_json", is_flag=True, help="Print the run's summary as one JSON object."),
    click.option("--verbose", is_flag=True, help="Show Flower's own log."),
]


def training_options(command):
    for option in reversed(_TRAINING):
        command = option(command)
    return _METHOD(command)
