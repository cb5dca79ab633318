"""`edge-sdk` commands. Each one translates flags into an API call and prints the result.

Exit codes: 0 success, 1 an EdgeSdkError (message on stderr), 2 a usage error (click's own).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import click

import edge_sdk
from edge_sdk.cli.adapters import adapters
from edge_sdk.cli.cache import cache
from edge_sdk.cli.coverage import coverage
from edge_sdk.cli.finetune import finetune
from edge_sdk.cli.fleet import fleet
from edge_sdk.cli.native import cmake_dir, header
from edge_sdk.cli.output import emit_json, note, stderr_is_terminal
from edge_sdk.cli.profiles import profiles
from edge_sdk.cli.serve import serve
from edge_sdk.cli.signing import keys, sign
from edge_sdk.cli.sources import (
    choose_deepspeed_accelerator,
    load_build_config,
    prepare_host_environment,
    target_module_list,
)
from edge_sdk.device.adapter_history import DEFAULT_KEEP
from edge_sdk.errors import DependencyError, EdgeSdkError
from edge_sdk.host.config import ADAPTERS, BASES, LEGACY_METHODS, LEGACY_PRECISIONS  # torch-free
from edge_sdk.tasks.registry import TASKS


class _UserError(click.ClickException):
    exit_code = 1


class _Group(click.Group):
    """Turns the SDK's own errors into a one-line message and exit code 1, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except EdgeSdkError as exc:
            raise _UserError(str(exc)) from exc
        except OSError as exc:  # the system refused a read or write (permissions, an I/O error): say which file
            where = f": {exc.filename}" if exc.filename else ""
            raise _UserError(f"the system refused a file operation ({exc.strerror or exc}){where}") from exc


@click.group(cls=_Group)
@click.version_option(edge_sdk.__version__, prog_name="edge-sdk")
@click.option("-v", "--verbose", is_flag=True, help="Log details to stderr.")
def cli(verbose: bool) -> None:
    """Build adaptable ONNX bundles from Hugging Face models; personalize and run them on devices."""
    choose_deepspeed_accelerator()
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


# --- host -----------------------------------------------------------------------------------------------

@cli.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Folder to write the bundle to.")
@click.option("--task", help="The task (a recipe names its own): " + "; ".join(f"{name}: {spec.summary}"
                                                                   for name, spec in TASKS.items()) + ".")
@click.option("--labels", help="Tasks with labels: comma-separated labels, or a file with one label per line.")
@click.option("--adapter", type=click.Choice(ADAPTERS),
              help="How the adapter is parametrised: lora (default) or dora (weight-decomposed LoRA).")
@click.option("--base", type=click.Choice(BASES),
              help="How the frozen base is stored and computes: float32 (default); int8-storage (int8 weights, "
                   "float compute: QLoRA's idea); int8-compute (int8 weights in integer products: smaller and "
                   "faster, portable training step only).")
@click.option("--method", type=click.Choice(list(LEGACY_METHODS)),
              help="Alias: lora|dora = --adapter; qlora = --adapter lora --base int8-storage.")
@click.option("--rank", type=int, help="LoRA rank (default 8).")
@click.option("--alpha", type=float, help="LoRA alpha (default 16).")
@click.option("--freeze-lora-a", is_flag=True, default=None,
              help="Keep LoRA's A matrices at the bundle's initial values; devices train B and the head only "
                   "(FFA-LoRA: averaging such adapters across a fleet is exact). Not with --adapter dora.")
@click.option("--target-modules", help="Comma-separated module names LoRA adapts (default: per architecture).")
@click.option("--max-length", type=int, help="Maximum tokens per example (default 128).")
@click.option("--profile", help="Target profile: a built-in name (`edge-sdk profiles list`; default cpu) or the path "
              "of a .toml profile file; overrides the recipe's.")
@click.option("--seed", type=int, help="Seed for new weights (default 0).")
@click.option("--calibration-data", type=click.Path(path_type=Path),
              help="Task data (JSONL/CSV) calibrating the static int8 target graph of an int8-qdq profile "
                   "(--profile fpga-vitisai).")
@click.option("--precision", type=click.Choice(list(LEGACY_PRECISIONS)),
              help="Alias: fp32 = --base float32; int8 = --base int8-compute.")
@click.option("--adapter-from", type=click.Path(path_type=Path),
              help="A PEFT adapter folder to start from (its rank, alpha, targets and DoRA setting win).")
@click.option("--bundle-id", help="The bundle's identity for rollback protection on devices (default: the recipe's "
                                  "or model folder's name and the task).")
@click.option("--bundle-version", type=click.IntRange(min=1),
              help="The release number devices compare (default 1); raise it with every release of a bundle id.")
@click.option("--sign", "sign_key", type=click.Path(path_type=Path),
              help="Sign the bundle with this private key (edge-sdk.key from `edge-sdk keys generate`).")
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle at --out.")
@click.option("--dry-run", is_flag=True, help="Print the resolved settings and the build's stages; build nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with the result.")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines; only errors (and the --json result).")
@click.option("--depfile", type=click.Path(path_type=Path),
              help="Write a Make/Ninja depfile: OUT/manifest.json and every file the build read.")
@click.option("--cache-dir", type=click.Path(path_type=Path),
              help="The build cache (default $EDGE_SDK_CACHE_DIR, else ~/.cache/edge-sdk/builds).")
@click.option("--no-cache", is_flag=True, help="Build from scratch; neither read nor fill the build cache.")
def build(source: Path, out: Path, task: str | None, labels: str | None, adapter: str | None, base: str | None,
          method: str | None, rank: int | None, alpha: float | None, freeze_lora_a: bool | None,
          target_modules: str | None, max_length: int | None, profile: str | None, seed: int | None,
          calibration_data: Path | None, precision: str | None, adapter_from: Path | None, bundle_id: str | None,
          bundle_version: int | None, sign_key: Path | None, overwrite: bool, dry_run: bool, as_json: bool,
          quiet: bool, depfile: Path | None, cache_dir: Path | None, no_cache: bool) -> None:
    """Build a bundle from a model folder, a .gguf file or a recipe (models/*.toml).

    Builds are reproducible (the same inputs give the same bytes), cached by their inputs, and never use the
    network: the model must be local."""
    prepare_host_environment()
    try:
        from edge_sdk.host.build import build as build_with_cache
        from edge_sdk.host.build import describe_build
    except ImportError as exc:
        raise DependencyError(
            f"`edge-sdk build` runs on the host and needs torch, transformers and peft ({exc.name} is missing); "
            "install them with `pip install edge-sdk[host]`"
        ) from exc
    config = load_build_config(source, task, labels, adapter=adapter, base=base, method=method, rank=rank,
                               alpha=alpha, freeze_lora_a=freeze_lora_a or None,
                               target_modules=target_module_list(target_modules), max_length=max_length,
                               profile=profile, seed=seed, precision=precision, bundle_id=bundle_id,
                               bundle_version=bundle_version, calibration_data=calibration_data)
    if adapter_from is not None:
        from edge_sdk.host.adapter_import import lora_overrides

        # The adapter's own shape wins over recipe and flags: its weights must fit the graphs.
        config = config.with_overrides(adapter_from=adapter_from, **lora_overrides(adapter_from))
    from edge_sdk.bundle.keys import SigningKey

    signing_key = SigningKey.load(sign_key) if sign_key is not None else None  # a bad key fails before the build
    from edge_sdk.host.build_cache import BuildCache, cache_key
    from edge_sdk.host.build_inputs import config_inputs
    from edge_sdk.host.depfile import write_depfile

    config.validate()
    resolved, _profile = config.for_profile()
    labels_file = Path(labels) if labels and Path(labels).is_file() else None
    inputs = config_inputs(resolved, labels_file=labels_file, signing_key=sign_key)
    build_cache = None if no_cache else BuildCache(cache_dir)
    if dry_run:
        key = cache_key(resolved, inputs, signing_key and signing_key.key_id)
        hit = build_cache is not None and build_cache.lookup(key) is not None
        plan = describe_build(config) | {
            "out": str(out), "signed_by": signing_key and signing_key.key_id,
            "inputs": [{"role": item.role, "path": str(item.path), "sha256": item.sha256, "bytes": item.size}
                       for item in inputs],
            "cache": {"dir": None if build_cache is None else str(build_cache.root), "key": key, "hit": hit}}
        if as_json:
            emit_json(plan)
        else:
            for number, stage in enumerate(plan["stages"], start=1):
                click.echo(f"{number:2}. {stage['name']}: {stage['does']}")
            click.echo(f"inputs: {len(inputs)} files, {sum(item.size for item in inputs) / 1e6:.1f} MB; "
                       + ("the build cache holds this bundle" if hit else "not in the build cache"))
        return
    result = build_with_cache(config, out, overwrite=overwrite, progress=None if as_json or quiet else note,
                              sign=signing_key, cache=build_cache, inputs=inputs)
    if depfile is not None:
        write_depfile(depfile, result.bundle / "manifest.json", [item.path for item in inputs])
    path, manifest = result.bundle, result.manifest
    size = sum(result.sizes.values())
    signed_by = signing_key and signing_key.key_id
    target = _target_summary(path, manifest)
    if as_json:
        emit_json({"bundle": str(path), "manifest_sha256": result.manifest_sha256, "cached": result.cached,
                   "task": manifest.task, "labels": manifest.labels, "bytes": size, "files": len(manifest.files),
                   "sizes": result.sizes, "seconds": result.seconds,
                   "validation": manifest.build["validation_max_abs_diff"], "bundle_id": manifest.bundle_id,
                   "version": manifest.version, "signed_by": signed_by, "profile": manifest.profile["name"],
                   "target": target and target["json"], "warnings": result.warnings})
    elif not quiet:
        how = "copied from the build cache" if result.cached else "built"
        click.echo(f"{how}: {path} ({size / 1e6:.1f} MB, {result.seconds} s), {manifest.bundle_id} "
                   f"version {manifest.version}" + (f", signed by key {signed_by}" if signed_by else ""))
        if target:
            click.echo(target["text"])


def _target_summary(path: Path, manifest) -> dict | None:
    """What a build for a static-int8 profile made: the target graph's validation and its coverage report."""
    spec = manifest.target_spec
    if spec is None:
        return None
    from edge_sdk.targets.coverage import format_coverage

    coverage = json.loads((path / spec.coverage).read_text(encoding="utf-8")) if spec.coverage else None
    validation = spec.validation
    text = (f"target graph {spec.model} for {spec.profile}: batch {spec.static_shapes[0]} x "
            f"{spec.static_shapes[1]} tokens, opset {spec.opset}, {spec.quantization.get('scheme')} QDQ; against "
            f"float32 on the CPU: predictions agree {validation.get('prediction_agreement', float('nan')):.1%}, "
            f"max |logits diff| {validation.get('max_abs_logits_diff', float('nan')):.3g}")
    if coverage is not None:
        text += "\n" + format_coverage(coverage)
    summary = coverage and {key: coverage[key] for key in ("provenance", "accelerator", "nodes", "partitions")} | {
        "flops_share": coverage["flops"]["share"], "boundaries": coverage["boundaries"]["count"]}
    return {"text": text, "json": {"model": spec.model, "profile": spec.profile, "validation": validation,
                                   "coverage": summary}}


# --- bundle ---------------------------------------------------------------------------------------------

def _count(number: int) -> str:
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if number >= scale:
            return f"{number / scale:.1f}{suffix}"
    return str(number)


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def inspect(bundle: Path, as_json: bool) -> None:
    """Show what a bundle holds."""
    from dataclasses import asdict

    from edge_sdk.bundle.signing import read_signatures
    from edge_sdk.bundle.store import open_bundle
    from edge_sdk.device.adapters import AdapterStore
    from edge_sdk.errors import BundleTrustError

    # Shows any bundle, trusted or not (it runs nothing): the signatures are listed, not checked.
    opened = open_bundle(bundle, verify=False, trust=False)
    manifest = opened.manifest
    adapters = AdapterStore(opened).names()
    try:
        signatures = read_signatures(opened.root)
        signed = ", ".join(dict.fromkeys(s.key_id for s in signatures)) if signatures else "no (unsigned)"
        signed_by = [s.key_id for s in signatures] if signatures else []
    except BundleTrustError as exc:
        signed, signed_by = f"? {exc}", None
    if as_json:
        emit_json(asdict(manifest) | {"adapters": adapters, "signed_by": signed_by})
        return
    size = sum(entry.size for entry in manifest.files)
    peft = manifest.peft_spec
    lines = [
        f"bundle      {opened.root}",
        f"bundle id   {manifest.bundle_id}, version {manifest.version}",
        f"signed by   {signed}",
        f"task        {manifest.task}",
        f"labels      {', '.join(manifest.labels) or '(none: the task has no label list)'}",
        f"model       {manifest.model['architecture']} ({_count(manifest.model['parameters'])} parameters) "
        f"from {manifest.model['source']}",
        f"adapter     {peft.adapter} r={peft.rank} alpha={peft.alpha:g} on {', '.join(peft.target_modules)}; "
        f"trains {peft.trainable_parameters:,} parameters"
        + ("; LoRA A frozen (--freeze-lora-a: the adapter is B and the head)" if peft.freeze_lora_a else ""),
        f"base        {manifest.base}",
        f"inputs      {', '.join(spec.name for spec in manifest.inputs)} (max length {manifest.max_length})",
        f"backends    {', '.join(manifest.training_backends)}",
        f"precision   {manifest.compute_precision}",
        f"generation  {'KV-cache graphs (' + manifest.task + ')' if manifest.generation else 'no'}",
        f"profile     {_profile_line(manifest.profile)}",
        f"files       {len(manifest.files)} ({size / 1e6:.1f} MB)",
        f"adapters    {', '.join(adapters)}",
        f"built with  edge-sdk {manifest.sdk_version}, schema {manifest.schema_version}",
    ]
    click.echo("\n".join(lines))


def _profile_line(section: dict) -> str:
    from edge_sdk.profiles import profile_from_dict

    profile = profile_from_dict(section)
    return f"{profile.name} ({profile.precision}; {' > '.join(profile.provider_names)})"


def _trust_policy(trusted_keys: tuple[Path, ...]):
    """The policy of ``--trusted-key`` flags plus ``EDGE_SDK_TRUSTED_KEYS`` (None when neither is given). The
    device's record of accepted versions is checked (when this is a device: the variable is set), never
    written: verifying or unpacking an old release must not change what the device accepts."""
    from edge_sdk.bundle.signing import TrustPolicy
    from edge_sdk.bundle.trust import TRUSTED_KEYS_VARIABLE

    environment = os.environ.get(TRUSTED_KEYS_VARIABLE)
    paths = [*trusted_keys, *([Path(environment)] if environment else [])]
    if not paths:
        return None
    origin = " and ".join(([f"--trusted-key {', '.join(map(str, trusted_keys))}"] if trusted_keys else [])
                          + ([f"{TRUSTED_KEYS_VARIABLE}={environment}"] if environment else []))
    return TrustPolicy.from_paths(paths, origin=origin, rollback="check" if environment else "off")


_trusted_key_option = click.option(
    "--trusted-key", "trusted_keys", multiple=True, type=click.Path(path_type=Path),
    help="A public key (.pub) or folder of them whose signature the bundle must carry (repeatable; "
         "EDGE_SDK_TRUSTED_KEYS is added).")


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@_trusted_key_option
@click.option("--json", "as_json", is_flag=True)
def verify(bundle: Path, trusted_keys: tuple[Path, ...], as_json: bool) -> None:
    """Check a bundle's signature (given trusted keys) and hash every file against its manifest (refreshing the
    bundle's verification stamp). BUNDLE may also be an archive (.tar.gz): it is checked as `unpack` would,
    without installing anything."""
    from edge_sdk.bundle.signing import signature_status
    from edge_sdk.bundle.store import verify_bundle

    policy = _trust_policy(trusted_keys)
    if bundle.is_file():
        _verify_archive(bundle, policy, as_json)
        return
    manifest = verify_bundle(bundle, trust=policy if policy is not None else False)
    status = signature_status(bundle, policy)
    if as_json:
        emit_json({"bundle": str(bundle), "ok": True, "files": len(manifest.files), "bundle_id": manifest.bundle_id,
                   "version": manifest.version, "signed": bool(status.key_ids), "signed_by": status.key_ids,
                   "trust_checked": policy is not None, "verified_by": status.verified_by})
        return
    if status.verified_by:
        signed = f"signed by trusted key {', '.join(status.verified_by)}"
    elif status.key_ids:
        signed = f"signed by key {', '.join(status.key_ids)} (not checked: give --trusted-key PUB)"
    else:
        signed = "not signed"
    click.echo(f"ok: {len(manifest.files)} files match the manifest; {manifest.bundle_id} version "
               f"{manifest.version}, {signed}")


def _verify_archive(archive: Path, policy, as_json: bool) -> None:
    from edge_sdk.bundle.archive import check_archive
    from edge_sdk.bundle.signing import check_manifest_signature, parse_signatures

    verified_by: list[str] = []

    def check(manifest_bytes: bytes, signature_bytes: bytes | None, source: str) -> None:
        verified_by.extend(check_manifest_signature(manifest_bytes, signature_bytes, source, policy))

    checked = check_archive(archive, check_signature=check if policy is not None else None)
    signed_by = ([s.key_id for s in parse_signatures(checked.signature, f"{archive}:manifest.sig")]
                 if checked.signature is not None else [])
    manifest = checked.manifest
    if as_json:
        emit_json({"bundle": str(archive), "archive": True, "ok": True, "files": checked.files,
                   "bundle_id": manifest.bundle_id, "version": manifest.version, "signed": bool(signed_by),
                   "signed_by": signed_by, "trust_checked": policy is not None, "verified_by": verified_by})
        return
    signed = (f"signed by trusted key {', '.join(verified_by)}" if verified_by else
              f"signed by key {', '.join(signed_by)} (not checked: give --trusted-key PUB)" if signed_by else
              "not signed")
    click.echo(f"ok: archive holds {checked.files} files matching the manifest; {manifest.bundle_id} version "
               f"{manifest.version}, {signed}")


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Archive to write (.tar.gz).")
def pack(bundle: Path, out: Path) -> None:
    """Pack a bundle into one .tar.gz file for shipping, checking every file as it is read."""
    from edge_sdk.bundle.archive import pack_bundle

    click.echo(f"packed {pack_bundle(bundle, out)}")


@cli.command()
@click.argument("archive", type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path),
              help="Folder to install the bundle as (it must not exist, unless --overwrite).")
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle at --out (its adapters too).")
@click.option("--max-bytes", type=click.IntRange(min=0), default=None,
              help="Refuse an archive whose files add up to more bytes than this (default 64 GiB).")
@_trusted_key_option
@click.option("--json", "as_json", is_flag=True)
def unpack(archive: Path, out: Path, overwrite: bool, max_bytes: int | None, trusted_keys: tuple[Path, ...],
           as_json: bool) -> None:
    """Check and install a bundle archive: the signature first (given trusted keys), then only the files its
    manifest lists, each hash-checked."""
    from edge_sdk.bundle.archive import DEFAULT_MAX_BYTES, unpack_bundle

    policy = _trust_policy(trusted_keys)
    result = unpack_bundle(archive, out, overwrite=overwrite, trust=policy if policy is not None else False,
                           max_bytes=DEFAULT_MAX_BYTES if max_bytes is None else max_bytes)
    if as_json:
        emit_json({"bundle": str(result.path), "files": result.files, "bytes": result.bytes,
                   "signed": result.signed})
    else:
        click.echo(f"unpacked {result.path} ({result.files} files, {result.bytes / 1e6:.1f} MB, all match the "
                   "manifest)")


# --- device ---------------------------------------------------------------------------------------------

def _open(bundle: Path, threads: int | None, verify: str = "stamp", strict: bool = False, profile: str | None = None):
    from edge_sdk.device.runtime import DeviceBundle

    return DeviceBundle.open(bundle, verify=verify, threads=threads, strict=strict, profile=profile)


_wait_option = click.option(
    "--wait", type=click.FloatRange(min=0), default=0, show_default=True,
    help="Seconds to wait while another process writes this bundle's adapters (0: fail at once, naming it).")
_threads_option = click.option("--threads", type=click.IntRange(min=0), help="Intra-op threads (default: profile).")


def _target_options(command):
    """--profile and --strict: which execution providers the sessions use, and whether a missing one is an error."""
    command = click.option("--strict", is_flag=True,
                           help="Fail (exit 1) when a provider of the profile is not installed, instead of falling "
                                "back to the CPU with a warning.")(command)
    return click.option("--profile", "run_profile", metavar="NAME|FILE.toml",
                        help="Run with this execution-provider profile instead of the bundle's (a built-in name or "
                             "a .toml file).")(command)


_verify_option = click.option(
    "--verify", "verify", type=click.Choice(["stamp", "full"]), default="stamp", show_default=True,
    help="How to check the bundle's files first: stamp re-hashes only files changed since the last check "
         "(all of them the first time); full hashes every file.")


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--data", required=True, type=click.Path(path_type=Path), help="Training data (.jsonl or .csv).")
@click.option("--eval-data", type=click.Path(path_type=Path), help="Held-out data scored after every epoch.")
@click.option("--adapter", default="default", show_default=True, help="Name to save the adapter under.")
@click.option("--epochs", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--lr", type=float, default=2e-3, show_default=True, help="Peak learning rate (AdamW).")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--warmup", type=click.FloatRange(0, 1, max_open=True), default=0.1, show_default=True,
              help="Fraction of steps spent warming up the learning rate.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the batch shuffling.")
@click.option("--backend", default="auto", show_default=True,
              help="Training backend: auto (ort-training when the training build is installed, else portable), "
                   "ort-training or portable.")
@click.option("--start-from", help="Adapter to start from (default: --adapter itself if it exists, else 'initial').")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted run of this adapter from its last checkpoint (same data and flags; "
                   "the checkpoint flags may differ).")
@click.option("--checkpoint-every", type=click.IntRange(min=0), default=50, show_default=True,
              help="Checkpoint after every N optimizer steps (0: off). Epoch ends and the last step always are.")
@click.option("--checkpoint-seconds", type=click.FloatRange(min=0), default=120.0, show_default=True,
              help="Also checkpoint after the first step that ends S seconds after the previous checkpoint (0: off).")
@click.option("--gate-margin", type=float, default=0.0, show_default=True,
              help="With --eval-data: how much worse (in the task metric) the new adapter may score than the current "
                   "one and still replace it.")
@click.option("--no-gate", is_flag=True,
              help="Make the new adapter current without the held-out comparison (it must still load and be finite).")
@click.option("--keep-generations", type=click.IntRange(min=1), default=DEFAULT_KEEP, show_default=True,
              help="How many generations of the adapter to keep for `edge-sdk adapters rollback`.")
@_wait_option
@click.option("--memory-budget", metavar="SIZE",
              help="Peak memory allowed (e.g. 512MiB, 1.5GiB, 800MB): the batch size is lowered to fit the estimate, "
                   "or training is refused before loading (default: the bundle profile's memory_budget, if any).")
@_threads_option
@_target_options
@_verify_option
@click.option("--json", "as_json", is_flag=True)
def personalize(bundle: Path, data: Path, eval_data: Path | None, adapter: str, epochs: int, lr: float,
                batch_size: int, warmup: float, seed: int, backend: str, start_from: str | None, resume: bool,
                checkpoint_every: int, checkpoint_seconds: float, gate_margin: float, no_gate: bool,
                keep_generations: int, wait: float | None, memory_budget: str | None, threads: int | None,
                strict: bool, run_profile: str | None, verify: str, as_json: bool) -> None:
    """Fine-tune the bundle's adapter on this device's data.

    The new adapter replaces the current one only if it passes the gate: it loads, its losses were finite and,
    with --eval-data, it scores no worse than the current adapter (within --gate-margin). Otherwise the current
    one keeps serving, the new one is kept as a rejected generation, and the output says why (exit code 0)."""
    from edge_sdk.device.adapter_gate import GateSettings
    from edge_sdk.device.personalize import CheckpointPolicy, EpochReport, StepReport, TrainingSettings

    device_bundle = _open(bundle, threads, verify, strict, run_profile)
    settings = TrainingSettings(epochs=epochs, learning_rate=lr, batch_size=batch_size, warmup_fraction=warmup,
                                seed=seed)
    policy = CheckpointPolicy(every_steps=checkpoint_every, every_seconds=checkpoint_seconds)
    bar = None

    def on_step(report: StepReport) -> None:
        nonlocal bar
        if as_json or not stderr_is_terminal():
            return
        if bar is None:
            bar = click.progressbar(length=report.total_steps, label="training", file=click.get_text_stream("stderr"))
            bar.__enter__()
        bar.label = f"epoch {report.epoch} loss {report.loss:.4f}"
        bar.update(1)

    def on_epoch(report: EpochReport) -> None:
        if as_json:
            return
        line = f"epoch {report.epoch}: train loss {report.train_loss:.4f}"
        if report.eval_metrics:
            line += "".join(f", eval {key} {value:.4f}" for key, value in report.eval_metrics.items()
                            if isinstance(value, float))
        note(("\n" if bar else "") + line)

    try:
        result = device_bundle.personalize(data, eval_data, adapter=adapter, settings=settings, backend=backend,
                                           start_from=start_from, on_step=on_step, on_epoch=on_epoch, resume=resume,
                                           checkpoint_policy=policy,
                                           gate=GateSettings(enabled=not no_gate, margin=gate_margin),
                                           keep_generations=keep_generations, wait=wait, memory_budget=memory_budget)
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    if as_json:
        emit_json(result.to_dict())
        return
    if not result.accepted:
        kept = (f"generation {result.current_generation} of {result.adapter!r} keeps serving"
                if result.current_generation is not None else f"no adapter {result.adapter!r} was made")
        stored = f"; the new one is stored as rejected generation {result.generation}" if result.generation else ""
        click.echo(f"kept the current adapter: {result.gate['reason']}; {kept}{stored}")
        return
    after = result.history[result.best_epoch - 1]["eval"]
    summary = f"saved adapter {result.adapter!r} ({result.steps} steps on {result.examples} examples, {result.backend}"
    summary += f", continued from {result.started_from!r}" if result.started_from != "initial" else ""
    summary += f", resumed from step {result.resumed_from_step}" if result.resumed_from_step is not None else ""
    summary += f", generation {result.generation})"
    if result.before and after:
        metric = device_bundle.task.metric
        summary += (f"; eval {metric} {result.before[metric]:.4f} -> {after[metric]:.4f} "
                    f"(kept epoch {result.best_epoch})")
    click.echo(summary)


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--data", required=True, type=click.Path(path_type=Path), help="Labelled data (.jsonl or .csv).")
@click.option("--adapter", help="Adapter to evaluate (default: 'default' if personalized, else 'initial').")
@_threads_option
@_target_options
@_verify_option
@click.option("--json", "as_json", is_flag=True)
def evaluate(bundle: Path, data: Path, adapter: str | None, threads: int | None, strict: bool, run_profile: str | None,
             verify: str, as_json: bool) -> None:
    """Score an adapter on labelled data."""
    metrics = _open(bundle, threads, verify, strict, run_profile).evaluate(data, adapter=adapter)
    if as_json:
        emit_json(metrics)
    else:
        click.echo("  ".join(f"{key} {value:.4f}" if isinstance(value, float) else f"{key} {value}"
                             for key, value in metrics.items()))


def _predict_options(command):
    """``edge-sdk infer`` gets every registered task's prediction settings as flags (default: the task's)."""
    seen = {}
    for name, spec in TASKS.items():
        for option in spec.predict_options:
            seen.setdefault(option.name, (option, []))[1].append(name)
    for option, tasks in reversed(seen.values()):
        command = click.option("--" + option.name.replace("_", "-"), option.name, type=option.type, default=None,
                               help=f"{'/'.join(tasks)}: {option.help} (default {option.default}).")(command)
    return command


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--text", "texts", multiple=True,
              help="Text to run the task on (repeatable): to classify or tag, a question (qa), a prompt (causal-lm).")
@click.option("--file", "text_file", type=click.File("r", encoding="utf-8"), help="One text per line ('-' for stdin).")
@click.option("--context", help="qa: the text the questions are answered from.")
@click.option("--context-file", type=click.File("r", encoding="utf-8"), help="qa: read the context from a file.")
@click.option("--adapter", help="Adapter to use (default: 'default' if personalized, else 'initial').")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=64, show_default=True,
              help="causal-lm: most tokens to generate.")
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="causal-lm: sampling temperature; 0 picks the most likely token (greedy).")
@click.option("--top-k", type=click.IntRange(min=0), default=0, show_default=True,
              help="causal-lm: sample among the k most likely tokens (0: all).")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True,
              help="causal-lm: sample among the most likely tokens that cover this probability.")
@click.option("--stop", multiple=True, help="causal-lm: stop when this text is generated (repeatable).")
@click.option("--seed", type=int, help="causal-lm: seed of the sampling.")
@click.option("--raw", is_flag=True, help="causal-lm: use the prompt as is, without the model's chat template.")
@click.option("--num-beams", type=click.IntRange(min=1), default=1, show_default=True,
              help="seq2seq: beam search with this many beams (1: greedy).")
@_predict_options
@_threads_option
@_target_options
@_verify_option
@click.option("--json", "as_json", is_flag=True)
def infer(bundle: Path, texts: tuple[str, ...], text_file, context: str | None, context_file, adapter: str | None,
          max_new_tokens: int, temperature: float, top_k: int, top_p: float, stop: tuple[str, ...],
          seed: int | None, raw: bool, num_beams: int, threads: int | None, strict: bool, run_profile: str | None,
          verify: str, as_json: bool, **options) -> None:
    """Run the bundle's task with an adapter: classify, tag, answer, or generate (streamed)."""
    inputs = list(texts) + ([line.rstrip("\n") for line in text_file if line.strip()] if text_file else [])
    if not inputs:
        raise click.UsageError("give at least one --text or a --file")
    if context is not None and context_file is not None:
        raise click.UsageError("give --context or --context-file, not both")
    if context_file is not None:
        context = context_file.read()
    device_bundle = _open(bundle, threads, verify, strict, run_profile)
    if device_bundle.generates:
        from edge_sdk.device.generation import GenerationSettings

        settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                                      top_p=top_p, stop=stop, seed=seed)
        _generate(device_bundle, inputs, settings, adapter, not raw, num_beams, as_json)
        return
    chosen = {name: value for name, value in options.items() if value is not None}
    predictions = device_bundle.infer(inputs, adapter=adapter, context=context, **chosen)
    if as_json:
        emit_json({"predictions": [{"text": text} | p.to_dict()
                                   for text, p in zip(inputs, predictions, strict=True)]})
        return
    for text, prediction in zip(inputs, predictions, strict=True):
        click.echo(f"{prediction.to_text()}\t{text}")


def _generate(device_bundle, prompts: list[str], settings, adapter: str | None, chat: bool, num_beams: int,
              as_json: bool) -> None:
    """Stream each prompt's generated text to stdout as it comes (or print one JSON object per prompt)."""
    for prompt in prompts:
        stream = None if as_json else (lambda piece: click.echo(piece, nl=False))
        result = device_bundle.generate(prompt, settings, adapter=adapter, chat=chat, on_text=stream,
                                        num_beams=num_beams)
        info = result.to_dict()
        if as_json:
            click.echo(json.dumps({"prompt": prompt} | info))
        else:
            click.echo()
            note(f"[{info['tokens']['generated']} tokens, {info['tokens_per_second']:.1f} tokens/s, "
                 f"stop: {info['stop_reason']}]")


cli.add_command(finetune)
cli.add_command(adapters)
cli.add_command(profiles)
cli.add_command(cache)
cli.add_command(coverage)
cli.add_command(keys)
cli.add_command(sign)
cli.add_command(header)
cli.add_command(cmake_dir)
cli.add_command(serve)
cli.add_command(fleet)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
