from __future__ import annotations

import pytest

from edge_sdk.device.personalize import TrainingSettings, is_better, learning_rate_at
from edge_sdk.errors import ConfigError
from edge_sdk.profiles import available_profiles, load_profile


def test_cpu_profile_loads_and_builds_session_options() -> None:
    profile = load_profile("cpu")
    assert profile.provider_names == ["CPUExecutionProvider"]
    assert profile.session_options(threads=2).intra_op_num_threads == 2
    assert "cpu" in available_profiles()


def test_unknown_profile_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown profile 'npu'.*cpu"):
        load_profile("npu")


def test_learning_rate_warms_up_then_decays_to_zero() -> None:
    rates = [learning_rate_at(step, 20, 1.0, 0.1) for step in range(20)]
    assert rates[:2] == [0.5, 1.0]
    assert rates[2] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(rates[1:], rates[2:], strict=False))
    assert rates[-1] == pytest.approx(1 / 18)
    assert learning_rate_at(0, 10, 0.5, 0.0) == 0.5


def test_best_epoch_prefers_metric_then_loss() -> None:
    assert is_better({"accuracy": 0.8, "loss": 0.5}, None, "accuracy")
    assert is_better({"accuracy": 0.9, "loss": 0.9}, {"accuracy": 0.8, "loss": 0.1}, "accuracy")
    assert is_better({"accuracy": 0.8, "loss": 0.4}, {"accuracy": 0.8, "loss": 0.5}, "accuracy")
    assert not is_better({"accuracy": 0.7, "loss": 0.1}, {"accuracy": 0.8, "loss": 0.5}, "accuracy")


@pytest.mark.parametrize("settings, pattern", [
    (TrainingSettings(epochs=0), "epochs"),
    (TrainingSettings(learning_rate=-1.0), "learning rate"),
    (TrainingSettings(batch_size=0), "batch size"),
    (TrainingSettings(warmup_fraction=1.0), "warm-up"),
])
def test_training_settings_are_validated(settings: TrainingSettings, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        settings.validate()
