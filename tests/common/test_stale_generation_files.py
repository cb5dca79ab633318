"""A run killed while it wrote a name's generation ledger or generation file leaves a temporary in
``.generations/<name>/``; the next run's clean-up removes it, keeping every real file."""

from pathlib import Path

from edge_sdk.device.adapter_history import GENERATIONS_FOLDER, LEDGER_NAME
from edge_sdk.device.checkpoints import CHECKPOINTS_FOLDER, remove_stale_files


def test_temporaries_in_generation_and_checkpoint_folders_are_removed_and_real_files_kept(tmp_path: Path) -> None:
    adapters = tmp_path / "adapters"
    generations = adapters / GENERATIONS_FOLDER / "user"
    generations.mkdir(parents=True)
    (adapters / CHECKPOINTS_FOLDER).mkdir()
    kept = [adapters / "user.safetensors", generations / LEDGER_NAME, generations / "000001.safetensors"]
    for path in kept:
        path.write_bytes(b"real")
    stale = [generations / f".{LEDGER_NAME}.f6b9d856.tmp", generations / ".000002.safetensors.0a1b2c3d.tmp",
             adapters / ".user.safetensors.12345678.tmp", adapters / CHECKPOINTS_FOLDER / ".user.9abcdef0.tmp"]
    for path in stale:
        path.write_bytes(b"half")

    handled = remove_stale_files(adapters)

    assert sorted(handled) == sorted(path.name for path in stale)
    assert not [path for path in stale if path.exists()]
    assert all(path.read_bytes() == b"real" for path in kept)


def test_a_store_without_generations_is_left_alone(tmp_path: Path) -> None:
    adapters = tmp_path / "adapters"
    adapters.mkdir()
    (adapters / "user.safetensors").write_bytes(b"real")
    assert remove_stale_files(adapters) == []
    assert (adapters / "user.safetensors").read_bytes() == b"real"
