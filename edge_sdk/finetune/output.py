"""The run's result on disk: a PEFT adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``, what
``PeftModel.from_pretrained`` and ``edge-sdk build --adapter-from`` read) with the run's record beside the adapter
files: ``run.json`` (settings, per-epoch metrics, memory and cost), ``metrics.csv`` (per step) and
``training.png`` (loss and metric curves). Written atomically: a failed run leaves no half-written folder."""

from __future__ import annotations

import copy
import csv
import json
import logging
from pathlib import Path
from typing import Any

import torch
from peft import get_peft_model_state_dict
from safetensors.torch import save_file

from edge_sdk.bundle.atomic import atomic_folder
from edge_sdk.device.peft_format import ADAPTER_NAME, WEIGHTS_FILE

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
METRICS_FILE = "metrics.csv"
PLOT_FILE = "training.png"
_WRAPPER_PREFIX = "model."   # TaskModule holds the PEFT model as .model


def write_adapter(out: Path, peft_model: torch.nn.Module, state: dict[str, torch.Tensor], result,
                  metric: str, overwrite: bool = False) -> Path:
    """Write the gathered trainable ``state`` (names as TaskModule's parameters) as a PEFT adapter at ``out``."""
    named = {name.removeprefix(_WRAPPER_PREFIX): value.detach().float().cpu().contiguous()
             for name, value in state.items()}
    weights = get_peft_model_state_dict(peft_model, state_dict=named, adapter_name=ADAPTER_NAME)
    config = copy.deepcopy(peft_model.peft_config[ADAPTER_NAME])
    config.inference_mode = True
    with atomic_folder(out, overwrite=overwrite) as folder:
        save_file({key: value.contiguous() for key, value in weights.items()}, str(folder / WEIGHTS_FILE),
                  metadata={"format": "pt"})
        config.save_pretrained(str(folder))
        record = result.to_dict() | {"adapter": str(out), "metric": metric}
        (folder / RUN_FILE).write_text(json.dumps(record, indent=1) + "\n")
        _write_metrics(folder / METRICS_FILE, result.losses, result.history)
        _plot(folder / PLOT_FILE, result.losses, result.history, metric)
    return out


def _write_metrics(path: Path, losses: list[float], history: list[dict[str, Any]]) -> None:
    """One row per step (its training loss) and one per evaluated epoch end (its metrics)."""
    keys = sorted({key for record in history for key in record} - {"epoch", "train_loss"})
    with path.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["step", "epoch", "train_loss", *keys])
        steps_per_epoch = len(losses) // max(1, sum(1 for r in history if r["epoch"] > 0)) or 1
        for step, loss in enumerate(losses, start=1):
            writer.writerow([step, (step - 1) // steps_per_epoch + 1, f"{loss:.6g}", *[""] * len(keys)])
        for record in history:
            writer.writerow([record["epoch"] * steps_per_epoch, record["epoch"], "",
                             *[_cell(record.get(key)) for key in keys]])


def _cell(value: Any) -> str:
    return "" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)


def _plot(path: Path, losses: list[float], history: list[dict[str, Any]], metric: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")   # no display on build servers
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no %s (pip install matplotlib)", PLOT_FILE)
        return
    evaluated = [record for record in history if metric in record]
    figure, axes = plt.subplots(1, 2 if evaluated else 1, figsize=(10 if evaluated else 5, 3.5), squeeze=False)
    axes[0][0].plot(range(1, len(losses) + 1), losses, linewidth=1)
    axes[0][0].set(xlabel="step", ylabel="training loss", title="training loss")
    if evaluated:
        axes[0][1].plot([r["epoch"] for r in evaluated], [r[metric] for r in evaluated], marker="o")
        axes[0][1].set(xlabel="epoch (0: before training)", ylabel=metric, title=f"evaluation {metric}")
    figure.tight_layout()
    figure.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(figure)
