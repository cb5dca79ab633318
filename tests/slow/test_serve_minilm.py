"""The fine-tuning service on a real model, driven by OpenAI's own client: a MiniLM topic classifier (the
minilm-topics recipe) fine-tuned on BBC News articles as a job; the bundle archive it returns is unpacked, scored,
personalized and run with the device runtime. A screenshot of the job's dashboard page goes to the test
artifacts."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from serve_harness import (
    CHROMEDRIVER,
    CHROMIUM,
    REPO,
    Service,
    all_events,
    artifacts_dir,
    create_key,
    dashboard_screenshot,
    wait_for,
    write_config,
)

from edge_sdk.bundle.archive import unpack_bundle
from edge_sdk.device import DeviceBundle, TrainingSettings

sys.path.insert(0, str(REPO / "tools"))
from prepare_bbc import prepare_bbc  # noqa: E402

pytestmark = pytest.mark.slow


def test_a_minilm_job_returns_a_bundle_the_device_personalizes(tmp_path: Path) -> None:
    prepare_bbc(tmp_path / "bbc", train_per_label=60, dev_per_label=20, test_per_label=40, seed=0)
    train, valid, test = (tmp_path / "bbc" / f"{split}.jsonl" for split in ("train", "dev", "test"))
    config = write_config(tmp_path, {}, checkpoint_every=50)
    config.write_text(config.read_text().replace(f'recipes_dir = "{tmp_path / "no-recipes"}"',
                                                 f'recipes_dir = "{REPO / "models"}"'))
    key = create_key(config, "newsroom")
    service = Service(config, workers=1).start()
    try:
        client = service.client(key)
        assert "minilm-topics" in {model.id for model in client.models.list()}
        uploaded = [client.files.create(file=(path.name, path.read_bytes()), purpose="fine-tune")
                    for path in (train, valid)]
        started = time.monotonic()
        job = client.fine_tuning.jobs.create(
            model="minilm-topics", training_file=uploaded[0].id, validation_file=uploaded[1].id, suffix="bbc", seed=0,
            method={"type": "supervised", "supervised": {"hyperparameters": {
                "n_epochs": 2, "batch_size": 16, "learning_rate_multiplier": 15}}})
        done = wait_for(client, job.id, timeout=900)
        seconds = time.monotonic() - started
        assert done.status == "succeeded", done.error
        events = all_events(client, job.id)
        epochs = [e.data for e in events if e.type == "metrics" and "total_steps" not in e.data]
        assert epochs[0]["accuracy"] < 0.5 and epochs[-1]["accuracy"] > 0.8, epochs
        archive_id = next(f for f in done.result_files if client.files.retrieve(f).filename.endswith(".edgepkg"))
        archive = tmp_path / "minilm.edgepkg"
        archive.write_bytes(client.files.content(archive_id).read())
        if CHROMIUM.is_file() and CHROMEDRIVER.is_file():
            dashboard_screenshot(service.base_url, key, job.id, artifacts_dir() / "serve-dashboard-minilm.png")
    finally:
        service.stop()

    unpack_bundle(archive, tmp_path / "device", trust=False)
    bundle = DeviceBundle.open(tmp_path / "device")
    served = bundle.evaluate(test)["accuracy"]
    assert served > 0.8
    result = bundle.personalize(valid, settings=TrainingSettings(epochs=1, batch_size=16, learning_rate=1e-3))
    assert result.steps > 0
    assert bundle.evaluate(test)["accuracy"] > 0.75   # personalizing on more news keeps it a news classifier
    label = bundle.infer(["The striker scored twice as the champions won the cup final"])[0].label
    assert label == "sports", label
    print(f"\nMiniLM job: {seconds:.0f} s (upload to succeeded), accuracy {epochs[0]['accuracy']:.3f} -> "
          f"{epochs[-1]['accuracy']:.3f} (validation), bundle on the device {served:.3f} (test)")
