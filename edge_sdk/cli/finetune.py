"""`edge-sdk finetune`: train a PEFT adapter on the host (one process, or every rank under torchrun)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from edge_sdk.cli.output import emit_json, note, stderr_is_terminal
from edge_sdk.cli.sources import load_build_config, prepare_host_environment, target_module_list
from edge_sdk.errors import DependencyError
from edge_sdk.finetune.events import EventWriter
from edge_sdk.tasks.registry import TASKS

STRATEGY_HELP = ("single: this process; ddp: a replica per process; fsdp: PyTorch FSDP2 (parameters, gradients and "
                 "optimizer state sharded); zero2 / zero3: DeepSpeed ZeRO stage 2 (gradients and optimizer state "
                 "sharded) / 3 (parameters too). All but single run under torchrun: torchrun --nproc_per_node N -m "
                 "edge_sdk finetune ...")


def _is_main_rank() -> bool:
    return os.environ.get("RANK", "0") == "0"


@click.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--data", required=True, type=click.Path(path_type=Path),
              help="Training data in the task's format (JSONL, or CSV for classification), as on the device.")
@click.option("--eval-data", type=click.Path(path_type=Path),
              help="Evaluation data: the task's metrics before training and after every epoch.")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="The PEFT adapter folder to write (edge-sdk build --adapter-from reads it).")
@click.option("--task", help="The task (a recipe names its own): " + ", ".join(TASKS) + ".")
@click.option("--labels", help="Tasks with labels: comma-separated labels, or a file with one label per line.")
@click.option("--method", type=click.Choice(["lora", "dora"]), help="The adapter: lora (default) or dora.")
@click.option("--base", type=click.Choice(["int8", "4bit"]),
              help="Quantize the frozen base to int8 or 4-bit NF4 while the adapter trains in float (QLoRA); "
                   "default: a float32 base.")
@click.option("--rank", type=int, help="LoRA rank (default 8, or the recipe's).")
@click.option("--alpha", type=float, help="LoRA alpha (default 16, or the recipe's).")
@click.option("--target-modules", help="Comma-separated module names LoRA adapts (default: per architecture).")
@click.option("--max-length", type=int, help="Maximum tokens per example (default 128, or the recipe's).")
@click.option("--epochs", type=int, default=3, show_default=True)
@click.option("--batch-size", type=int, default=16, show_default=True,
              help="The global batch: with N processes each takes batch-size / N rows of it.")
@click.option("--learning-rate", "--lr", type=float, default=2e-4, show_default=True)
@click.option("--warmup", type=float, default=0.1, show_default=True, help="Warm-up fraction of the steps.")
@click.option("--weight-decay", type=float, default=0.01, show_default=True)
@click.option("--max-grad-norm", type=float, default=1.0, show_default=True,
              help="Clip the gradients' global norm (0: no clipping).")
@click.option("--seed", type=int, help="Seed of new weights and of the data order (default 0, or the recipe's).")
@click.option("--strategy", type=click.Choice(["single", "ddp", "fsdp", "zero2", "zero3"]), default="single",
              show_default=True, help=STRATEGY_HELP)
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
              help="bf16: mixed precision (autocast, or the engine's own bf16 for fsdp and zero).")
@click.option("--offload-optimizer", is_flag=True, help="zero2/zero3: keep the optimizer state in CPU memory "
                                                        "(ZeRO-Offload).")
@click.option("--checkpoint-every", type=int, default=50, show_default=True,
              help="Checkpoint every N steps into OUT.checkpoint/ (and at every epoch end; 0: epoch ends only).")
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint in OUT.checkpoint/ (same settings, "
                                             "data and number of processes).")
@click.option("--overwrite", is_flag=True, help="Replace an existing adapter folder at --out.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with the result.")
@click.option("--events", "events_path", type=click.Path(path_type=Path),
              help="Append progress as JSON Lines to this file (steps, epochs with metrics, checkpoints, messages), "
                   "for programs that follow the run.")
@click.option("--quiet", "-q", is_flag=True, help="No progress; only errors (and the --json result).")
def finetune(source: Path, data: Path, eval_data: Path | None, out: Path, task: str | None, labels: str | None,
             method: str | None, base: str | None, rank: int | None, alpha: float | None, target_modules: str | None,
             max_length: int | None, epochs: int, batch_size: int, learning_rate: float, warmup: float,
             weight_decay: float, max_grad_norm: float, seed: int | None, strategy: str, precision: str,
             offload_optimizer: bool, checkpoint_every: int, resume: bool, overwrite: bool, as_json: bool,
             events_path: Path | None, quiet: bool) -> None:
    """Fine-tune a PEFT adapter on the host from a model folder, a .gguf file or a recipe (models/*.toml).

    The same task plugins and data formats as the device; the adapter folder it writes becomes a bundle with
    `edge-sdk build SOURCE --adapter-from OUT`, which devices then personalize further."""
    prepare_host_environment()
    try:
        from edge_sdk.finetune.settings import FinetuneSettings
        from edge_sdk.finetune.trainer import run_finetune
    except ImportError as exc:
        raise DependencyError(f"`edge-sdk finetune` runs on the host and needs torch, transformers and peft "
                              f"({exc.name} is missing); install them with `pip install edge-sdk[host]`") from exc
    for path, flag in ((data, "--data"), (eval_data, "--eval-data")):
        if path is not None and not path.is_file():
            raise click.BadParameter(f"{str(path)!r} is not a file", param_hint=flag)
    config = load_build_config(source, task, labels, adapter=method, rank=rank, alpha=alpha,
                               target_modules=target_module_list(target_modules), max_length=max_length, seed=seed)
    settings = FinetuneSettings(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                                warmup_fraction=warmup, weight_decay=weight_decay,
                                max_grad_norm=max_grad_norm or None, seed=config.seed, strategy=strategy,
                                precision=precision, offload_optimizer=offload_optimizer, quantized_base=base,
                                checkpoint_every=checkpoint_every)
    talk = _is_main_rank() and not quiet and not as_json
    bar = _ProgressBar() if talk and stderr_is_terminal() else None
    events = EventWriter(events_path) if events_path is not None and _is_main_rank() else None

    def on_step(step) -> None:
        if bar:
            bar.update(step)
        if events:
            events.write("step", step=step.step, total_steps=step.total_steps, epoch=step.epoch, loss=step.loss,
                         learning_rate=step.learning_rate)

    def on_checkpoint(step: int) -> None:
        if events:
            events.write("checkpoint", step=step)

    def say(message: str) -> None:
        if talk:
            note(message)
        if events:
            events.write("message", message=message)

    def on_epoch(record: dict) -> None:
        if events:
            events.write("epoch", **record)
        if talk:
            scores = ", ".join(f"{key} {value:.4g}" for key, value in record.items()
                               if key != "epoch" and isinstance(value, float))
            note(f"epoch {record['epoch']}" + (f": {scores}" if scores else " (before training)"))

    try:
        result = run_finetune(config, settings, data, out, eval_data=eval_data, resume=resume, overwrite=overwrite,
                              on_step=on_step, on_epoch=on_epoch, progress=say, on_checkpoint=on_checkpoint)
    finally:
        if bar:
            bar.close()
        if events:
            events.close()
    if not _is_main_rank():
        return
    if as_json:
        emit_json(result.to_dict())
    elif not quiet:
        report = result.report
        memory = ", ".join(f"{value:.0f}" for value in report["peak_memory_mib_per_rank"])
        step = report["step_seconds"]
        note(f"{report['strategy']} x{report['processes']}: peak memory {memory} MiB per rank, "
             + (f"{step * 1000:.0f} ms per step, {report['tokens_per_second']:.0f} tokens/s, " if step else "")
             + f"{report['trainable_parameters']:,} of {report['total_parameters']:,} parameters trained")
        click.echo(str(result.adapter))


class _ProgressBar:
    """A step bar on stderr, made when the first step reports the total."""

    def __init__(self) -> None:
        self._bar = None

    def update(self, step) -> None:
        if self._bar is None:
            self._bar = click.progressbar(length=step.total_steps, label="training", file=click.get_text_stream(
                "stderr"), show_pos=True, item_show_func=lambda _: None)
            self._bar.__enter__()
            self._bar.update(step.step - 1)
        self._bar.label = f"epoch {step.epoch} loss {step.loss:.4f}"
        self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
