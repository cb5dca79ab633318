"""Building for a profile: a user's profile file works end to end (build, personalize, infer), `--profile`
overrides the recipe's, and a base that contradicts the profile's precision is refused before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from edge_sdk.cli.main import cli
from edge_sdk.errors import ConfigError
from edge_sdk.host.config import BuildConfig, load_recipe

USER_PROFILE = Path(__file__).resolve().parents[1] / "profiles" / "edge-gateway.toml"
LABELS = ("business", "sport", "tech")


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def recipe(folder: Path, model: Path, profile: str) -> Path:
    path = folder / "recipe.toml"
    path.write_text(f'model = "{model.as_posix()}"\ntask = "seq-cls"\nlabels = {list(LABELS)!r}\n'
                    f'max_length = 32\nprofile = "{profile}"\n'.replace("'", '"'), encoding="utf-8")
    return path


def test_a_user_profile_file_builds_personalizes_and_infers(fixtures_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    built = run("build", recipe(tmp_path, fixtures_dir / "tiny-model", "cpu"), "--profile", USER_PROFILE,
                "--out", out, "--json")
    assert built.exit_code == 0, (built.stdout, built.stderr)
    manifest = json.loads((out / "manifest.json").read_text())
    profile = manifest["profile"]
    assert (profile["name"], profile["source"]) == ("edge-gateway", USER_PROFILE.name)  # the flag won; the name only
    assert profile["session"]["intra_op_threads"] == 2 and profile["limits"]["memory_budget"] == "1GiB"
    trained = run("personalize", out, "--data", fixtures_dir / "data" / "train.jsonl", "--epochs", "1",
                  "--backend", "portable", "--json")
    assert trained.exit_code == 0, (trained.stdout, trained.stderr)
    report = json.loads(trained.stdout)
    assert report["memory"]["budget_bytes"] == 1 << 30  # the profile's limit applied on the device
    inferred = run("infer", out, "--text", "shares rose", "--json")
    assert inferred.exit_code == 0, (inferred.stdout, inferred.stderr)
    assert json.loads(inferred.stdout)["predictions"][0]["label"] in LABELS


def test_a_recipe_names_a_profile_file_relative_to_itself(fixtures_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "boards").mkdir()
    (tmp_path / "boards" / "mine.toml").write_text(USER_PROFILE.read_text(), encoding="utf-8")
    config = load_recipe(recipe(tmp_path, fixtures_dir / "tiny-model", "boards/mine.toml"))
    resolved, profile = config.for_profile()
    assert profile.name == "mine" and profile.source == str(tmp_path / "boards" / "mine.toml")
    assert resolved.base == "float32"


@pytest.mark.parametrize(("profile", "base", "expected"), [
    ("cpu", None, "float32"),
    ("cpu-int8", None, "int8-compute"),
    ("cpu", "int8-compute", "int8-compute"),   # the older way to ask for cpu-int8
    ("fpga-vitisai", "int8-storage", "int8-storage"),
])
def test_the_profile_implies_the_base(fixtures_dir: Path, profile: str, base: str | None, expected: str) -> None:
    config = BuildConfig(model_dir=fixtures_dir / "tiny-model", task="seq-cls", labels=LABELS, profile=profile,
                         base=base)
    assert config.for_profile()[0].base == expected


@pytest.mark.parametrize(("changes", "message"), [
    ({"profile": "cpu-int8", "base": "float32"}, "profile 'cpu-int8' computes in int8 .* but the base is 'float32'"),
    ({"profile": "fpga-vitisai", "base": "int8-compute"}, "quantizes a static int8 target graph from the float32"),
    ({"profile": str(USER_PROFILE), "max_length": 128}, "max sequence length 128 exceeds profile 'edge-gateway'"),
    ({"profile": "npu"}, "unknown profile 'npu'"),
])
def test_contradictions_are_refused_before_any_work(fixtures_dir: Path, changes: dict, message: str) -> None:
    config = BuildConfig(model_dir=fixtures_dir / "tiny-model", task="seq-cls", labels=LABELS, **changes)
    with pytest.raises(ConfigError, match=message):
        config.validate()


def test_cli_refuses_a_contradiction_in_one_line_and_writes_nothing(fixtures_dir: Path, tmp_path: Path) -> None:
    result = run("build", fixtures_dir / "tiny-model", "--task", "seq-cls", "--labels", ",".join(LABELS),
                 "--profile", "cpu-int8", "--base", "float32", "--out", tmp_path / "b")
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("Error: profile 'cpu-int8' computes in int8")
    assert not (tmp_path / "b").exists()


def test_dry_run_shows_the_resolved_profile(fixtures_dir: Path, tmp_path: Path) -> None:
    result = run("build", fixtures_dir / "tiny-model", "--task", "seq-cls", "--labels", ",".join(LABELS),
                 "--profile", "cpu-int8", "--out", tmp_path / "b", "--dry-run", "--json")
    assert result.exit_code == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["config"]["base"] == "int8-compute" and plan["profile"]["precision"] == "int8-dynamic"
    assert "int8-compute" in [stage["name"] for stage in plan["stages"]]
