"""tools/bench.py's inference rounds: how several processes' measurements of one variant become one."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[2] / "tools"


@pytest.fixture(scope="module")
def bench():
    # Loaded by path (tools/ is a folder of scripts); it puts tools/ on sys.path and imports bench_report.
    saved_path, saved_module = list(sys.path), sys.modules.get("bench_report")
    spec = importlib.util.spec_from_file_location("bench_under_test", TOOLS / "bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)
    sys.path[:] = saved_path
    if saved_module is None:
        sys.modules.pop("bench_report", None)


def _round(median_1: float, median_8: float, peak: float, wall: float, others: float = 0.0) -> dict:
    return {"1": {"median_s": median_1, "times_s": [median_1] * 3, "tokens": [128]},
            "8": {"median_s": median_8, "times_s": [median_8] * 3, "tokens": [128]},
            "peak_rss_mib": peak, "wall_s": wall, "others_cpu_share": others}


def test_rounds_keep_the_median_of_their_medians_so_one_slow_spell_does_not_count(bench):
    combined = bench.combine_rounds([_round(0.010, 0.110, 200, 5), _round(0.018, 0.160, 210, 6, 0.3),
                                     _round(0.011, 0.115, 190, 5)])
    assert combined["8"]["median_s"] == pytest.approx(0.115)
    assert combined["1"]["median_s"] == pytest.approx(0.011)
    assert combined["8"]["round_medians_s"] == [0.110, 0.160, 0.115]
    assert len(combined["8"]["times_s"]) == 9 and combined["8"]["tokens"] == [128]
    assert combined["rounds"] == 3
    assert combined["peak_rss_mib"] == 210 and combined["wall_s"] == 16 and combined["others_cpu_share"] == 0.3


def test_a_failed_round_fails_the_variant_and_one_round_is_kept_as_it_is(bench):
    failed = {"error": "exit 1: out of memory"}
    assert bench.combine_rounds([_round(0.01, 0.1, 200, 5), failed]) == failed
    single = _round(0.01, 0.1, 200, 5)
    assert bench.combine_rounds([single]) is single
