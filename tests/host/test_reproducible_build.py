"""Builds for pipelines: the same inputs give the same bytes, an unchanged rebuild comes from the build cache,
any input change misses it, `--depfile` lists what the build read, `--quiet`/`--json` suit scripts, and no
build touches the network. Tiny seeded models; the MiniLM checks are in tests/slow/test_reproducible_minilm.py."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from make_fixtures import write_topic_data
from tiny_models import make_tiny_bert, make_tiny_chat_llama

from edge_sdk.bundle.archive import pack_bundle
from edge_sdk.cli.main import cli
from edge_sdk.host.build import build_bundle
from edge_sdk.host.build_inputs import model_files, shaping_versions
from edge_sdk.host.config import BuildConfig
from edge_sdk.host.depfile import depfile_text

LABELS = ("business", "sport", "tech")


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("model") / "tiny-bert", seed=3)


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_chat_llama(tmp_path_factory.mktemp("model") / "tiny-llama", seed=3)


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def built(*args: str | Path) -> dict:
    result = run("build", *args, "--json")
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return json.loads(result.stdout)


def file_hashes(bundle: Path) -> dict[str, str]:
    return {path.relative_to(bundle).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(bundle.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("kind", ["seq-cls-float32", "seq-cls-int8-compute", "causal-lm", "seq-cls-fpga-vitisai"])
def test_the_same_inputs_give_a_byte_identical_bundle_from_any_folder(kind: str, bert: Path, llama: Path,
                                                                       tmp_path: Path) -> None:
    model = llama if kind == "causal-lm" else bert
    moved = Path(shutil.copytree(model, tmp_path / "elsewhere" / model.name))  # another folder, same files

    def config(folder: Path) -> BuildConfig:
        if kind == "causal-lm":
            return BuildConfig(model_dir=folder, task="causal-lm", labels=(), max_length=32)
        if kind.endswith("fpga-vitisai"):  # the static int8 target graph, calibrated by ONNX Runtime
            return BuildConfig(model_dir=folder, task="seq-cls", labels=LABELS, max_length=32, profile="fpga-vitisai",
                               calibration_data=write_topic_data(tmp_path / "calibration.jsonl", 24, seed=1))
        return BuildConfig(model_dir=folder, task="seq-cls", labels=LABELS, max_length=32,
                           base="int8-compute" if kind.endswith("int8-compute") else None)

    first = build_bundle(config(model), tmp_path / "first")
    second = build_bundle(config(moved), tmp_path / "second")
    assert file_hashes(first) == file_hashes(second)
    assert len(file_hashes(first)) >= 5
    # Identical bundles pack into identical archives (same top folder name: it is part of the archive).
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shutil.move(first, tmp_path / "a" / "bundle")
    shutil.move(second, tmp_path / "b" / "bundle")
    archives = [pack_bundle(tmp_path / side / "bundle", tmp_path / f"{side}.tar.gz") for side in "ab"]
    assert archives[0].read_bytes() == archives[1].read_bytes()


def test_the_manifest_records_the_inputs_and_versions_and_no_clock(bert: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    result = built(bert, "--task", "seq-cls", "--labels", labels, "--max-length", "32", "--out", tmp_path / "b")
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    record = manifest["build"]
    expected = {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in model_files(bert)}
    assert record["inputs"]["model"] == expected and "config.json" in expected
    assert {"edge-sdk", "edge-sdk-source", "torch", "transformers", "peft", "onnx", "numpy"} <= set(record["versions"])
    assert record["versions"] == shaping_versions()
    assert "seconds" not in record and "created" not in record
    assert str(tmp_path) not in (tmp_path / "b" / "manifest.json").read_text()  # no absolute path of this machine
    assert result["manifest_sha256"] == hashlib.sha256((tmp_path / "b" / "manifest.json").read_bytes()).hexdigest()

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    built(bert, "--task", "seq-cls", "--labels", labels, "--max-length", "32", "--out", tmp_path / "dated")
    dated = json.loads((tmp_path / "dated" / "manifest.json").read_text())
    assert dated["build"]["created"] == "2023-11-14T22:13:20Z"
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    refused = run("build", bert, "--task", "seq-cls", "--labels", labels, "--out", tmp_path / "never")
    assert refused.exit_code == 1 and "SOURCE_DATE_EPOCH='yesterday'" in refused.stderr
    assert not (tmp_path / "never").exists()


def test_an_unchanged_rebuild_comes_from_the_cache_and_any_change_misses(bert: Path, tmp_path: Path) -> None:
    model = Path(shutil.copytree(bert, tmp_path / "model"))
    cache = tmp_path / "cache"
    common = ("--task", "seq-cls", "--labels", ",".join(LABELS), "--max-length", "32", "--cache-dir", cache,
              "--out", tmp_path / "out", "--overwrite")
    fresh = built(model, *common)
    again = built(model, *common)
    assert (fresh["cached"], again["cached"]) == (False, True)
    plan = json.loads(run("build", model, *common, "--dry-run", "--json").stdout)
    assert plan["cache"]["hit"] is True and {item["role"] for item in plan["inputs"]} == {"model"}
    assert again["manifest_sha256"] == fresh["manifest_sha256"]
    assert set(again) >= {"bundle", "manifest_sha256", "cached", "bytes", "files", "sizes", "warnings"}
    assert again["sizes"] == fresh["sizes"] and sum(again["sizes"].values()) == again["bytes"]

    # Each input change misses: a flag, then a model file's content.
    assert built(model, *common, "--rank", "4")["cached"] is False
    config = json.loads((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(json.dumps(config | {"model_max_length": 77}))
    changed = built(model, *common)
    assert changed["cached"] is False
    # A README beside the model is not an input.
    (model / "README.md").write_text("notes")
    assert built(model, *common)["cached"] is True
    assert built(model, *common, "--no-cache")["cached"] is False

    # A damaged cache entry is dropped and rebuilt, never shipped.
    entry = next(folder for folder in cache.iterdir() if (folder / "bundle" / "manifest.json").is_file()
                 and json.loads((folder / "bundle" / "manifest.json").read_text())["build"]["inputs"]["model"]
                 == json.loads((tmp_path / "out" / "manifest.json").read_text())["build"]["inputs"]["model"]
                 and json.loads((folder / "bundle" / "manifest.json").read_text())["peft"]["rank"] == 8)
    weights = entry / "bundle" / "portable" / "base.weights"
    data = bytearray(weights.read_bytes())
    data[100] ^= 0xFF
    weights.write_bytes(bytes(data))
    rebuilt = built(model, *common)
    assert rebuilt["cached"] is False and any("damaged" in warning for warning in rebuilt["warnings"])
    assert rebuilt["manifest_sha256"] == changed["manifest_sha256"]
    assert built(model, *common)["cached"] is True

    listed = run("cache", "info", "--cache-dir", cache, "--json")
    assert json.loads(listed.stdout)["entries"] >= 3
    assert run("cache", "clear", "--cache-dir", cache).exit_code == 0
    assert json.loads(run("cache", "info", "--cache-dir", cache, "--json").stdout)["entries"] == 0


def test_an_unwritable_cache_warns_and_the_build_still_lands(bert: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    result = built(bert, "--task", "seq-cls", "--labels", ",".join(LABELS), "--max-length", "32",
                   "--cache-dir", blocker / "builds", "--out", tmp_path / "out")
    assert result["cached"] is False and (tmp_path / "out" / "manifest.json").is_file()
    assert any("build cache" in warning for warning in result["warnings"])


def test_the_depfile_lists_every_input_the_build_read(bert: Path, tmp_path: Path) -> None:
    labels = tmp_path / "my labels.txt"
    labels.write_text("\n".join(LABELS))
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(f'model = "{bert}"\ntask = "seq-cls"\nlabels = {json.dumps(list(LABELS))}\nmax_length = 32\n')
    key = tmp_path / "keys"
    assert run("keys", "generate", "--out", key).exit_code == 0
    depfile = tmp_path / "deps" / "bundle.d"
    quiet = run("build", recipe, "--labels", labels, "--out", tmp_path / "out", "--depfile", depfile, "--quiet",
                "--sign", key / "edge-sdk.key")
    assert quiet.exit_code == 0, quiet.stderr
    assert quiet.stdout == "" and quiet.stderr == ""  # --quiet: nothing but errors
    text = depfile.read_text()
    target, _, rest = text.partition(":")
    assert target == str((tmp_path / "out" / "manifest.json").resolve())
    listed = rest.replace("\\\n", " ").split()
    expected = [str(path.resolve()) for path in model_files(bert)]
    assert set(expected) <= set(listed)
    assert str(recipe.resolve()) in listed and str((key / "edge-sdk.key").resolve()) in listed
    assert str(labels.resolve()).replace(" ", "\\ ") in text  # a space is escaped for Make


def test_depfile_escaping_follows_make() -> None:
    text = depfile_text("/b/manifest.json", ["/m/a b.json", "/m/c$d", "/m/e#f", "/m/a b.json"])
    assert text == "/b/manifest.json: \\\n  /m/a\\ b.json \\\n  /m/c$$d \\\n  /m/e\\#f\n"


def test_a_build_never_uses_the_network(bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args, **_kwargs):
        raise AssertionError("a build opened a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    assert built(bert, "--task", "seq-cls", "--labels", ",".join(LABELS), "--max-length", "32",
                 "--out", tmp_path / "out", "--no-cache")["cached"] is False
    remote = run("build", "sentence-transformers/all-MiniLM-L6-v2", "--task", "seq-cls", "--labels", "a,b",
                 "--out", tmp_path / "never")
    assert remote.exit_code == 1 and "never downloads" in remote.stderr and "Traceback" not in remote.stderr
    assert not (tmp_path / "never").exists()
