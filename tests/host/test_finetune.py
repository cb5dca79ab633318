"""`edge-sdk finetune` on tiny seeded models: every task trains with the device's task plugins and the host's
evaluation equals the device's on the bundle built from the adapter; checkpoints resume exactly; distributed
strategies under torchrun give the single-process adapter; bad input fails clearly and leaves nothing."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from make_fixtures import (
    LABELS,
    NER_TAGS,
    write_chat_data,
    write_multi_label_data,
    write_ner_data,
    write_qa_data,
    write_seq2seq_data,
    write_topic_data,
)
from safetensors.numpy import load_file
from tiny_models import make_tiny_model
from tiny_seq2seq import make_tiny_seq2seq

from edge_sdk.cli.main import cli

REPO = Path(__file__).resolve().parents[2]


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def ok_json(*args: str | Path) -> dict:
    result = run(*args, "--json")
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return json.loads(result.stdout)


def fails(*args: str | Path, code: int = 1) -> str:
    result = run(*args)
    assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
    assert "Traceback" not in result.stderr
    return result.stderr


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("finetune")
    make_tiny_model(root / "bert", "bert")
    make_tiny_model(root / "llama", "llama", chat=True)
    make_tiny_seq2seq(root / "bart", "bart")
    write_topic_data(root / "topics.jsonl", 64, seed=0)
    write_topic_data(root / "topics-dev.jsonl", 32, seed=1)
    write_ner_data(root / "ner.jsonl", 48, seed=0)
    write_qa_data(root / "qa.jsonl", 48, seed=0)
    write_multi_label_data(root / "multi.jsonl", 48, seed=0)
    write_chat_data(root / "chat.jsonl", 48, seed=0)
    write_seq2seq_data(root / "s2s.jsonl", 48, seed=0)
    return root


# (task, model, labels, data); evaluation runs on the training data itself for the smaller sets.
TASK_CASES = [
    ("seq-cls", "bert", ",".join(LABELS), "topics.jsonl"),
    ("token-cls", "bert", ",".join(NER_TAGS), "ner.jsonl"),
    ("qa", "bert", None, "qa.jsonl"),
    ("multi-label", "bert", ",".join(LABELS), "multi.jsonl"),
    ("causal-lm", "llama", None, "chat.jsonl"),
    ("seq2seq", "bart", None, "s2s.jsonl"),
]

COMMON = ("--max-length", "32", "--batch-size", "8", "--lr", "5e-3")


def _task_args(work: Path, task: str, model: str, labels: str | None, data: str) -> list:
    return [work / model, "--task", task, *(["--labels", labels] if labels else []), "--data", work / data]


@pytest.mark.parametrize("task, model, labels, data", TASK_CASES, ids=[case[0] for case in TASK_CASES])
def test_every_task_trains_and_the_device_scores_the_built_bundle_as_the_host_did(
        work: Path, tmp_path: Path, task: str, model: str, labels: str | None, data: str) -> None:
    adapter = tmp_path / "adapter"
    result = ok_json("finetune", *_task_args(work, task, model, labels, data), "--eval-data", work / data,
                     "--out", adapter, "--epochs", "3", *COMMON)
    history = result["history"]
    assert [record["epoch"] for record in history] == [0, 1, 2, 3]   # 0: before training
    assert history[-1]["train_loss"] < history[1]["train_loss"]
    assert history[-1]["loss"] < history[0]["loss"]
    assert {path.name for path in adapter.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors",
                                                          "run.json", "metrics.csv", "training.png"}
    assert (adapter / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = result["report"]
    assert 0 < report["trainable_parameters"] < report["total_parameters"]
    assert len(report["peak_memory_mib_per_rank"]) == 1 and report["tokens_per_second"] > 0

    bundle = tmp_path / "bundle"
    built = run("build", *_task_args(work, task, model, labels, data)[:-2], "--max-length", "32",
                "--adapter-from", adapter, "--out", bundle, "--quiet")
    assert built.exit_code == 0, built.stderr
    from edge_sdk.device.runtime import DeviceBundle

    device = DeviceBundle.open(bundle).evaluate(work / data)
    metric = "loss"
    assert device[metric] == pytest.approx(history[-1][metric], rel=1e-4, abs=1e-5)
    for key, value in history[-1].items():
        if key in device and key not in ("epoch", "train_loss"):
            assert device[key] == pytest.approx(value, rel=1e-3, abs=1e-3), key


class _Stop(Exception):
    pass


def test_a_killed_run_resumes_from_its_checkpoint_to_the_same_adapter(work: Path, tmp_path: Path) -> None:
    from edge_sdk.errors import ConfigError
    from edge_sdk.finetune.settings import FinetuneSettings
    from edge_sdk.finetune.trainer import run_finetune
    from edge_sdk.host.config import BuildConfig

    config = BuildConfig(model_dir=work / "bert", task="seq-cls", labels=LABELS, max_length=32)
    settings = FinetuneSettings(epochs=2, batch_size=8, learning_rate=5e-3, checkpoint_every=3)
    data = work / "topics.jsonl"
    straight = run_finetune(config, settings, data, tmp_path / "straight")

    def stop_at_five(update) -> None:
        if update.step == 5:
            raise _Stop

    out = tmp_path / "killed"
    with pytest.raises(_Stop):
        run_finetune(config, settings, data, out, on_step=stop_at_five)
    assert not out.exists()   # nothing half-written
    assert sorted(path.name for path in (tmp_path / "killed.checkpoint").iterdir()) == ["step-00000003"]
    with pytest.raises(ConfigError, match="another run.*learning_rate"):
        run_finetune(config, FinetuneSettings(epochs=2, batch_size=8, learning_rate=1e-3, checkpoint_every=3),
                     data, out, resume=True)
    resumed = run_finetune(config, settings, data, out, resume=True)
    assert resumed.resumed_from_step == 3
    assert resumed.losses == pytest.approx(straight.losses, abs=1e-6)
    first, second = (load_file(str(path / "adapter_model.safetensors")) for path in (straight.adapter, out))
    assert first.keys() == second.keys()
    assert max(float(np.abs(first[key] - second[key]).max()) for key in first) < 1e-6


def test_bf16_mixed_precision_trains(work: Path, tmp_path: Path) -> None:
    result = ok_json("finetune", *_task_args(work, *TASK_CASES[0][:3], "topics.jsonl"), "--out", tmp_path / "a",
                     "--epochs", "2", "--precision", "bf16", *COMMON)
    assert all(np.isfinite(result["losses"])) and result["losses"][-1] < result["losses"][0]
    assert result["report"]["precision"] == "bf16"


def test_mistakes_fail_in_one_line_and_leave_nothing(work: Path, tmp_path: Path) -> None:
    args = _task_args(work, *TASK_CASES[0])
    out = tmp_path / "adapter"
    assert "global batch" in fails("finetune", *args, "--out", out, "--batch-size", "500")
    assert "divide" not in fails("finetune", *args, "--out", out, "--batch-size", "0")
    assert "zero2 or zero3" in fails("finetune", *args, "--out", out, "--offload-optimizer")
    assert "shards parameters" in fails("finetune", *args, "--out", out, "--strategy", "zero3", "--base", "int8")
    assert "torchrun" in fails("finetune", *args, "--out", out, "--strategy", "ddp")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine", "label": "sport"}\n{"text": "x", "label": "weather"}\n')
    assert f"{bad}:2" in fails("finetune", *args[:-1], bad, "--out", out)
    fails("finetune", *args[:-1], tmp_path / "missing.jsonl", "--out", out, code=2)
    assert not out.exists() and not (tmp_path / "adapter.checkpoint").exists()
    out.mkdir()
    assert "already exists" in fails("finetune", *args, "--out", out)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _torchrun(args: list, processes: int = 2) -> dict:
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                        "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "edge_sdk", "finetune",
               *map(str, args), "--json"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout[done.stdout.index("{"):])


@pytest.fixture(scope="module")
def single_run(work: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("single") / "adapter"
    return ok_json("finetune", *_task_args(work, *TASK_CASES[0]), "--eval-data", work / "topics-dev.jsonl",
                   "--out", out, "--epochs", "2", *COMMON)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "zero2", "zero3"])
def test_two_processes_under_torchrun_give_the_single_process_adapter(
        work: Path, tmp_path: Path, single_run: dict, strategy: str) -> None:
    if strategy.startswith("zero"):
        pytest.importorskip("deepspeed")
    out = tmp_path / "adapter"
    result = _torchrun([*_task_args(work, *TASK_CASES[0]), "--eval-data", work / "topics-dev.jsonl", "--out", out,
                        "--epochs", "2", "--strategy", strategy, *COMMON])
    assert result["report"]["processes"] == 2 and len(result["report"]["peak_memory_mib_per_rank"]) == 2
    assert result["losses"][-1] < result["losses"][0]
    assert result["losses"] == pytest.approx(single_run["losses"], abs=1e-5)
    mine, single = (load_file(str(Path(path) / "adapter_model.safetensors"))
                    for path in (out, single_run["adapter"]))
    assert mine.keys() == single.keys()
    assert all(mine[key].shape == single[key].shape for key in mine)
    # Adam divides by the root of the squared gradients: summation-order noise in a near-zero gradient moves a
    # weight by up to about the learning rate times that noise over its size; 1e-4 is far below the updates (~1e-2).
    assert max(float(np.abs(mine[key] - single[key]).max()) for key in mine) < 1e-4
    assert result["history"][-1]["accuracy"] == single_run["history"][-1]["accuracy"]
    if strategy != "zero3":
        return
    # The sharded run's adapter becomes a bundle that the device personalizes further.
    bundle = tmp_path / "bundle"
    built = run("build", work / "bert", "--task", "seq-cls", "--labels", ",".join(LABELS), "--max-length", "32",
                "--adapter-from", out, "--out", bundle, "--quiet")
    assert built.exit_code == 0, built.stderr
    personalized = ok_json("personalize", bundle, "--data", work / "topics.jsonl", "--eval-data",
                           work / "topics-dev.jsonl", "--epochs", "1", "--batch-size", "8")
    assert personalized["before"]["accuracy"] == pytest.approx(single_run["history"][-1]["accuracy"])
    assert np.isfinite(personalized["losses"]).all()


@pytest.mark.parametrize("base", ["int8", "4bit"])
def test_a_quantized_base_trains_the_adapter_that_builds_on_the_float_base(work: Path, tmp_path: Path,
                                                                          base: str) -> None:
    pytest.importorskip("bitsandbytes")
    adapter = tmp_path / "adapter"
    args = [*_task_args(work, *TASK_CASES[0]), "--out", adapter, "--epochs", "2", "--base", base, *COMMON]
    result = ok_json("finetune", *args)
    assert result["losses"][-1] < result["losses"][0]
    quantized = result["report"]["quantized_base"]
    assert quantized["library"] == "bitsandbytes" and quantized["mode"] == base and quantized["layers"] > 0
    assert quantized["layer_bytes_after"] < quantized["layer_bytes_before"] / 2.5
    # Under DDP the quantized run is the single-process run (same global batch, same seed).
    shared = _torchrun([*args[:args.index("--out")], "--out", tmp_path / "ddp", *args[args.index("--out") + 2:],
                        "--strategy", "ddp"])
    assert shared["losses"] == pytest.approx(result["losses"], abs=1e-5)
    built = run("build", work / "bert", "--task", "seq-cls", "--labels", ",".join(LABELS), "--max-length", "32",
                "--adapter-from", adapter, "--out", tmp_path / "bundle", "--quiet")
    assert built.exit_code == 0, built.stderr


@pytest.mark.parametrize("strategy", ["fsdp", "zero3"])
def test_a_language_model_trains_sharded_as_in_one_process(work: Path, tmp_path: Path, strategy: str) -> None:
    if strategy == "zero3":
        pytest.importorskip("deepspeed")
    args = [*_task_args(work, *TASK_CASES[4]), "--epochs", "1", *COMMON]
    single = ok_json("finetune", *args, "--out", tmp_path / "single")
    sharded = _torchrun([*args, "--out", tmp_path / "sharded", "--strategy", strategy])
    assert sharded["losses"] == pytest.approx(single["losses"], abs=1e-4)
    assert sharded["losses"][-1] < sharded["losses"][0]
