"""A build that runs out of disk at any of its writes fails with "disk is full" and leaves the bundle that was
at --out exactly as it was, and no staging or scratch folder beside it."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from storage_faults import disk_full_at, tree_snapshot

from edge_sdk.bundle.store import verify_bundle
from edge_sdk.cli.main import cli


def _build(model: Path, out: Path, seed: int):
    return CliRunner().invoke(cli, ["build", str(model), "--task", "seq-cls", "--labels", "a,b,c", "--out", str(out),
                                    "--overwrite", "--seed", str(seed)])


@pytest.mark.slow  # one tiny build per write: about 16 builds, 1.5 minutes on 2 cores
def test_disk_full_at_every_write_of_a_build_keeps_the_previous_bundle(fixtures_dir: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    out = site / "bundle"
    model = fixtures_dir / "tiny-model"
    assert _build(model, out, seed=0).exit_code == 0
    with disk_full_at(site, fail_at=None) as counting:  # the same build, counting its writes under site/
        assert _build(model, out, seed=1).exit_code == 0
    writes = len(counting.writes)
    assert writes >= 10, counting.writes  # export scratch, staged graphs and weights, manifest, the two renames
    previous = tree_snapshot(out)

    for fail_at in range(1, writes + 1):
        with disk_full_at(site, fail_at) as plan:
            result = _build(model, out, seed=2)
        where = f"write {fail_at} of {writes} ({plan.failed})"
        assert result.exit_code == 1, (where, result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit), (where, repr(result.exception))
        message = result.stderr.strip().splitlines()[-1]
        assert message.startswith("Error: ") and "disk is full" in message, (where, message)
        assert tree_snapshot(out) == previous, where
        assert sorted(path.name for path in site.iterdir()) == ["bundle"], where  # no staging, scratch or .old
    verify_bundle(out)
