"""`edge-sdk fleet simulate` from the command line: a summary per round or one JSON object; mistakes exit 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def _cli(*args, cwd=None):
    env = os.environ | {"PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "edge_sdk", "fleet", *args], capture_output=True, text=True,
                          timeout=600, env=env, cwd=cwd)


def test_simulate_prints_one_json_summary_and_improves_on_the_held_out_set(tiny_ffa_bundle, tiny_data, tmp_path):
    result = _cli("simulate", str(tiny_ffa_bundle), "--data", str(tiny_data / "train.jsonl"), "--test",
                  str(tiny_data / "dev.jsonl"), "--devices", "3", "--rounds", "3", "--local-epochs", "2",
                  "--learning-rate", "0.02", "--batch-size", "8", "--out", str(tmp_path / "run"), "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["method"] == "ffa" and summary["devices"] == 3 and summary["completed_rounds"] == 3
    accuracy = [entry["global_test"]["accuracy"] for entry in summary["rounds"]]
    losses = [entry["global_test"]["loss"] for entry in summary["rounds"]]
    assert accuracy[-1] >= accuracy[0] + 0.15 and losses[-1] < losses[0], (accuracy, losses)
    assert len(summary["partitions"]) == 3
    assert (tmp_path / "run" / "global" / "peft" / "adapter_model.safetensors").is_file()


def test_simulate_mistakes_exit_1_with_the_reason(tiny_bundle, tiny_ffa_bundle, tiny_data, tmp_path):
    common = ["--data", str(tiny_data / "train.jsonl"), "--devices", "2", "--out", str(tmp_path / "run")]
    wrong_bundle = _cli("simulate", str(tiny_bundle), *common)  # ffa by default, on a bundle that trains A
    assert wrong_bundle.returncode == 1
    assert "--freeze-lora-a" in wrong_bundle.stderr and "Traceback" not in wrong_bundle.stderr
    half_dp = _cli("simulate", str(tiny_ffa_bundle), *common, "--dp-noise", "1.0")
    assert half_dp.returncode == 1 and "--clip" in half_dp.stderr
    too_many = _cli("simulate", str(tiny_ffa_bundle), *common[:-4], "--devices", "50", "--alpha", "0.5",
                    "--out", str(tmp_path / "run"))
    assert too_many.returncode == 1 and "cannot give 50 devices" in too_many.stderr
    assert not (tmp_path / "run").exists()
