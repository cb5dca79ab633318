"""The fine-tuning service as its users run it, for the serve tests: `edge-sdk serve` (and `serve worker`) as
processes on a free loopback port, with a tiny seeded model and a config in a temporary folder; keys made with
`edge-sdk serve keys create`; OpenAI's own client pointed at it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_config(folder: Path, models: dict[str, Path], extra: str = "", lease_seconds: float = 4.0,
                 checkpoint_every: int = 2, queue_url: str | None = None, database_url: str | None = None) -> Path:
    lines = [f'home = "{folder / "home"}"', f'recipes_dir = "{folder / "no-recipes"}"']
    if queue_url:
        lines.append(f'queue_url = "{queue_url}"')
    if database_url:   # a top-level key: it must come before the first table
        lines.append(f'database_url = "{database_url}"')
    lines += ["[models]"] + [f'{name} = "{path}"' for name, path in models.items()]
    lines += ["[worker]", f"lease_seconds = {lease_seconds}", "heartbeat_seconds = 0.5",
              f"checkpoint_every = {checkpoint_every}"]
    path = folder / "serve.toml"
    path.write_text("\n".join(lines) + "\n" + extra, encoding="utf-8")
    return path


def environment() -> dict[str, str]:
    return os.environ | {"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                         "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def edge_sdk(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_sdk", *args], capture_output=True, text=True,
                          env=environment(), timeout=120)


def create_key(config: Path, tenant: str) -> str:
    done = edge_sdk("serve", "keys", "create", "--tenant", tenant, "--config", str(config))
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


class Service:
    """`edge-sdk serve --workers N` (or the API alone plus separate `serve worker` processes), each in its own
    process group, so a test can SIGKILL one and all it started."""

    def __init__(self, config: Path, workers: int = 1, log: Path | None = None) -> None:
        self.config, self.workers = config, workers
        self.port = free_port()
        self.log = log or config.parent / "service.log"
        self.processes: list[subprocess.Popen] = []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _spawn(self, *args: str) -> subprocess.Popen:
        with open(self.log, "ab") as log:
            process = subprocess.Popen([sys.executable, "-m", "edge_sdk", *args], stdout=log, stderr=log,
                                       env=environment(), start_new_session=True)
        self.processes.append(process)
        return process

    def start(self, separate_workers: int = 0) -> Service:
        """Start the API (with its own workers) and ``separate_workers`` more; wait until the API answers. When it
        does not, everything started is killed before the error: a failed start leaves no worker behind."""
        try:
            self._spawn("serve", "--config", str(self.config), "--port", str(self.port), "--workers",
                        str(self.workers))
            for _ in range(separate_workers):
                self.start_worker()
            self._wait_for_api()
        except BaseException:
            self.kill()
            raise
        return self

    def _wait_for_api(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.base_url}/v1/openapi.json", timeout=2).read()
                return
            except OSError:
                if self.processes[0].poll() is not None:
                    raise AssertionError(f"edge-sdk serve exited: {self.log.read_text()[-3000:]}") from None
                time.sleep(0.3)
        raise AssertionError(f"edge-sdk serve did not answer in 60 s: {self.log.read_text()[-3000:]}")

    def start_worker(self) -> subprocess.Popen:
        return self._spawn("serve", "worker", "--config", str(self.config))

    def client(self, key: str):
        from openai import OpenAI

        return OpenAI(base_url=f"{self.base_url}/v1", api_key=key, max_retries=0, timeout=60)

    def kill(self) -> None:
        """SIGKILL every process group it started: the API, its workers and their jobs' processes."""
        for process in self.processes:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(30)
        self.processes = []

    def stop(self) -> None:
        for process in self.processes:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        for process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        self.processes = []


def wait_for(client, job_id: str, statuses: tuple[str, ...] = ("succeeded", "failed", "cancelled"),
             timeout: float = 300.0):
    deadline = time.monotonic() + timeout
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job.status} after {timeout} s"
        time.sleep(0.5)


def check_file_pages(client, uploaded: list[str]) -> None:
    """The tenant's file list, whose files are exactly ``uploaded`` (oldest first, at least 3), pages newest first
    by its cursor: by hand, and through the client's own iterator."""
    first = client.files.list(limit=2)
    assert first.has_more and [f.id for f in first.data] == uploaded[::-1][:2]
    rest = client.files.list(limit=len(uploaded), after=first.data[-1].id)
    assert not rest.has_more and [f.id for f in rest.data] == uploaded[::-1][2:]
    assert [f.id for f in client.files.list(limit=1)] == uploaded[::-1]


def all_events(client, job_id: str) -> list:
    """Every event of a job, oldest first, through the cursor pages."""
    events, after = [], None
    while True:
        page = client.fine_tuning.jobs.list_events(job_id, limit=25, **({"after": after} if after else {}))
        events += page.data
        if not page.has_more:
            return events[::-1]
        after = page.data[-1].id


CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@contextmanager
def headless_chromium() -> Iterator:
    """Debian's Chromium, headless, driven by selenium through Debian's chromedriver (explicit paths: nothing is
    downloaded). A click returns before the next page has loaded, so every lookup waits up to 15 s for what it
    asks for: ask only for what the next page shows."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,1500"):
        options.add_argument(argument)
    options.binary_location = str(CHROMIUM)
    browser = webdriver.Chrome(options=options, service=DriverService(str(CHROMEDRIVER)))
    try:
        browser.set_page_load_timeout(30)
        browser.implicitly_wait(15)
        yield browser
    finally:
        browser.quit()


def dashboard_screenshot(base_url: str, key: str, job_id: str, path: Path) -> None:
    """Sign in to the dashboard, open the job's page and save a screenshot of it."""
    from selenium.webdriver.common.by import By

    with headless_chromium() as browser:
        browser.get(base_url + "/")
        browser.find_element(By.NAME, "key").send_keys(key)
        browser.find_element(By.CSS_SELECTOR, "form[action='/login'] button").click()
        browser.find_element(By.CSS_SELECTOR, f"a[href='/jobs/{job_id}']").click()
        assert browser.find_element(By.ID, "loss-chart").is_displayed()
        path.parent.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(path))


def artifacts_dir() -> Path:
    """Where tests leave what a person looks at afterwards (screenshots): $EDGE_SDK_TEST_ARTIFACTS, else
    build/test-artifacts/."""
    return Path(os.environ.get("EDGE_SDK_TEST_ARTIFACTS") or REPO / "build" / "test-artifacts")
