"""Nothing on the device is ever unpickled: a pickle runs arbitrary code when loaded, and bundles, adapters,
checkpoints and data files reach a device from anywhere.

Two checks: a static one over the device-side packages (no pickle-family imports, no torch.load, every
numpy load refuses pickles, no eval/exec), and a dynamic one that makes every unpickler raise and then runs
what a device does (open, infer, evaluate, personalize with checkpoints, adapter import/export).
"""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest

from edge_sdk.device.adapters import AdapterStore
from edge_sdk.device.peft_format import export_peft, read_peft
from edge_sdk.device.personalize import TrainingSettings
from edge_sdk.device.runtime import DeviceBundle

PACKAGE = Path(__file__).resolve().parents[2] / "edge_sdk"
DEVICE_SIDE = ("device", "bundle", "tasks", "cli", "profiles")
UNPICKLING_MODULES = {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "joblib", "shelve", "marshal",
                      "pandas"}
NUMPY_NAMES = {"np", "numpy"}


def _device_files() -> list[Path]:
    files = sorted(path for folder in DEVICE_SIDE for path in (PACKAGE / folder).rglob("*.py"))
    assert len(files) > 20, "the device-side packages moved: update DEVICE_SIDE"
    return files


def _problems(source: str, where: str) -> list[str]:
    """What in the module ``source`` could unpickle or evaluate file content."""
    found = []
    for node in ast.walk(ast.parse(source, filename=where)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
            if node.module in NUMPY_NAMES and any(alias.name == "load" for alias in node.names):
                found.append(f"{where}:{node.lineno}: imports numpy's load by name (its allow_pickle cannot be "
                             "checked here; call np.load(..., allow_pickle=False))")
        else:
            names = []
        found += [f"{where}:{node.lineno}: imports {name}" for name in names
                  if name.split(".")[0] in UNPICKLING_MODULES]
        if not isinstance(node, ast.Call):
            continue
        function = node.func
        if isinstance(function, ast.Name) and function.id in ("eval", "exec", "compile", "__import__"):
            found.append(f"{where}:{node.lineno}: calls {function.id}()")
        if isinstance(function, ast.Attribute) and function.attr == "load" and isinstance(function.value, ast.Name):
            owner = function.value.id
            if owner == "torch":
                found.append(f"{where}:{node.lineno}: calls torch.load (unpickles)")
            if owner in NUMPY_NAMES:
                refuses = any(keyword.arg == "allow_pickle" and isinstance(keyword.value, ast.Constant)
                              and keyword.value.value is False for keyword in node.keywords)
                if not refuses:
                    found.append(f"{where}:{node.lineno}: {owner}.load without allow_pickle=False")
    return found


def test_device_code_has_no_way_to_unpickle() -> None:
    problems = [problem for path in _device_files()
                for problem in _problems(path.read_text(encoding="utf-8"), str(path.relative_to(PACKAGE.parent)))]
    assert problems == [], "\n".join(problems)


def test_the_static_check_finds_what_it_looks_for() -> None:
    """The checker itself: each forbidden construct is reported (so the test above cannot pass vacuously)."""
    source = ("import pickle\nfrom joblib import load\nimport numpy as np\nimport torch\n"
              "np.load('a.npy')\nnp.load('a.npy', allow_pickle=True)\nnp.load('a.npy', allow_pickle=False)\n"
              "torch.load('a.pt')\neval('1')\nexec('x = 1')\n")
    problems = _problems(source, "probe.py")
    assert [problem.split(": ", 1)[1] for problem in problems] == [
        "imports pickle", "imports joblib", "np.load without allow_pickle=False",
        "np.load without allow_pickle=False", "calls torch.load (unpickles)", "calls eval()", "calls exec()"]


@pytest.fixture
def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every unpickler of the standard library raises (numpy's and others' pickle paths go through these)."""
    import _pickle

    def refuse(*_args, **_kwargs):
        raise AssertionError("something unpickled on the device")

    for module in (pickle, _pickle):
        for name in ("load", "loads", "Unpickler"):
            monkeypatch.setattr(module, name, refuse)


def test_the_unpickling_trap_works(no_unpickling: None) -> None:
    import numpy as np

    with pytest.raises(AssertionError, match="unpickled"):
        pickle.loads(pickle.dumps([1]))
    with pytest.raises(Exception) as caught:   # numpy wraps what its unpickler raised
        np.load(__file__, allow_pickle=True)
    chain, error = [], caught.value
    while error is not None:
        chain.append(str(error))
        error = error.__cause__ or error.__context__
    assert any("unpickled on the device" in message for message in chain), chain


def test_device_workflows_never_unpickle(tiny_bundle: Path, tiny_data: Path, tmp_path: Path,
                                         no_unpickling: None) -> None:
    bundle = DeviceBundle.open(tiny_bundle)
    assert bundle.infer(["market bank shares"])
    assert "accuracy" in bundle.evaluate(tiny_data / "dev.jsonl")
    # Two epochs with evaluation data: the first epoch is checkpointed, the best epoch's adapter is kept.
    settings = TrainingSettings(epochs=2, learning_rate=1e-2, batch_size=16, seed=3)
    result = bundle.personalize(tiny_data / "train.jsonl", tiny_data / "dev.jsonl", adapter="alice",
                                settings=settings)
    assert result.losses
    assert bundle.infer(["market bank shares"], adapter="alice")
    store = AdapterStore(bundle.bundle)
    folder = export_peft(bundle.manifest, store.load("alice"), tmp_path / "peft")
    assert set(read_peft(folder, bundle.manifest)) == set(store.load("alice"))
    assert DeviceBundle.open(tiny_bundle).evaluate(tiny_data / "dev.jsonl", adapter="alice")["examples"] > 0
