"""The service's dashboard (edge_sdk.serve.dashboard): sign-in with an API key, a tenant's jobs and only its own,
a job's page with its loss chart (server-rendered SVG), escaping; and the same pages in a real headless Chromium."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("sqlalchemy")

from fastapi import FastAPI  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from serve_harness import CHROMEDRIVER, CHROMIUM, artifacts_dir, headless_chromium  # noqa: E402
from sqlalchemy.orm import sessionmaker  # noqa: E402

from edge_sdk.serve.dashboard import COOKIE, dashboard_router, loss_chart, split_metrics  # noqa: E402
from edge_sdk.serve.db import Job, JobEvent, StoredFile, Tenant, make_engine, make_sessions, new_id  # noqa: E402
from edge_sdk.serve.keys import create_key, revoke_key  # noqa: E402

HOSTILE = '<script>alert("x")</script>&model'


@dataclass
class Service:
    app: FastAPI
    sessions: sessionmaker
    acme_key: str
    other_key: str
    acme_job: str       # succeeded, with metrics, epochs, events and a result file
    fresh_job: str      # queued, no metrics, a hostile model name
    other_job: str      # the other tenant's


def add_job(sessions: sessionmaker, tenant_id: int, status: str, model: str = "tiny-bert", **fields) -> str:
    job_id = new_id("ftjob")
    with sessions.begin() as session:
        session.add(Job(id=job_id, tenant_id=tenant_id, model=model, training_file="file-train", status=status,
                        hyperparameters={"n_epochs": 2}, settings={}, seed=0, **fields))
    return job_id


def add_events(sessions: sessionmaker, job_id: str, events: list[tuple[str, str, dict | None]]) -> None:
    start = 1_790_000_000
    with sessions.begin() as session:
        for i, (kind, message, data) in enumerate(events):
            session.add(JobEvent(id=new_id("ftevent"), job_id=job_id, message=message, type=kind, data=data,
                                 created_at=start + i))


def training_events(total: int = 40) -> list[tuple[str, str, dict | None]]:
    events: list[tuple[str, str, dict | None]] = [("message", "Fine-tuning job started", None),
                                                  ("metrics", "epoch 0", {"epoch": 0, "accuracy": 0.5})]
    for step in range(1, total + 1):
        loss = 0.3 + 0.7 * (0.93 ** step)
        events.append(("metrics", f"Step {step}/{total}: training loss={loss:.4f}",
                       {"step": step, "train_loss": loss, "total_steps": total}))
        if step == total // 2:
            events.append(("metrics", "epoch 1", {"epoch": 1, "train_loss": 0.6, "accuracy": 0.8, "eval_loss": 0.55}))
    events.append(("metrics", "epoch 2", {"epoch": 2, "train_loss": 0.4, "accuracy": 0.9, "eval_loss": 0.45}))
    events.append(("message", "The job has successfully completed <b>ok</b>", None))
    return events


@pytest.fixture
def service(tmp_path: Path) -> Service:
    sessions = make_sessions(make_engine(f"sqlite:///{tmp_path / 'service.db'}"))
    acme_key, other_key = create_key(sessions, "acme"), create_key(sessions, "globex")
    with sessions() as session:
        acme, other = (session.query(Tenant).filter_by(name=name).one().id for name in ("acme", "globex"))
    acme_job = add_job(sessions, acme, "succeeded", fine_tuned_model="ft:tiny-bert:acme:abc", created_at=1_790_000_000,
                       result_files=["file-result"])
    with sessions.begin() as session:
        session.add(StoredFile(id="file-result", tenant_id=acme, filename="bundle.zip", purpose="fine-tune-results",
                               bytes=123456, path="files/file-result", job_id=acme_job))
    add_events(sessions, acme_job, training_events())
    fresh_job = add_job(sessions, acme, "queued", model=HOSTILE, created_at=1_790_000_100)
    add_events(sessions, fresh_job, [("message", "Validating training file", None)])
    other_job = add_job(sessions, other, "running", model="globex-secret-model")
    add_events(sessions, other_job, [("metrics", "Step 1/4", {"step": 1, "train_loss": 0.9, "total_steps": 4})])
    app = FastAPI()
    app.include_router(dashboard_router(sessions))
    return Service(app, sessions, acme_key, other_key, acme_job, fresh_job, other_job)


def signed_in(service: Service, key: str) -> TestClient:
    client = TestClient(service.app)
    response = client.post("/login", data={"key": key}, follow_redirects=False)
    assert response.status_code == 303, response.text
    return client


def test_login_logout(service: Service) -> None:
    client = TestClient(service.app)
    page = client.get("/")
    assert page.status_code == 200
    assert re.search(r'<form method="post" action="/login">', page.text)
    assert 'type="password"' in page.text and 'name="key"' in page.text
    assert service.acme_job not in page.text

    bad = client.post("/login", data={"key": "esk-not-a-key"}, follow_redirects=False)
    assert bad.status_code == 401
    assert "not valid" in bad.text and 'name="key"' in bad.text
    assert COOKIE not in bad.headers.get("set-cookie", "")
    assert client.post("/login", data={}, follow_redirects=False).status_code == 401

    good = client.post("/login", data={"key": service.acme_key}, follow_redirects=False)
    assert good.status_code == 303 and good.headers["location"] == "/"
    cookie = good.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert service.acme_job in client.get("/").text

    out = client.post("/logout", follow_redirects=False)
    assert out.status_code == 303 and f'{COOKIE}=""' in out.headers["set-cookie"]
    client.cookies.clear()
    assert service.acme_job not in client.get("/").text


def test_revoked_key_signs_out(service: Service) -> None:
    client = signed_in(service, service.acme_key)
    assert service.acme_job in client.get("/").text
    revoke_key(service.sessions, service.acme_key)
    assert 'name="key"' in client.get("/").text
    assert client.get(f"/jobs/{service.acme_job}", follow_redirects=False).status_code == 303


def test_jobs_list_shows_only_own_jobs(service: Service) -> None:
    text = signed_in(service, service.acme_key).get("/").text
    assert service.acme_job in text and service.fresh_job in text
    assert service.other_job not in text and "globex-secret-model" not in text
    assert text.index(service.fresh_job) < text.index(service.acme_job)   # newest first
    assert f'href="/jobs/{service.acme_job}"' in text
    assert '<span class="badge succeeded">succeeded</span>' in text and "badge queued" in text
    assert "2026-09-21 14:13:20 UTC" in text                              # created_at 1_790_000_000
    assert "ft:tiny-bert:acme:abc" in text
    assert "0.4<" in text                                                 # the last metrics event's train loss
    assert 'http-equiv="refresh"' in text                                 # a job is still queued

    other = signed_in(service, service.other_key).get("/").text
    assert service.other_job in other and service.acme_job not in other


def test_job_page(service: Service) -> None:
    client = signed_in(service, service.acme_key)
    page = client.get(f"/jobs/{service.acme_job}")
    assert page.status_code == 200
    text = page.text
    assert "<svg" in text and 'id="loss-chart"' in text
    points = re.search(r'<polyline class="train-loss" points="([^"]+)"', text).group(1).split()
    assert len(points) == 40
    xs = [float(point.split(",")[0]) for point in points]
    ys = [float(point.split(",")[1]) for point in points]
    assert xs == sorted(xs) and ys[0] < ys[-1]          # steps left to right; the loss falls (SVG y grows down)
    assert ">step<" in text and ">loss<" in text and ">accuracy<" in text
    assert text.count("<circle") == 5                 # accuracy at epochs 0-2, eval_loss at epochs 1-2
    assert "epoch 2: eval_loss 0.45" in text
    assert "bundle.zip" in text and "123,456" in text
    assert "Fine-tuning job started" in text
    assert "completed &lt;b&gt;ok&lt;/b&gt;" in text
    assert text.index("successfully completed") < text.index("Fine-tuning job started")   # newest first
    assert 'http-equiv="refresh"' not in text         # succeeded: nothing more to wait for

    fresh = client.get(f"/jobs/{service.fresh_job}").text
    assert "No metrics yet" in fresh and "<svg" not in fresh
    assert 'http-equiv="refresh"' in fresh

    assert client.get(f"/jobs/{service.other_job}").status_code == 404
    assert client.get("/jobs/ftjob-missing").status_code == 404
    assert "globex-secret-model" not in client.get(f"/jobs/{service.other_job}").text
    assert TestClient(service.app).get(f"/jobs/{service.acme_job}", follow_redirects=False).status_code == 303


def test_hostile_names_are_escaped(service: Service) -> None:
    client = signed_in(service, service.acme_key)
    for text in (client.get("/").text, client.get(f"/jobs/{service.fresh_job}").text):
        assert HOSTILE not in text and "<script>" not in text
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&amp;model" in text


def test_chart_geometry() -> None:
    assert loss_chart([]) is None
    assert loss_chart([{"epoch": 0}]) is None
    single = loss_chart([{"step": 1, "train_loss": 0.5, "total_steps": 4}])
    assert single is not None and len(single.line.split()) == 1 and [label for _, label in single.y_ticks] == ["0.5"]
    losses, epochs = split_metrics([{"step": 2, "train_loss": 0.7, "total_steps": 4},
                                    {"step": 1, "train_loss": float("nan"), "total_steps": 4},
                                    {"step": 2, "train_loss": 0.6, "total_steps": 4},   # repeated after a resume
                                    {"epoch": 1, "train_loss": 0.65, "accuracy": True, "f1": 0.7}])
    assert losses == {2.0: 0.6}
    assert [(epoch.epoch, epoch.step, epoch.scores) for epoch in epochs] == [(1, 2.0, {"train_loss": 0.65, "f1": 0.7})]
    chart = loss_chart([{"step": 0, "train_loss": 1.0, "total_steps": 10},
                        {"step": 10, "train_loss": 0.2, "total_steps": 10}])
    assert chart.line == f"{chart.left},{chart.top} {chart.right},{chart.bottom}"
    assert [label for _, label in chart.x_ticks] == ["0", "10"]
    assert [label for _, label in chart.y_ticks] == ["0.2", "1"]
    epochs_only = loss_chart([{"epoch": 0, "accuracy": 0.4}, {"epoch": 1, "train_loss": 0.6, "accuracy": 0.8}])
    assert epochs_only.line == "" and len(epochs_only.markers) == 3 and epochs_only.y2_label == "accuracy"


# --- a real browser -------------------------------------------------------------------------------------------------

@pytest.fixture
def live_url(service: Service) -> Iterator[str]:
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(service.app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.mark.skipif(not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()),
                    reason=f"needs {CHROMIUM} and {CHROMEDRIVER} (Debian: apt-get install chromium chromium-driver)")
def test_dashboard_in_headless_chromium(service: Service, live_url: str) -> None:
    pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By

    with headless_chromium() as browser:
        browser.get(live_url + "/")
        browser.find_element(By.NAME, "key").send_keys("esk-wrong")
        browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        assert "not valid" in browser.find_element(By.CSS_SELECTOR, "[role=alert]").text

        browser.find_element(By.NAME, "key").send_keys(service.acme_key)
        browser.find_element(By.CSS_SELECTOR, "form[action='/login'] button").click()
        assert browser.find_element(By.CSS_SELECTOR, f"a[href='/jobs/{service.acme_job}']").is_displayed()
        assert service.other_job not in browser.page_source
        assert browser.get_cookie(COOKIE)["httpOnly"] is True

        browser.find_element(By.CSS_SELECTOR, f"a[href='/jobs/{service.acme_job}']").click()
        chart = browser.find_element(By.ID, "loss-chart")
        assert chart.is_displayed() and chart.size["width"] > 300 and chart.size["height"] > 100
        assert browser.find_element(By.CSS_SELECTOR, "#loss-chart polyline.train-loss").is_displayed()

        artifacts_dir().mkdir(parents=True, exist_ok=True)
        shot = artifacts_dir() / "serve-dashboard.png"
        assert browser.save_screenshot(str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        browser.find_element(By.CSS_SELECTOR, "form[action='/logout'] button").click()
        assert browser.find_element(By.NAME, "key").is_displayed()
