"""Trains a tiny LoRA-wrapped BERT through the Strategy interface only; run by tests/host/test_finetune_strategies.py.

    python -m torch.distributed.run --nproc_per_node 2 tests/host/strategy_harness.py train --strategy fsdp --out DIR
    python -m torch.distributed.run --nproc_per_node 1 tests/host/strategy_harness.py mismatch \
        --strategy fsdp --checkpoint DIR/checkpoint --out DIR/mismatch.json
    python tests/host/strategy_harness.py train --strategy single --out DIR

``train`` runs STEPS steps straight, saving a checkpoint after STEPS // 2; then a fresh model and strategy load
that checkpoint and run the rest again (``--no-resume`` skips it). The main rank writes DIR/result.pt: the
losses, gradient norms, trainable names and the final trainable state of both runs. ``mismatch`` loads a
checkpoint written by another world size and records the error it raises.

Every rank builds the same seeded model and data; the global batch of 8 rows is cut into contiguous slices, one
per rank, so the mean of the per-rank mean losses is the loss of the whole batch as one process sees it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

GLOBAL_BATCH = 8
STEPS = 6


class Classifier(torch.nn.Module):
    """A seeded two-layer BERT with LoRA on query/value and a trained classifier head; forward returns a tuple."""

    def __init__(self) -> None:
        super().__init__()
        from peft import LoraConfig, get_peft_model
        from transformers import BertConfig, BertForSequenceClassification

        torch.manual_seed(0)
        config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=32, num_labels=3,
                            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["query", "value"],
                          modules_to_save=["classifier"])
        self.model = get_peft_model(BertForSequenceClassification(config), lora)

    def forward(self, **inputs: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.model(**inputs).logits,)


def batch(rank: int, world_size: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 100, (GLOBAL_BATCH, 12), generator=generator)
    labels = torch.randint(0, 3, (GLOBAL_BATCH,), generator=generator)
    rows = slice(rank * GLOBAL_BATCH // world_size, (rank + 1) * GLOBAL_BATCH // world_size)
    if torch.cuda.is_available():
        ids, labels = ids.cuda(), labels.cuda()
    return {"input_ids": ids[rows], "attention_mask": torch.ones_like(ids[rows])}, labels[rows]


def learning_rate(step: int) -> float:
    # A falling schedule, so a strategy that ignored set_learning_rate would drift from the others.
    return 1e-2 * (1 - step / (2 * STEPS))


def make(args: argparse.Namespace):
    from edge_sdk.finetune.strategies import OptimizerSettings, StrategyOptions, make_strategy

    strategy = make_strategy(args.strategy, StrategyOptions(precision=args.precision,
                                                            offload_optimizer=args.offload))
    strategy.setup()
    module = Classifier()
    trainable = [name for name, p in module.named_parameters() if p.requires_grad]
    settings = OptimizerSettings(learning_rate=learning_rate(0), max_grad_norm=args.max_grad_norm)
    return strategy, strategy.wrap(module, settings, trainable), trainable


def run_steps(strategy, forward, first: int, last: int) -> tuple[list[float], list[float | None]]:
    inputs, labels = batch(strategy.rank, strategy.world_size)
    losses, norms = [], []
    for step in range(first, last):
        strategy.set_learning_rate(learning_rate(step))
        with strategy.autocast():
            logits = forward(**inputs)[0]
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        norms.append(strategy.backward_step(loss))
        # The loss of the whole global batch: the mean over ranks of the per-rank means (equal slices).
        losses.append(strategy.all_reduce_sum([float(loss.detach())])[0] / strategy.world_size)
    return losses, norms


def train(args: argparse.Namespace) -> None:
    out = Path(args.out)
    checkpoint = out / "checkpoint"
    strategy, forward, trainable = make(args)
    if strategy.is_main:
        checkpoint.mkdir(parents=True, exist_ok=True)
    strategy.barrier()
    losses, norms = run_steps(strategy, forward, 0, STEPS // 2)
    strategy.save_checkpoint(checkpoint)
    more_losses, more_norms = run_steps(strategy, forward, STEPS // 2, STEPS)
    result = {"world_size": strategy.world_size, "trainable": trainable, "losses": losses + more_losses,
              "norms": norms + more_norms, "state": strategy.trainable_state()}
    if not args.no_resume:
        # A fresh model and strategy, as a relaunched run builds them, continue from the checkpoint.
        strategy, forward, _ = make(args)
        strategy.load_checkpoint(checkpoint)
        result["resumed_losses"], _ = run_steps(strategy, forward, STEPS // 2, STEPS)
        result["resumed_state"] = strategy.trainable_state()
    if strategy.is_main:
        torch.save(result, out / "result.pt")
    strategy.close()


def mismatch(args: argparse.Namespace) -> None:
    from edge_sdk.errors import ConfigError

    strategy, _, _ = make(args)
    try:
        strategy.load_checkpoint(Path(args.checkpoint))
        outcome = {"error": None}
    except ConfigError as error:
        outcome = {"error": str(error)}
    if strategy.is_main:
        Path(args.out).write_text(json.dumps(outcome))
    strategy.close()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["train", "mismatch"])
    parser.add_argument("--strategy", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--checkpoint")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--offload", action="store_true")
    parser.add_argument("--max-grad-norm", type=float, default=0.2)   # clips the first steps
    parser.add_argument("--no-resume", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)   # two ranks on two cores
    train(args) if args.mode == "train" else mismatch(args)


if __name__ == "__main__":
    from edge_sdk.finetune.rank_exit import exit_rank, started_by_torchrun

    main(sys.argv[1:])
    if started_by_torchrun():
        exit_rank(0)   # as `python -m edge_sdk` ends under torchrun (see rank_exit.py)
