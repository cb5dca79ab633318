"""The sharded training strategies (FSDP2, DeepSpeed ZeRO-2/3) against one process.

tests/host/strategy_harness.py trains a seeded LoRA BERT for six steps through the Strategy interface only;
each sharded strategy runs it under torchrun with two ranks on gloo (half the global batch each) and must
reach the adapter one process reaches on the whole batch, resume its mid-run checkpoint into the same end,
and refuse a checkpoint written by another world size. Launches are shared between tests (one per strategy).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from strategy_harness import STEPS, Classifier
from strategy_harness import train as train_in_process

from edge_sdk.errors import ConfigError, DependencyError
from edge_sdk.finetune.strategies import OptimizerSettings, StrategyOptions, make_strategy
from edge_sdk.finetune.strategies.sharded import check_world_size, transformer_blocks, write_world_size

REPO = Path(__file__).resolve().parents[2]
HARNESS = Path(__file__).resolve().parent / "strategy_harness.py"
needs_deepspeed = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                     reason='DeepSpeed is not installed (pip install "edge-sdk[distributed]")')
SHARDED = [pytest.param("fsdp"), pytest.param("zero2", marks=needs_deepspeed),
           pytest.param("zero3", marks=needs_deepspeed)]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(nproc: int, *args: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_port", str(free_port()), str(HARNESS), *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"


class Runs:
    """Harness results by name, each launched once per session when a test first asks for it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.results: dict[str, dict] = {}

    def get(self, name: str, *args: str, nproc: int = 2) -> dict:
        if name not in self.results:
            out = self.root / name
            if name == "single":
                train_in_process(argparse.Namespace(strategy="single", out=str(out), precision="fp32",
                                                    offload=False, max_grad_norm=0.2, no_resume=False))
            else:
                launch(nproc, "train", "--out", str(out), *args)
            self.results[name] = torch.load(out / "result.pt", weights_only=False)
        return self.results[name]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    return Runs(tmp_path_factory.mktemp("strategies"))


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[name] - b[name]).abs().max()) for name in a)


def assert_trained(result: dict) -> None:
    losses = result["losses"]
    assert len(losses) == STEPS and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0] - 0.03, losses
    assert all(torch.isfinite(value).all() for value in result["state"].values())


@pytest.mark.parametrize("strategy", SHARDED)
def test_two_ranks_reach_the_single_process_adapter_and_resume_into_it(runs: Runs, strategy: str) -> None:
    single, sharded = runs.get("single"), runs.get(strategy, "--strategy", strategy)
    assert sharded["world_size"] == 2
    assert_trained(sharded)
    assert sharded["trainable"] == single["trainable"]
    assert list(sharded["state"]) == single["trainable"]
    assert {n: v.shape for n, v in sharded["state"].items()} == {n: v.shape for n, v in single["state"].items()}
    assert all(value.dtype == torch.float32 and value.device.type == "cpu" for value in sharded["state"].values())
    diff = max_abs_diff(single["state"], sharded["state"])
    print(f"{strategy}: max abs diff vs single {diff:.2e}")   # measured: fsdp 1.7e-7, zero2 8.9e-8, zero3 2.6e-7
    assert diff < 1e-4
    assert sharded["losses"] == pytest.approx(single["losses"], abs=1e-5)
    # The gradient norm before clipping (0.2 clips every step here), as one process computes it.
    assert sharded["norms"] == pytest.approx(single["norms"], abs=1e-5)
    # Fresh model and strategy, checkpoint after 3 steps, 3 more steps: the same end as 6 straight steps.
    assert sharded["resumed_losses"] == pytest.approx(sharded["losses"][STEPS // 2:], abs=1e-6)
    assert max_abs_diff(sharded["state"], sharded["resumed_state"]) < 1e-6


@pytest.mark.parametrize("strategy", SHARDED)
def test_resume_with_another_world_size_is_refused(runs: Runs, strategy: str) -> None:
    runs.get(strategy, "--strategy", strategy)
    outcome = runs.root / f"{strategy}-mismatch.json"
    # The same checkpoint, resumed by one process: refused before anything is read.
    launch(1, "mismatch", "--strategy", strategy, "--checkpoint", str(runs.root / strategy / "checkpoint"),
           "--out", str(outcome))
    error = json.loads(outcome.read_text())["error"]
    assert error is not None and "2 processes" in error and "this run has 1" in error and "same world size" in error


def test_fsdp_bf16_trains_close_to_fp32(runs: Runs) -> None:
    result = runs.get("fsdp-bf16", "--strategy", "fsdp", "--precision", "bf16", "--no-resume")
    assert_trained(result)
    assert max_abs_diff(runs.get("single")["state"], result["state"]) < 0.1   # measured 2.8e-2


@needs_deepspeed
def test_zero3_bf16_trains_close_to_fp32(runs: Runs) -> None:
    result = runs.get("zero3-bf16", "--strategy", "zero3", "--precision", "bf16", "--no-resume")
    assert_trained(result)
    assert max_abs_diff(runs.get("single")["state"], result["state"]) < 0.1   # measured 2.9e-2


@needs_deepspeed
def test_zero2_with_the_optimizer_offloaded_matches_single(runs: Runs) -> None:
    result = runs.get("zero2-offload", "--strategy", "zero2", "--offload", "--no-resume")
    assert_trained(result)
    assert max_abs_diff(runs.get("single")["state"], result["state"]) < 1e-4


def _tiny(kind: str) -> torch.nn.Module:
    from transformers import BartConfig, BartModel, LlamaConfig, LlamaModel, T5Config, T5Model

    if kind == "llama":
        return LlamaModel(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                                      num_attention_heads=2, num_key_value_heads=1))
    if kind == "bart":
        return BartModel(BartConfig(vocab_size=64, d_model=16, encoder_layers=2, decoder_layers=3,
                                    encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                                    decoder_ffn_dim=32, max_position_embeddings=32))
    return T5Model(T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_decoder_layers=2,
                            num_heads=2))


@pytest.mark.parametrize(("kind", "count", "block"), [("llama", 3, "LlamaDecoderLayer"),
                                                       ("bart", 5, "Bart"), ("t5", 4, "T5Block")])
def test_transformer_blocks_are_found_in_every_architecture(kind: str, count: int, block: str) -> None:
    blocks = transformer_blocks(_tiny(kind))
    assert len(blocks) == count and all(type(b).__name__.startswith(block) for b in blocks)


def test_transformer_blocks_are_found_through_peft() -> None:
    blocks = transformer_blocks(Classifier())
    assert [type(b).__name__ for b in blocks] == ["BertLayer", "BertLayer"]


def test_world_size_record_names_what_to_do(tmp_path: Path) -> None:
    write_world_size(tmp_path, "zero3", 4)
    check_world_size(tmp_path, "zero3", 4)
    with pytest.raises(ConfigError, match="holds 4 shards .* this run has 2; resume with the same world size"):
        check_world_size(tmp_path, "zero3", 2)
    with pytest.raises(ConfigError, match="written by strategy 'zero3', not 'fsdp'"):
        check_world_size(tmp_path, "fsdp", 4)
    with pytest.raises(ConfigError, match="engine.json is missing"):
        check_world_size(tmp_path / "elsewhere", "fsdp", 4)


def test_missing_deepspeed_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "deepspeed", None)   # `import deepspeed` raises ImportError
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")           # undone after the test, unlike import_deepspeed's default
    from edge_sdk.finetune.strategies.zero import import_deepspeed

    with pytest.raises(DependencyError, match=r'pip install .*"edge-sdk\[distributed\]"'):
        import_deepspeed()


def test_zero_config_follows_the_options() -> None:
    strategy = make_strategy("zero3", StrategyOptions(precision="bf16", offload_optimizer=True))
    strategy.world_size, strategy.batch_size = 4, 2
    config = strategy.config(OptimizerSettings(learning_rate=1e-3, max_grad_norm=1.0))
    assert config["zero_optimization"] == {"stage": 3, "offload_optimizer": {"device": "cpu"}}
    assert config["bf16"] == {"enabled": True} and config["gradient_clipping"] == 1.0
    assert (config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"],
            config["train_batch_size"]) == (2, 1, 8)
    assert config["optimizer"]["type"] == "AdamW" and config["optimizer"]["params"]["torch_adam"]
    plain = make_strategy("zero2", StrategyOptions()).config(OptimizerSettings(learning_rate=1e-3))
    assert "offload_optimizer" not in plain["zero_optimization"] and plain["gradient_clipping"] == 0.0
