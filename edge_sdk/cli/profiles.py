"""`edge-sdk profiles list|show`: the targets a bundle can be built for, built in or from a user's file."""

from __future__ import annotations

import click

from edge_sdk.cli.output import emit_json


@click.group()
def profiles() -> None:
    """Execution-provider profiles (targets): built in, or a .toml file passed by path."""


@profiles.command("list")
@click.option("--json", "as_json", is_flag=True)
def list_profiles(as_json: bool) -> None:
    """The built-in profiles: name, precision, providers in priority order."""
    from edge_sdk.profiles import available_profiles, load_profile

    rows = []
    for name in available_profiles():
        profile = load_profile(name)
        rows.append({"name": name, "precision": profile.precision, "providers": profile.provider_names,
                     "description": profile.description})
    if as_json:
        emit_json({"profiles": rows})
        return
    for row in rows:
        click.echo(f"{row['name']:16s} {row['precision']:13s} {' > '.join(row['providers'])}")
        click.echo(f"{'':16s} {row['description']}")


@profiles.command()
@click.argument("profile")
@click.option("--json", "as_json", is_flag=True)
def show(profile: str, as_json: bool) -> None:
    """Everything a profile says (a built-in name or the path of a .toml file), checked."""
    from edge_sdk.profiles import load_profile

    loaded = load_profile(profile)
    if as_json:
        emit_json(loaded.to_dict())
        return
    click.echo(f"{loaded.name}: {loaded.description}")
    click.echo(f"  source        {loaded.source}")
    click.echo(f"  precision     {loaded.precision}")
    for rank, provider in enumerate(loaded.providers, start=1):
        options = ", ".join(f"{key}={value}" for key, value in provider.options.items())
        library = f" (plugin library {provider.library})" if provider.library else ""
        click.echo(f"  provider {rank}    {provider.name}{library}" + (f": {options}" if options else ""))
    session = loaded.session
    arena = "on" if session.enable_cpu_mem_arena else "off"
    click.echo(f"  session       optimization {session.graph_optimization_level}, threads "
               f"{session.intra_op_threads or 'one per core'}, cpu arena {arena}"
               + "".join(f", {key}={value}" for key, value in session.config.items()))
    if loaded.static_shapes is not None:
        sequence = loaded.static_shapes.sequence or "the bundle's max length"
        click.echo(f"  static shapes batch {loaded.static_shapes.batch} x sequence {sequence}")
    if loaded.opset is not None:
        click.echo(f"  opset         {loaded.opset}")
    if loaded.quantization is not None:
        q = loaded.quantization
        click.echo(f"  quantization  {q.scheme}: symmetric int8 weights{' per channel' if q.per_channel else ''}, "
                   f"{'symmetric ' if q.activation_symmetric else ''}{q.activations} activations, "
                   f"{q.calibration_method} calibration on up to {q.calibration_samples} examples; "
                   f"Q/DQ around {', '.join(q.op_types)}")
    for precision, ops in loaded.operators.items():
        click.echo(f"  {loaded.accelerator} runs ({precision}): {', '.join(ops)}")
    limits = [f"max sequence length {loaded.max_sequence_length}" if loaded.max_sequence_length else "",
              f"memory budget {loaded.memory_budget}" if loaded.memory_budget else ""]
    if any(limits):
        click.echo(f"  limits        {', '.join(item for item in limits if item)}")
