"""The service's settings (edge_sdk.serve.config) and store opening (edge_sdk.serve.db): what a config file may
say, what it resolves to, and clear errors naming the file and setting otherwise."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from edge_sdk.errors import ConfigError, DependencyError
from edge_sdk.serve.config import Limits, load_config
from edge_sdk.serve.db import make_engine


def write(folder: Path, text: str) -> Path:
    path = folder / "serve.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_config_resolves_paths_limits_and_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGE_SDK_DATABASE_URL", raising=False)
    monkeypatch.delenv("EDGE_SDK_QUEUE_URL", raising=False)
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "topics.toml").write_text('task = "seq-cls"\n')
    config = load_config(write(tmp_path, '''
home = "state"
recipes_dir = "recipes"
signing_key = "keys/edge-sdk.key"
[models]
mine = "models/bert"
[limits]
max_running_jobs = 2
[tenants.big.limits]
max_queued_jobs = 99
[worker]
lease_seconds = 12
'''))
    assert config.home == tmp_path / "state" and config.signing_key == tmp_path / "keys" / "edge-sdk.key"
    assert config.database == f"sqlite:///{tmp_path / 'state' / 'service.db'}"
    assert config.queue == f"sqlite:///{tmp_path / 'state' / 'queue.db'}"
    assert config.known_models() == {"topics": tmp_path / "recipes" / "topics.toml",
                                     "mine": tmp_path / "models" / "bert"}
    assert config.limits_for("anyone") == Limits(max_running_jobs=2)
    # A tenant's own limits start from the file's [limits], not from the built-in defaults.
    assert config.limits_for("big") == Limits(max_running_jobs=2, max_queued_jobs=99)
    assert config.lease_seconds == 12.0


def test_the_flag_and_environment_win(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_SDK_HOME", str(tmp_path / "from-env"))
    assert load_config().home == tmp_path / "from-env"
    assert load_config(home=tmp_path / "flag").home == tmp_path / "flag"
    monkeypatch.setenv("EDGE_SDK_QUEUE_URL", "redis://queue:6379/0")
    assert load_config(write(tmp_path, 'queue_url = "sqlite:///x.db"\n')).queue == "redis://queue:6379/0"


@pytest.mark.parametrize(("text", "says"), [
    ("bogus = 1\n", "unknown setting 'bogus'"),
    ("[limits]\nmax_file_bytes = -1\n", "[limits].max_file_bytes must be a whole number"),
    ("[limits]\nmax_files = 3\n", "unknown limit 'max_files'"),
    ("[tenants.a.limits]\nmax_queued_jobs = 1.5\n", "[tenants.a.limits].max_queued_jobs"),
    ("[worker]\nlease_seconds = 0\n", "[worker] lease_seconds must be a number > 0"),
    ("[worker]\nthreads = 2\n", "unknown [worker] setting 'threads'"),
    ("home = 3\n", "home must be a path string"),
    ("home = [\n", "not valid TOML"),
])
def test_a_bad_config_names_the_file_and_setting(tmp_path: Path, text: str, says: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert says in str(error.value) and str(path) in str(error.value)


def test_a_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.toml")


def test_database_urls_that_cannot_work_say_why(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a database URL"):
        make_engine("nosuchdb://x")
    if importlib.util.find_spec("psycopg") is None:   # an environment from before psycopg joined the serve extra
        with pytest.raises(DependencyError, match="pip install psycopg") as missing:
            make_engine("postgresql+psycopg://edge:secret@localhost/edge")
        assert "secret" not in str(missing.value)
    with pytest.raises(ConfigError, match="cannot open the database"):
        make_engine(f"sqlite:///{tmp_path / 'no' / 'such' / 'folder' / 'x.db'}")
