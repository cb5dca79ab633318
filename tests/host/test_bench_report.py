"""Tests for tools/bench_report.py: headline ratios, FLOP counts, the Markdown report and the scaling plot,
on made-up measurements (no timing here)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def load_bench_report() -> ModuleType:
    # Loaded by path: tools/ is a folder of scripts, not a package.
    spec = importlib.util.spec_from_file_location("bench_report", TOOLS / "bench_report.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


report = load_bench_report()

MINILM = {"model_type": "bert", "hidden_size": 384, "num_hidden_layers": 6, "intermediate_size": 1536,
          "num_attention_heads": 12, "num_key_value_heads": None, "head_dim": None, "vocab_size": 30522}
SMOLLM2 = {"model_type": "llama", "hidden_size": 576, "num_hidden_layers": 30, "intermediate_size": 1536,
           "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152}


def raw_measurements() -> dict:
    def latency(batch1: float, batch8: float) -> dict:
        return {"1": {"median_s": batch1}, "8": {"median_s": batch8}, "peak_rss_mib": 200.0}

    return {
        "machine": {"cpu_model": "Test CPU 9000", "cores": 2, "threads": 2, "os": "Linux-test",
                    "versions": {"torch": "2.13.0", "onnxruntime (stock)": "1.32.0"}},
        "setting": {"model": "MiniLM", "batch": 8, "seq": 128, "infer_seq": 128, "description": "a test setting"},
        "builds": {"MiniLM fp32": {"wall_s": 30.0, "build_s": 5.0, "peak_rss_mib": 1500.0},
                   "MiniLM int8": {"error": "no such option: --precision"}},
        "train_step": {
            "pytorch": {"median_s": 0.30, "peak_rss_mib": 650.0},
            "ort-training": {"median_s": 0.20, "peak_rss_mib": 420.0, "others_cpu_share": 0.30},
            "portable (stock)": {"median_s": 0.15, "peak_rss_mib": 500.0},
            "portable int8 (stock)": {"error": "boom"},
            "portable int8 (training build)": {"median_s": 0.25, "peak_rss_mib": 450.0, "precision": "int8"},
        },
        "personalization": {
            "pytorch": {"peak_rss_mib": 1000.0},
            "ort-training": {"peak_rss_mib": 700.0},
            "portable (stock)": {"peak_rss_mib": 500.0},
        },
        "inference": {"pytorch": latency(0.020, 0.160), "fp32 bundle": latency(0.010, 0.080),
                      "int8 bundle": latency(0.005, 0.080)},
        "peak": {"numpy (stock env)": {"gflops": 100.0, "size": 2048, "precision": "fp32"},
                 "torch (host env)": {"gflops": 80.0, "precision": "fp32"},
                 "onnxruntime int8 (stock env)": {"gflops": 400.0, "precision": "int8"}},
        "model_config": MINILM,
        "footprint": {"import_s": {"pytorch": 2.0, "edge-sdk device runtime": 0.2},
                      "installed_bytes": {"pytorch": 1000 * 2**20, "edge-sdk[device] (stock)": 200 * 2**20},
                      "model_bytes": {"pytorch": 90 * 2**20, "fp32 bundle": 180 * 2**20},
                      "adapter_bytes": {"pytorch": 300 * 1024, "fp32 bundle": 300 * 1024},
                      "note": "footprint note"},
        "scaling": {
            "sequence_batch": 8,
            "sequence": {"pytorch": {"32": {"median_s": 0.1, "peak_rss_mib": 500.0},
                                     "128": {"median_s": 0.3, "peak_rss_mib": 650.0}},
                         "portable (stock)": {"32": {"median_s": 0.05, "peak_rss_mib": 250.0},
                                              "128": {"error": "out of memory"}}},
            "model_size": {"tiny BERT": {"parameters": 27_000, "batch": 2, "seq": 128,
                                         "runs": {"pytorch": {"median_s": 0.01, "peak_rss_mib": 400.0},
                                                  "portable (stock)": {"median_s": 0.002, "peak_rss_mib": 80.0}}},
                           "MiniLM-L6": {"parameters": 22_800_000, "batch": 2, "seq": 128,
                                         "runs": {"pytorch": {"median_s": 0.1, "peak_rss_mib": 500.0},
                                                  "portable (stock)": {"median_s": 0.07, "peak_rss_mib": 250.0}}}},
            "note": "scaling note",
        },
    }


def test_frozen_linear_parameters_from_the_config() -> None:
    # MiniLM: 6 layers x (4·384² + 2·384·1536).
    assert report.frozen_linear_parameters(MINILM) == 6 * (4 * 384 * 384 + 2 * 384 * 1536) == 10_616_832
    # SmolLM2: 30 layers x (q, o 576·576; k, v 576·192; gate, up, down 576·1536) + the LM head 576·49152.
    per_layer = 2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536
    assert report.frozen_linear_parameters(SMOLLM2) == 30 * per_layer + 576 * 49152


def test_training_step_flops_counts_linear_and_attention_work() -> None:
    flops = report.training_step_flops(MINILM, batch=8, seq=128)
    assert flops["linear"] == 4 * 1024 * 10_616_832
    assert flops["attention"] == 12 * 6 * 8 * 128 * 128 * 384
    assert flops["total"] == flops["linear"] + flops["attention"]
    assert flops["total"] / 1e9 == pytest.approx(47.11, abs=0.01)


def test_unknown_architecture_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match="bert, llama"):
        report.frozen_linear_parameters(MINILM | {"model_type": "gpt2"})


def test_summary_ratios_follow_the_issue_convention() -> None:
    summary = report.summarize(raw_measurements())
    # Times: PyTorch's over ours; the fastest SDK backend is the headline, a failed one is left out.
    assert summary["train_step_speedup_vs_torch"] == pytest.approx(2.0)
    assert summary["train_step_fastest_backend"] == "portable (stock)"
    assert summary["train_step_speedup_by_backend"] == pytest.approx(
        {"ort-training": 1.5, "portable (stock)": 2.0, "portable int8 (training build)": 1.2})
    # Memory: ours over PyTorch's; the leanest run is the headline.
    assert summary["peak_memory_ratio_vs_torch"] == pytest.approx(0.5)
    assert summary["peak_memory_leanest_backend"] == "portable (stock)"
    assert summary["peak_memory_ratio_by_backend"] == pytest.approx({"ort-training": 0.7, "portable (stock)": 0.5})
    assert summary["infer_fp32_speedup_vs_torch"] == pytest.approx(2.0)
    assert summary["infer_int8_speedup_vs_torch"] == pytest.approx(2.0)
    assert summary["infer_batch1_fp32_speedup_vs_torch"] == pytest.approx(2.0)
    assert summary["infer_batch1_int8_speedup_vs_torch"] == pytest.approx(4.0)
    assert summary["infer_throughput_sequences_per_s"]["fp32 bundle"] == pytest.approx(100.0)
    flops = report.training_step_flops(MINILM, 8, 128)["total"]
    assert summary["train_step_flops"] == flops
    assert summary["peak_gflops"] == 100.0 and summary["peak_int8_gops"] == 400.0
    assert summary["train_step_fraction_of_peak"] == pytest.approx(flops / 0.15 / 100e9)


def test_an_int8_step_is_held_against_the_int8_and_float32_peaks_of_its_parts() -> None:
    fractions = report.summarize(raw_measurements())["train_step_fraction_of_peak_by_backend"]
    flops = report.training_step_flops(MINILM, 8, 128)
    assert fractions["pytorch"] == pytest.approx(flops["total"] / 0.30 / 100e9)
    ideal = flops["linear"] / 400e9 + flops["attention"] / 100e9
    assert fractions["portable int8 (training build)"] == pytest.approx(ideal / 0.25)
    assert "portable int8 (stock)" not in fractions  # it failed


def test_targets_say_which_are_met() -> None:
    targets = report.summarize(raw_measurements())["targets"]
    assert set(targets) >= {"train_step_speedup_vs_torch", "peak_memory_ratio_vs_torch",
                            "infer_fp32_speedup_vs_torch", "infer_int8_speedup_vs_torch"}
    assert targets["train_step_speedup_vs_torch"]["met"] is True      # 2.0 >= 1.5
    assert targets["peak_memory_ratio_vs_torch"]["met"] is True       # 0.5 <= 0.6
    assert targets["infer_int8_speedup_vs_torch"]["met"] is False     # 2.0 < 2.5
    assert targets["infer_int8_speedup_vs_torch"]["target"] == ">= 2.5"


def test_nothing_measured_gives_none_rather_than_an_error() -> None:
    summary = report.summarize({})
    assert summary["train_step_speedup_vs_torch"] is None
    assert summary["peak_memory_ratio_vs_torch"] is None
    assert summary["infer_int8_speedup_vs_torch"] is None
    assert all(target["met"] is None for target in summary["targets"].values())
    assert "# edge-sdk benchmark" in report.markdown({}, summary)


def test_markdown_has_every_headline_row_the_machine_and_the_failures() -> None:
    raw = raw_measurements()
    text = report.markdown(raw, report.summarize(raw))
    assert "Test CPU 9000, 2 cores, 2 threads" in text and "torch 2.13.0" in text
    assert "| training step, batch 8 × 128 (ms) | 300.0 | 150.0 (portable (stock)) | 2.00× |" in text
    assert "| training step, batch 8 × 128 (ms) | 300.0 | failed (portable int8 (stock)) | — |" in text
    assert "| peak memory of a personalization run (MiB) | 1,000 | 500 (portable (stock)) | 0.50× |" in text
    assert "| inference latency, batch 8 × 128 (ms) | 160.00 | 80.00 (fp32 bundle) | 2.00× |" in text
    assert "| inference latency, batch 1 × 128 (ms) | 20.00 | 5.00 (int8 bundle) | 4.00× |" in text
    assert "| inference throughput, batch 8 (sequences/s) | 50.0 | 100.0 (fp32 bundle) | 2.00× |" in text
    assert "| import time (ms) | 2,000.0 | 200.0 (edge-sdk device runtime) | 0.10× |" in text
    assert "| installed size of the runtime's packages (MiB) | 1,000.0 | 200.0 (edge-sdk[device] (stock)) | 0.20× |" \
        in text
    assert "| infer_int8_speedup_vs_torch | 2.00× | >= 2.5 | no |" in text
    assert "| MiniLM fp32 | 30.0 | 5.0 | 1,500 |" in text
    assert "| portable (stock) | 8 × 128 | failed | failed |" in text
    assert "| portable (stock), tiny BERT (27.0K parameters) | 2 × 128 | 2.0 | 80 |" in text
    assert "47.11 GFLOP" in text and "100.0 GFLOP/s" in text
    assert "- train_step / portable int8 (stock): boom" in text
    assert "- builds / MiniLM int8: no such option: --precision" in text
    assert "- train_step / ort-training: 30%" in text  # other work slowed it down
    assert "- train_step / pytorch:" not in text


def test_markdown_adds_generation_and_adapter_switching_when_measured() -> None:
    raw = raw_measurements() | {
        "generation": {"setting": {"model": "SmolLM2", "decoding": "greedy, batch 1", "new_tokens": 64},
                       "tokens_per_second": {"pytorch+peft": 20.0, "edge-sdk (stock onnxruntime)": 30.0}},
        "adapter_switching": {"infer_batch1_same_adapter_ms": 12.5, "infer_batch1_switching_every_request_ms": 12.75,
                              "adapter_first_load_from_disk_ms": 1.0, "rss_mib_one_adapter": 150.0,
                              "rss_mib_all_adapters": 160.0}}
    text = report.markdown(raw, report.summarize(raw))
    assert "| edge-sdk (stock onnxruntime) | 30.0 | 1.50× |" in text
    assert "| another adapter every request (ms) | 12.75 |" in text
    assert "| resident memory, one adapter / all (MiB) | 150 / 160 |" in text
    assert "Text generation" not in report.markdown(raw_measurements(), report.summarize(raw_measurements()))


def test_plot_writes_a_png(tmp_path: Path) -> None:
    path = report.plot_scaling(raw_measurements(), tmp_path / "plots" / "scaling.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000  # four panels of curves, not an empty canvas


def test_sdk_steps_that_run_the_last_layer_on_one_position_are_held_against_the_work_they_execute() -> None:
    raw = raw_measurements() | {"sdk_one_position_last_layer": True}
    summary = report.summarize(raw)
    nominal = report.training_step_flops(MINILM, 8, 128)
    executed = report.training_step_flops(MINILM, 8, 128, one_position_last_layer=True)
    # The last layer's attention output and feed-forward (384² + 2·384·1536 weights) on 8 rows instead of 1024.
    assert nominal["linear"] - executed["linear"] == 4 * (1024 - 8) * (384 * 384 + 2 * 384 * 1536)
    assert executed["attention"] == nominal["attention"]
    assert summary["train_step_flops"] == nominal["total"]
    assert summary["sdk_train_step_flops"] == executed["total"]
    fractions = summary["train_step_fraction_of_peak_by_backend"]
    assert fractions["pytorch"] == pytest.approx(nominal["total"] / 0.30 / 100e9)  # PyTorch runs it all
    assert fractions["portable (stock)"] == pytest.approx(executed["total"] / 0.15 / 100e9)
    assert "execute" in report.markdown(raw, summary)
