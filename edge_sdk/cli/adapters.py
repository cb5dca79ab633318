"""`edge-sdk adapters …`: the bundle's named adapters (one per user or skill): list, show, activate,
remove, history and rollback (generations), export (PEFT folder or merged ONNX graph), import (a PEFT folder),
deploy (the adapter merged and quantized into an accelerator profile's static int8 graph)."""

from __future__ import annotations

from pathlib import Path

import click

from edge_sdk.cli.output import emit_json
from edge_sdk.errors import DependencyError

_bundle_argument = click.argument("bundle", type=click.Path(path_type=Path))
_wait_option = click.option(
    "--wait", type=click.FloatRange(min=0), default=0, show_default=True,
    help="Seconds to wait while another process writes this bundle's adapters (0: fail at once, naming it).")


def _store(bundle: Path):
    from edge_sdk.bundle.store import open_bundle
    from edge_sdk.device.adapters import AdapterStore

    opened = open_bundle(bundle, verify=False)
    return opened, AdapterStore(opened)


@click.group()
def adapters() -> None:
    """Manage a bundle's named adapters."""


@adapters.command("list")
@_bundle_argument
@click.option("--json", "as_json", is_flag=True)
def list_adapters(bundle: Path, as_json: bool) -> None:
    """The adapters in the bundle; `*` marks the one used when none is named."""
    from edge_sdk.device.runtime import DeviceBundle

    device_bundle = DeviceBundle.open(bundle, verify=False)
    store, serving = device_bundle.adapters, device_bundle.resolve_adapter(None)
    rows = []
    for name in store.names():
        metadata = store.info(name).metadata
        training = metadata.get("training") or {}
        rows.append({"name": name, "serving": name == serving, "created": metadata.get("created"),
                     "examples": training.get("examples"), "imported_from": training.get("imported_from")})
    if as_json:
        emit_json({"adapters": rows})
        return
    for row in rows:
        origin = (f"imported from {row['imported_from']}" if row["imported_from"]
                  else f"{row['examples']} examples" if row["examples"] is not None else "built in")
        click.echo(f"{'*' if row['serving'] else ' '} {row['name']:24s} {row['created'] or '':26s} {origin}")


@adapters.command()
@_bundle_argument
@click.argument("name")
def show(bundle: Path, name: str) -> None:
    """An adapter's metadata (base id, method, rank, targets, training summary) as JSON."""
    _, store = _store(bundle)
    info = store.info(name)
    emit_json({"name": name, "file": str(info.path)} | info.metadata)


@adapters.command()
@_bundle_argument
@click.argument("name")
@_wait_option
def activate(bundle: Path, name: str, wait: float) -> None:
    """Use NAME whenever infer/evaluate are not given --adapter."""
    _, store = _store(bundle)
    store.activate(name, wait=wait)
    click.echo(f"activated {name!r}")


@adapters.command()
@_bundle_argument
@click.argument("name")
@_wait_option
def remove(bundle: Path, name: str, wait: float) -> None:
    """Delete an adapter and its generations (the bundle's 'initial' adapter stays)."""
    _, store = _store(bundle)
    store.remove(name, wait=wait)
    click.echo(f"removed {name!r}")


@adapters.command()
@_bundle_argument
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
def history(bundle: Path, name: str, as_json: bool) -> None:
    """The generations of adapter NAME, oldest first; `*` marks the one serving."""
    from dataclasses import asdict

    _, store = _store(bundle)
    records, current = store.history(name)
    if as_json:
        emit_json({"adapter": name, "current": current, "keep": store.keep,
                   "generations": [asdict(record) | {"current": record.number == current} for record in records]})
        return
    if not records:
        click.echo(f"{name!r} has no recorded generations yet (written before generations were kept); its next "
                   "personalization starts the history")
        return
    for record in records:
        kept = "" if record.file_kept else "  (pruned)"
        click.echo(f"{'*' if record.number == current else ' '} {record.number:4d}  {record.status:11s} "
                   f"{record.created:26s} {record.source:11s} {record.reason}{kept}")


@adapters.command()
@_bundle_argument
@click.argument("name")
@click.option("--to", "to", type=click.IntRange(min=1),
              help="The generation to restore (default: the accepted one before the current).")
@_wait_option
def rollback(bundle: Path, name: str, to: int | None, wait: float) -> None:
    """Make an earlier generation of adapter NAME serve again."""
    _, store = _store(bundle)
    restored = store.rollback(name, to=to, wait=wait)
    click.echo(f"{name!r} now serves generation {restored.number} ({restored.created}, {restored.source})")


@adapters.command()
@_bundle_argument
@click.argument("name")
@click.option("--format", "format_", type=click.Choice(["peft", "merged-onnx"]), default="peft", show_default=True,
              help="peft: a folder PeftModel.from_pretrained loads; merged-onnx: a standalone .onnx graph with the "
                   "adapter merged into the base weights.")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Folder (peft) or .onnx file (merged-onnx) to write.")
@click.option("--overwrite", is_flag=True, help="Replace what is at --out.")
def export(bundle: Path, name: str, format_: str, out: Path, overwrite: bool) -> None:
    """Export an adapter for use outside this SDK."""
    opened, store = _store(bundle)
    weights = store.load(name)
    if format_ == "peft":
        from edge_sdk.bundle.frozen_lora import frozen_lora_a
        from edge_sdk.device.peft_format import export_peft

        written = export_peft(opened.manifest, weights, out, overwrite=overwrite, frozen=frozen_lora_a(opened))
    else:
        try:
            from edge_sdk.host.merge import export_merged_onnx
        except ImportError as exc:
            raise DependencyError(f"merged-onnx export needs the onnx package ({exc.name} is missing); "
                                  "pip install onnx, or use --format peft") from exc
        written = export_merged_onnx(opened, weights, out, overwrite=overwrite)
    click.echo(f"wrote {written}")


@adapters.command("import")
@_bundle_argument
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--name", required=True, help="Name to store the adapter under.")
@_wait_option
def import_adapter(bundle: Path, folder: Path, name: str, wait: float) -> None:
    """Add a PEFT adapter folder (adapter_config.json + adapter_model.safetensors) as adapter NAME."""
    from edge_sdk.bundle.frozen_lora import frozen_lora_a
    from edge_sdk.device.peft_format import read_peft

    opened, store = _store(bundle)
    weights = read_peft(folder, opened.manifest, frozen=frozen_lora_a(opened))
    store.save(name, weights, {"imported_from": str(folder.resolve()), "source": "import"}, wait=wait)
    click.echo(f"imported {folder} as {name!r}")


@adapters.command()
@_bundle_argument
@click.argument("name")
@click.option("--profile", "profile_name",
              help="The accelerator profile: a built-in name (fpga-vitisai) or a .toml file (default: the bundle's).")
@click.option("--calibration-data", type=click.Path(path_type=Path),
              help="Task data (JSONL/CSV) to calibrate on (default: the calibration inputs the build stored).")
@_wait_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with the result.")
def deploy(bundle: Path, name: str, profile_name: str | None, calibration_data: Path | None, wait: float,
           as_json: bool) -> None:
    """Merge adapter NAME into the float weights and quantize it to the profile's static int8 target graph
    (written to adapters/NAME.PROFILE/), validated against the float adapter; training stays on the CPU."""
    try:
        import onnx  # noqa: F401
        from onnxruntime import quantization  # noqa: F401
    except ImportError as exc:
        raise DependencyError(f"adapters deploy needs the onnx package and onnxruntime's quantization tools "
                              f"({exc.name} is missing); pip install onnx") from exc
    from edge_sdk.bundle.store import open_bundle
    from edge_sdk.profiles import load_profile, profile_from_dict
    from edge_sdk.targets.coverage import format_coverage
    from edge_sdk.targets.deploy import deploy as deploy_adapter

    opened = open_bundle(bundle, verify=True)
    profile = load_profile(profile_name) if profile_name else profile_from_dict(opened.manifest.profile)
    result = deploy_adapter(opened, name, profile, calibration_data=calibration_data, wait=wait)
    if as_json:
        emit_json(result.to_dict())
        return
    validation = result.validation
    size = sum(result.bytes.values())
    click.echo(f"deployed {name!r} for {result.profile}: {result.folder} ({size / 1e6:.1f} MB; "
               f"{', '.join(result.bytes)})")
    click.echo(f"quantization: {result.quantization['scheme']}, {result.quantization['calibration_examples']} "
               f"calibration examples ({result.quantization['calibration_source']}), MatMul/Gemm QDQ-wrapped "
               f"{result.quantization['qdq_wrapped']}")
    line = (f"validation on {validation['examples']} examples: predictions agree "
            f"{validation['prediction_agreement']:.1%}, max |logits diff| {validation['max_abs_logits_diff']:.3g}")
    metric = validation.get("metric")
    if metric:
        key = next(iter(metric["float32"]))
        line += f", {key} {metric['float32'][key]:.4f} (float32) vs {metric['int8_qdq'][key]:.4f} (int8)"
    click.echo(line)
    click.echo(format_coverage(result.coverage))
