"""`edge-sdk serve` driven by OpenAI's own client, unmodified: files, fine-tuning jobs with their events and
checkpoints, pagination, the result files (a bundle archive the device runtime unpacks, personalizes and runs),
cancel, errors in OpenAI's shape, tenants kept apart, limits with x-should-retry. The service runs as processes
(API and one worker) on loopback with a tiny seeded BERT."""

from __future__ import annotations

import io
import json
import sqlite3
import subprocess
import time
import zipfile
from pathlib import Path

import openai
import pytest
from make_fixtures import LABELS, write_topic_data
from serve_harness import Service, all_events, check_file_pages, create_key, edge_sdk, wait_for, write_config
from tiny_models import make_tiny_model

from edge_sdk.bundle.archive import unpack_bundle
from edge_sdk.bundle.signing import TrustPolicy
from edge_sdk.device import DeviceBundle, TrainingSettings

MODEL = "tiny-bert"
SMALL_JOB = {"type": "supervised", "supervised": {"hyperparameters": {
    "n_epochs": 2, "batch_size": 8, "learning_rate_multiplier": 25}}}


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("serve")
    make_tiny_model(root / "bert", "bert")
    write_topic_data(root / "topics.jsonl", 64, seed=0)
    write_topic_data(root / "topics-dev.jsonl", 32, seed=1)
    write_topic_data(root / "long.jsonl", 256, seed=2)
    return root


@pytest.fixture(scope="module")
def service(work: Path):
    limited = "[tenants.small.limits]\nmax_file_bytes = 3000\nmax_queued_jobs = 1\nmax_running_jobs = 0\n"
    config = write_config(work, {MODEL: work / "bert"}, extra=limited)
    made = edge_sdk("keys", "generate", "--out", str(work / "signing"))
    assert made.returncode == 0, made.stderr
    # The server signs every bundle it builds (a top-level setting: before the file's tables).
    config.write_text(f'signing_key = "{work / "signing" / "edge-sdk.key"}"\n' + config.read_text())
    running = Service(config, workers=1).start()
    running.keys = {name: create_key(config, name) for name in ("acme", "other", "small")}
    yield running
    running.stop()


def upload(client, path: Path):
    with open(path, "rb") as file:
        return client.files.create(file=(path.name, file), purpose="fine-tune")


def test_a_job_trains_and_its_bundle_personalizes_and_runs_on_the_device(service: Service, work: Path) -> None:
    client = service.client(service.keys["acme"])
    train, valid = upload(client, work / "topics.jsonl"), upload(client, work / "topics-dev.jsonl")
    assert (train.object, train.purpose, train.status, train.bytes) == \
           ("file", "fine-tune", "processed", (work / "topics.jsonl").stat().st_size)
    assert client.files.content(train.id).read() == (work / "topics.jsonl").read_bytes()

    job = client.fine_tuning.jobs.create(model=MODEL, training_file=train.id, validation_file=valid.id,
                                         method=SMALL_JOB, suffix="news", seed=7, metadata={"team": "radio"})
    assert job.object == "fine_tuning.job" and job.status == "validating_files"
    assert job.hyperparameters.n_epochs == 2 and job.hyperparameters.batch_size == 8
    assert job.metadata == {"team": "radio"} and job.seed == 7 and job.user_provided_suffix == "news"

    seen: set[str] = set()
    statuses = []
    deadline = time.monotonic() + 300
    while (current := client.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
        statuses.append(current.status)
        seen |= {event.id for event in client.fine_tuning.jobs.list_events(job.id, limit=5).data}
        assert time.monotonic() < deadline
        time.sleep(0.3)
    assert current.status == "succeeded", current.error
    assert current.fine_tuned_model.startswith(f"ft:{MODEL}:acme:news:")
    assert current.finished_at >= current.created_at and current.trained_tokens > 0
    assert "running" in statuses

    events = all_events(client, job.id)
    assert seen <= {event.id for event in events}   # what was followed live is in the full history
    messages = [event.message for event in events]
    assert messages[0].startswith("Created fine-tuning job") and messages[-1] == "The job has successfully completed"
    assert "Files validated, moving job to queued state" in messages
    steps = [event.data["step"] for event in events if event.type == "metrics" and "total_steps" in event.data]
    assert steps == list(range(1, 17))   # 64 rows / batch 8 x 2 epochs, each step once, in order
    epochs = [event.data for event in events if event.type == "metrics" and "total_steps" not in event.data]
    assert [data["epoch"] for data in epochs] == [0, 1, 2] and all("accuracy" in data for data in epochs)
    assert [data["step"] for data in epochs] == [0, 8, 16]
    assert not any("/" in message and "home" in message for message in messages), "server paths leak"

    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id, limit=100).data
    assert [c.step_number for c in checkpoints] == list(range(16, 0, -2))   # every 2 steps, newest first
    assert checkpoints[0].metrics.step == 16 and checkpoints[0].fine_tuned_model_checkpoint.endswith(":ckpt-step-16")
    assert checkpoints[0].metrics.train_loss == pytest.approx([e.data for e in events if e.type == "metrics"
                                                                        and e.data.get("step") == 16][0]["train_loss"])
    assert checkpoints[0].metrics.valid_loss == pytest.approx(epochs[-1]["loss"])   # the epoch's evaluation

    results = {client.files.retrieve(file_id).filename: file_id for file_id in current.result_files}
    assert all(client.files.retrieve(file_id).purpose == "fine-tune-results" for file_id in current.result_files)
    suffixes = sorted(Path(name).suffix for name in results)
    assert suffixes == [".csv", ".edgepkg", ".png", ".zip"]
    by_suffix = {Path(name).suffix: file_id for name, file_id in results.items()}
    assert client.files.content(by_suffix[".png"]).read()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = client.files.content(by_suffix[".csv"]).read().decode().splitlines()
    assert len(rows) > 16 and "loss" in rows[0]
    with zipfile.ZipFile(io.BytesIO(client.files.content(by_suffix[".zip"]).read())) as adapter:
        assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= set(adapter.namelist())

    archive = work / "downloaded.edgepkg"
    archive.write_bytes(client.files.content(by_suffix[".edgepkg"]).read())
    # Signed with the server's key: a device that trusts only that key installs it.
    unpack_bundle(archive, work / "device-bundle", trust=TrustPolicy.from_paths([work / "signing" / "edge-sdk.pub"]))
    bundle = DeviceBundle.open(work / "device-bundle")
    assert bundle.manifest.labels == sorted(LABELS)   # the labels the server took from the training file
    before = bundle.evaluate(work / "topics-dev.jsonl")
    # The host run's accuracy on the validation file, as the job's last epoch event reported it.
    assert before["accuracy"] == pytest.approx(epochs[-1]["accuracy"], abs=1e-6)
    result = bundle.personalize(work / "topics.jsonl", settings=TrainingSettings(epochs=1, batch_size=8))
    assert result.steps == 8
    predictions = bundle.infer(["the striker scored a late goal", "shares fell on weak earnings"])
    assert len(predictions) == 2 and all(p.label in LABELS for p in predictions)


def test_lists_page_with_a_cursor(service: Service, work: Path) -> None:
    client = service.client(service.keys["other"])
    uploaded = [upload(client, work / "topics.jsonl").id for _ in range(3)]
    check_file_pages(client, uploaded)

    jobs = [client.fine_tuning.jobs.create(model=MODEL, training_file=uploaded[0], method=SMALL_JOB).id
            for _ in range(3)]
    for job_id in jobs:   # waiting jobs cancel at once
        cancelled = client.fine_tuning.jobs.cancel(job_id)
        assert cancelled.status in ("cancelled", "running", "succeeded")
    page = client.fine_tuning.jobs.list(limit=2)
    assert page.has_more and [j.id for j in page.data] == jobs[::-1][:2]
    assert [j.id for j in client.fine_tuning.jobs.list(limit=1)] == jobs[::-1]
    assert client.fine_tuning.jobs.list(metadata={"absent": "x"}).data == []
    for job_id in jobs:
        wait_for(client, job_id)


def test_cancel_stops_a_running_job_and_keeps_its_files(service: Service, work: Path) -> None:
    client = service.client(service.keys["acme"])
    train = upload(client, work / "long.jsonl")
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=train.id, method={
        "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 50, "batch_size": 8}}})
    deadline = time.monotonic() + 120
    while not client.fine_tuning.jobs.checkpoints.list(job.id).data:   # training, and a checkpoint written
        assert time.monotonic() < deadline, client.fine_tuning.jobs.retrieve(job.id)
        time.sleep(0.3)
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    assert all_events(client, job.id)[-1].message.startswith("Fine-tuning job cancelled")
    folder = work / "home" / "jobs" / job.id
    assert any((folder / "adapter.checkpoint").glob("step-*")), "the job's files are kept"
    # Its training process is gone (its process group was signalled).
    assert subprocess.run(["pgrep", "-f", str(folder)], capture_output=True).returncode == 1
    with pytest.raises(openai.BadRequestError) as again:
        client.fine_tuning.jobs.cancel(job.id)
    assert again.value.body["code"] == "job_not_cancellable"


def test_a_bad_upload_is_an_openai_shaped_400_naming_the_line(service: Service, work: Path) -> None:
    client = service.client(service.keys["acme"])
    bad = work / "bad.jsonl"
    bad.write_text('{"text": "a", "label": "tech"}\n{"text": "b", "label": "sport"}\n{"text": "c", "label"\n')
    before = len(client.files.list().data)
    with pytest.raises(openai.BadRequestError) as refused:
        upload(client, bad)
    error = refused.value.body
    assert refused.value.status_code == 400 and set(error) == {"message", "type", "param", "code"}
    assert "bad.jsonl:3" in error["message"] and error["param"] == "file" and error["type"] == "invalid_request_error"
    assert refused.value.response.headers["x-should-retry"] == "false"
    assert len(client.files.list().data) == before, "nothing was stored"
    with pytest.raises(openai.BadRequestError) as purpose:
        client.files.create(file=("x.jsonl", b'{"text": "a", "label": "b"}\n'), purpose="assistants")
    assert purpose.value.body["param"] == "purpose"


def test_job_requests_are_checked_before_anything_runs(service: Service, work: Path) -> None:
    client = service.client(service.keys["acme"])
    train = upload(client, work / "topics.jsonl")
    cases = [
        ({"model": "no-such-model"}, "model"),
        ({"training_file": "file-nope"}, "training_file"),
        ({"method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 0}}}},
         "hyperparameters.n_epochs"),
        ({"method": {"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 1000}}}},
         "hyperparameters.batch_size"),
        ({"extra_body": {"edge_sdk": {"task": "qa"}}}, "training_file"),
    ]
    for change, param in cases:
        arguments = {"model": MODEL, "training_file": train.id} | change
        with pytest.raises(openai.BadRequestError) as refused:
            client.fine_tuning.jobs.create(**arguments)
        assert refused.value.body["param"] == param, refused.value.body
    with pytest.raises(openai.BadRequestError) as method:
        client.fine_tuning.jobs.create(model=MODEL, training_file=train.id, method={"type": "dpo"})
    assert "method" in method.value.body["param"]


def test_tenants_see_only_their_own_files_and_jobs(service: Service, work: Path) -> None:
    acme, other = service.client(service.keys["acme"]), service.client(service.keys["other"])
    train = upload(acme, work / "topics.jsonl")
    job = acme.fine_tuning.jobs.create(model=MODEL, training_file=train.id, method=SMALL_JOB)
    with pytest.raises(openai.NotFoundError):
        other.fine_tuning.jobs.retrieve(job.id)
    for call in (lambda: other.fine_tuning.jobs.list_events(job.id), lambda: other.fine_tuning.jobs.cancel(job.id),
                 lambda: other.files.retrieve(train.id), lambda: other.files.content(train.id),
                 lambda: other.files.delete(train.id)):
        with pytest.raises(openai.NotFoundError) as hidden:
            call()
        assert hidden.value.body["type"] == "invalid_request_error"
    assert job.id not in {j.id for j in other.fine_tuning.jobs.list(limit=100)}
    with pytest.raises(openai.BadRequestError) as theirs:   # another tenant's file is no training file of mine
        other.fine_tuning.jobs.create(model=MODEL, training_file=train.id)
    assert theirs.value.body["param"] == "training_file"
    wait_for(acme, job.id)


def test_keys_are_checked_and_revoked(service: Service) -> None:
    with pytest.raises(openai.AuthenticationError) as wrong:
        service.client("esk-not-a-key").files.list()
    assert wrong.value.body["code"] == "invalid_api_key"
    key = create_key(service.config, "temporary")
    assert service.client(key).files.list().data == []
    done = edge_sdk("serve", "keys", "revoke", key, "--config", str(service.config))
    assert done.returncode == 0, done.stderr
    with pytest.raises(openai.AuthenticationError):
        service.client(key).files.list()
    stored = sqlite3.connect(service.config.parent / "home" / "service.db")
    hashes = [row[0] for row in stored.execute("SELECT key_hash FROM api_keys")]
    assert key not in json.dumps(hashes), "keys are stored hashed"
    again = edge_sdk("serve", "keys", "revoke", key, "--config", str(service.config))
    assert again.returncode == 1 and "no active API key" in again.stderr and "Traceback" not in again.stderr


def test_limits_answer_with_x_should_retry(service: Service, work: Path) -> None:
    client = service.client(service.keys["small"])
    with pytest.raises(openai.APIStatusError) as too_big:
        upload(client, work / "topics.jsonl")   # 4.5 kB over a 3 kB limit
    assert too_big.value.status_code == 413 and too_big.value.response.headers["x-should-retry"] == "false"
    small = work / "small.jsonl"
    write_topic_data(small, 16, seed=3)
    train = upload(client, small)
    # max_running_jobs = 0: the first job waits in the queue, the second is over max_queued_jobs = 1.
    client.fine_tuning.jobs.create(model=MODEL, training_file=train.id, method=SMALL_JOB)
    with pytest.raises(openai.RateLimitError) as busy:
        client.fine_tuning.jobs.create(model=MODEL, training_file=train.id, method=SMALL_JOB)
    assert busy.value.response.headers["x-should-retry"] == "true"
    assert busy.value.body["code"] == "too_many_queued_jobs"
    assert int(busy.value.response.headers["retry-after"]) > 0
