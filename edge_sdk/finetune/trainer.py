"""`edge-sdk finetune`: train a PEFT adapter on the host with the device's task plugins, in one process or
under torchrun with a distributed strategy, and write it as a PEFT adapter folder.

Every rank runs this same function. The global batch is cut into equal contiguous parts, one per rank; the
engine averages the gradients, so the adapter is the same (up to float summation order) for any number of
processes. Each epoch's incomplete last batch is left out (a different remainder each epoch: the order is
shuffled by seed and epoch), because every rank must take part in every step.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge_sdk.device.personalize import learning_rate_at
from edge_sdk.errors import ConfigError, DataError
from edge_sdk.finetune.checkpoints import CheckpointFolder
from edge_sdk.finetune.host_task import HostTask, TaskModule
from edge_sdk.finetune.losses import check_loss, task_loss
from edge_sdk.finetune.report import (
    CostMeter,
    local_parameter_bytes,
    parameter_counts,
    peak_memory_mib,
    release_freed_memory,
    reset_peak_memory,
)
from edge_sdk.finetune.settings import FinetuneSettings
from edge_sdk.finetune.strategies import OptimizerSettings, StrategyOptions, make_strategy
from edge_sdk.finetune.strategies.base import compute_device
from edge_sdk.host.config import BuildConfig
from edge_sdk.tasks.base import TaskData
from edge_sdk.tasks.registry import task_spec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepUpdate:
    step: int
    total_steps: int
    epoch: int
    loss: float
    learning_rate: float


@dataclass
class FinetuneResult:
    adapter: Path | None                 # the adapter folder (written by the main rank)
    history: list[dict[str, Any]]        # per epoch: train loss and the eval metrics (epoch 0: before training)
    losses: list[float]                  # per step, averaged over ranks
    report: dict[str, Any]               # memory and cost
    settings: dict[str, Any]
    resumed_from_step: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"adapter": str(self.adapter) if self.adapter else None, "history": self.history,
                "losses": self.losses, "report": self.report, "settings": self.settings,
                "resumed_from_step": self.resumed_from_step}


def _sha256(path: Path) -> str:
    from edge_sdk.bundle.verification import sha256_file

    return sha256_file(Path(path))


def _identity(config: BuildConfig, settings: FinetuneSettings, data: Path, eval_data: Path | None,
              world_size: int) -> dict[str, Any]:
    """What a checkpoint must match to be resumed (checkpoint frequency may change)."""
    run = settings.to_dict()
    run.pop("checkpoint_every")
    return {"model": config.model_dir.name, "gguf_file": config.gguf_file, "task": config.task,
            "labels": list(config.labels), "max_length": config.max_length, "lora": config.lora.__dict__ | {
                "target_modules": list(config.lora.target_modules) if config.lora.target_modules else None},
            "settings": run, "data_sha256": _sha256(data),
            "eval_data_sha256": _sha256(eval_data) if eval_data is not None else None, "world_size": world_size}


def run_finetune(config: BuildConfig, settings: FinetuneSettings, data: Path, out: Path,
                 eval_data: Path | None = None, resume: bool = False, overwrite: bool = False,
                 on_step: Callable[[StepUpdate], None] | None = None,
                 on_epoch: Callable[[dict[str, Any]], None] | None = None,
                 progress: Callable[[str], None] | None = None,
                 on_checkpoint: Callable[[int], None] | None = None) -> FinetuneResult:
    """Fine-tune ``config``'s model on ``data`` and write the adapter folder ``out`` (on the main rank)."""
    settings.validate()
    config.validate()
    if settings.quantized_base is not None:
        from edge_sdk.finetune.quantized_base import check_quantized_base_supported

        check_quantized_base_supported(settings.quantized_base)   # before any model is loaded
    spec = task_spec(config.task)
    check_loss(spec.host.loss(max(len(config.labels), 1)))
    out = Path(out)
    say = progress or (lambda _message: None)
    strategy = make_strategy(settings.strategy, StrategyOptions(precision=settings.precision,
                                                                offload_optimizer=settings.offload_optimizer,
                                                                seed=settings.seed))
    strategy.setup()
    try:
        if out.exists() and not overwrite and not resume:   # on every rank: none may go on alone
            raise ConfigError(f"{str(out)!r} already exists; choose another --out or pass --overwrite")
        if settings.batch_size % strategy.world_size:
            raise ConfigError(f"--batch-size {settings.batch_size} is the global batch; it must divide evenly among "
                              f"{strategy.world_size} processes")
        return _run(config, settings, spec, data, out, eval_data, resume, overwrite, strategy, on_step, on_epoch, say,
                    on_checkpoint)
    finally:
        strategy.close()


def _load_model(config: BuildConfig, settings: FinetuneSettings):
    """The PEFT model, its base quantized first with ``--base int8|4bit`` (PEFT then wraps the quantized layers)."""
    from edge_sdk.host.model_loading import load_for_task

    if settings.quantized_base is None:
        return load_for_task(config), None
    from edge_sdk.finetune.quantized_base import DEFAULT_SKIP, quantize_frozen_base

    reports = []
    # Modules PEFT trains whole (a new head) stay float, as the task heads do.
    loaded = load_for_task(config, before_peft=lambda model, train_whole: reports.append(
        quantize_frozen_base(model, settings.quantized_base, skip=(*DEFAULT_SKIP, *train_whole))))
    return loaded, reports[0]


def _run(config, settings, spec, data, out, eval_data, resume, overwrite, strategy, on_step, on_epoch, say,
         on_checkpoint):
    torch.manual_seed(settings.seed)
    say(f"loading {config.model_dir} for {config.task} ({settings.strategy}, {strategy.world_size} "
        f"process{'es' if strategy.world_size > 1 else ''})")
    loaded, quantized = _load_model(config, settings)
    host = HostTask(config, spec, loaded)
    try:
        train = host.load(data)
        evaluation = host.load(eval_data) if eval_data is not None else None
        steps_per_epoch = len(train) // settings.batch_size
        if steps_per_epoch == 0:
            raise DataError(f"{data}: {len(train)} examples are fewer than one global batch of {settings.batch_size}; "
                            "lower --batch-size or add examples")
        module = TaskModule(loaded.model, spec.host.outputs)
        trainable = [name for name, p in module.named_parameters() if p.requires_grad]
        trainable_count, total_count, stored_bytes = parameter_counts(loaded.model)
        head = loaded.model.get_output_embeddings()
        # The outputs' class axis: the user's labels, or a language model's vocabulary (as the build's loss). Read
        # before the engine wraps the model: ZeRO-3 leaves each rank an empty placeholder of a partitioned weight.
        classes = len(config.labels) if spec.uses_labels else int(head.weight.shape[0]) if head is not None else 0
        loss_graph = spec.host.loss(classes)
        forward = strategy.wrap(module, OptimizerSettings(learning_rate=settings.learning_rate,
                                                          weight_decay=settings.weight_decay,
                                                          max_grad_norm=settings.max_grad_norm), trainable)
        device = compute_device()
        checkpoints = CheckpointFolder(out)
        identity = _identity(config, settings, data, eval_data, strategy.world_size)
        total_steps = steps_per_epoch * settings.epochs
        history: list[dict[str, Any]] = []
        losses: list[float] = []
        start_step = 0
        if resume:
            saved = checkpoints.load(strategy, identity)
            start_step, history, losses = saved["step"], saved["history"], saved["losses"]
            say(f"resumed at step {start_step} of {total_steps} from {checkpoints.newest()}")
        elif evaluation is not None:
            history.append({"epoch": 0, "train_loss": None} | _evaluate(forward, host, evaluation, settings, strategy))
            if on_epoch:
                on_epoch(history[-1])

        def save_checkpoint(step: int) -> None:
            checkpoints.save(strategy, step, {"step": step, "history": history, "losses": losses,
                                              "identity": identity})
            if on_checkpoint:
                on_checkpoint(step)

        local_bytes = local_parameter_bytes(module)
        release_freed_memory()
        reset_peak_memory()
        meter = CostMeter()
        rows_per_rank = settings.batch_size // strategy.world_size
        first = strategy.rank * rows_per_rank
        epoch_losses: list[float] = []
        order_epoch, order = None, None
        for step in range(start_step, total_steps):
            epoch, within = divmod(step, steps_per_epoch)
            if epoch != order_epoch:   # one shuffle per epoch (a resumed run redraws its epoch's)
                order_epoch, order = epoch, np.random.default_rng([settings.seed, epoch]).permutation(len(train))
            rows = order[within * settings.batch_size:(within + 1) * settings.batch_size][first:first + rows_per_rank]
            batch = host.batch(train, rows, device)
            rate = learning_rate_at(step, total_steps, settings.learning_rate, settings.warmup_fraction)
            strategy.set_learning_rate(rate)
            started = time.perf_counter()
            with strategy.autocast():
                outputs = forward(**host.graph_inputs(batch))
            values = dict(zip(spec.host.outputs, outputs, strict=True)) | batch
            loss, terms = task_loss(loss_graph, values)
            # Engines average gradients over ranks; weighing each rank's mean by its share of the batch's loss
            # terms makes that average the gradient of the whole batch's mean (ranks' token counts differ).
            # A rank whose rows carry no loss term (every target ignored) has a 0/0 mean: it adds zero instead.
            own = float(loss.detach()) if terms else 0.0
            all_terms, weighted = strategy.all_reduce_sum([terms, terms * own])
            scaled = loss * (terms * strategy.world_size / max(all_terms, 1)) if terms else outputs[0].sum() * 0.0
            strategy.backward_step(scaled)
            meter.add(time.perf_counter() - started, int(batch["attention_mask"].sum()))  # syncs a GPU: honest time
            mean_loss = weighted / max(all_terms, 1)
            if not math.isfinite(mean_loss):
                raise ConfigError(f"the loss became {mean_loss} at step {step + 1}; lower --learning-rate "
                                  f"(now {settings.learning_rate}) or use --precision fp32")
            losses.append(mean_loss)
            epoch_losses.append(mean_loss)
            if on_step:
                on_step(StepUpdate(step + 1, total_steps, epoch + 1, mean_loss, rate))
            epoch_done = within == steps_per_epoch - 1
            if epoch_done:
                record = {"epoch": epoch + 1, "train_loss": float(np.mean(epoch_losses))}
                epoch_losses = []
                if evaluation is not None:
                    record |= _evaluate(forward, host, evaluation, settings, strategy)
                history.append(record)
                if on_epoch:
                    on_epoch(record)
            if epoch_done or (settings.checkpoint_every and (step + 1) % settings.checkpoint_every == 0):
                save_checkpoint(step + 1)
        report = _report(strategy, meter, trainable_count, total_count, stored_bytes, quantized, settings)
        report["parameter_bytes_per_rank"] = [int(value) for value in strategy.gather_object(local_bytes)]
        state = strategy.trainable_state()
        result = FinetuneResult(None, history, losses, report, settings.to_dict(), resumed_from_step=start_step or None)
        if strategy.is_main:
            from edge_sdk.finetune.output import write_adapter

            result.adapter = write_adapter(out, loaded.model, state, result, metric=host.task.metric,
                                           overwrite=overwrite or resume)
            say(f"wrote {result.adapter}")
        strategy.barrier()
        return result
    finally:
        host.close()


def _report(strategy, meter: CostMeter, trainable: int, total: int, stored: int, quantized,
            settings: FinetuneSettings) -> dict[str, Any]:
    mine = meter.summary() | {"peak_memory_mib": peak_memory_mib(), "tokens": sum(meter.tokens)}
    ranks = strategy.gather_object(mine)
    times = [rank["step_seconds"] for rank in ranks if rank["step_seconds"] is not None]
    step_seconds = max(times) if times else None   # a step ends when the slowest rank ends it
    steps = max(len(meter.step_seconds), 1)
    tokens_per_step = sum(rank["tokens"] for rank in ranks) / steps
    return {
        "strategy": settings.strategy, "processes": strategy.world_size, "precision": settings.precision,
        "quantized_base": None if quantized is None else {
            "library": quantized.library, "version": quantized.version, "mode": quantized.mode,
            "layers": len(quantized.layers), "layer_bytes_before": quantized.layer_bytes_before,
            "layer_bytes_after": quantized.layer_bytes_after},
        "peak_memory_mib_per_rank": [round(rank["peak_memory_mib"], 1) for rank in ranks],
        "step_seconds": step_seconds,
        "tokens_per_second": tokens_per_step / step_seconds if step_seconds else None,
        "trained_tokens": int(sum(rank["tokens"] for rank in ranks)),   # this process's steps (not a resumed run's)
        "trainable_parameters": trainable, "total_parameters": total,
        "trainable_fraction": trainable / total if total else None, "parameter_bytes": stored,
    }


_PER_TOKEN = "sequence"


def _evaluate(forward, host: HostTask, data: TaskData, settings: FinetuneSettings, strategy) -> dict[str, float]:
    """The task's metrics over ``data``: batches dealt out to the ranks in turn, the reduced outputs gathered.
    Every rank runs the same number of forward passes (a sharded engine gathers weights in each), repeating
    its first batch where it has none left."""
    spec = host.spec
    per_token = spec.host.per_token
    order = np.argsort([len(ids) for ids, _ in data.encoded], kind="stable")   # similar lengths: little padding
    chunks = [order[i:i + settings.eval_batch_size] for i in range(0, len(order), settings.eval_batch_size)]
    rounds = -(-len(chunks) // strategy.world_size)
    mine: dict[int, Any] = {}
    left = host.tokenizer.left_padding
    with torch.no_grad():
        for turn in range(rounds):
            index = turn * strategy.world_size + strategy.rank
            rows = chunks[index] if index < len(chunks) else chunks[0]
            batch = host.batch(data, rows, compute_device())
            with strategy.autocast():
                outputs = forward(**host.graph_inputs(batch))
            if index >= len(chunks):
                continue
            arrays = {name: value.float().cpu().numpy() for name, value in zip(spec.host.outputs, outputs, strict=True)}
            width = batch["input_ids"].shape[1]
            for position, row in enumerate(rows):
                length = len(data.encoded[row][0])
                # Outputs along the target sequence (seq2seq) are cut by the task itself.
                span = slice(width - length, None) if left else slice(0, length)
                mine[int(row)] = host.task.reduce_output(data, int(row), {
                    name: value[position, span] if per_token and spec.host.sequence_axis == _PER_TOKEN
                    else value[position] for name, value in arrays.items()})
    reduced: dict[int, Any] = {}
    for part in strategy.gather_object(mine):
        reduced |= part
    scores = host.task.score(data, [reduced[row] for row in range(len(data))])
    return {key: float(value) for key, value in scores.items() if isinstance(value, (int, float))}
