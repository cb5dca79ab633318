"""`edge-sdk coverage`: which nodes of a bundle's graph a profile's accelerator runs (predicted from the profile's
operator table, or measured from ONNX Runtime's own assignment with --measure)."""

from __future__ import annotations

from pathlib import Path

import click

from edge_sdk.cli.output import emit_json
from edge_sdk.errors import ConfigError, DependencyError


def _target_graph(manifest, profile_name: str) -> str | None:
    """The bundle's target graph: the manifest's ``target`` section when it has one, else None."""
    target = getattr(manifest, "target", None)
    if isinstance(target, dict):
        return target.get("model") or target.get("file")
    return getattr(target, "model", None) if target is not None else None


def graph_for(bundle, graph: str | None, adapter: str | None, profile_name: str) -> Path:
    """The graph file to report on: ``--graph`` (relative to the bundle), an adapter's deployed target graph,
    the bundle's target graph, else its inference graph."""
    if graph is not None and adapter is not None:
        raise click.UsageError("give --graph or --adapter, not both")
    if graph is not None:
        listed = {entry.path for entry in bundle.manifest.files}
        return bundle.path(graph) if graph in listed else bundle.inside(graph, "graph")
    if adapter is not None:
        relative = f"adapters/{adapter}.{profile_name}/model.onnx"
        path = bundle.inside(relative, "graph")
        if not path.is_file():
            raise ConfigError(f"adapter {adapter!r} has no graph for profile {profile_name!r} ({relative} is "
                              "missing); deploy it first with `edge-sdk adapters deploy`")
        return path
    return bundle.path(_target_graph(bundle.manifest, profile_name) or bundle.manifest.inference_spec.model)


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--graph", "graph", metavar="REL", help="A graph of the bundle, relative to its folder (default: the "
              "target graph when the bundle has one, else the inference graph).")
@click.option("--adapter", help="Report on this adapter's deployed target graph (adapters/NAME.PROFILE/model.onnx).")
@click.option("--profile", "profile_name", metavar="NAME|FILE.toml",
              help="The profile whose providers and operator table to use (default: the bundle's).")
@click.option("--measure", is_flag=True,
              help="Also open a session with the profile's providers and report ONNX Runtime's own node assignment, "
                   "compared with the prediction.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def coverage(bundle: Path, graph: str | None, adapter: str | None, profile_name: str | None, measure: bool,
             as_json: bool) -> None:
    """Operator coverage of a bundle's graph on a profile's accelerator: nodes and FLOPs it runs, the tensors
    crossing to the CPU, per op type. Predicted from the profile's operator table; --measure runs the provider."""
    try:
        from edge_sdk.targets.coverage import compare_coverage, format_coverage, measure_coverage, predict_coverage
    except ImportError as exc:
        raise DependencyError(f"`edge-sdk coverage` reads graphs with the onnx package ({exc.name} is missing); "
                              "install it with `pip install onnx`") from exc
    from edge_sdk.bundle.store import open_bundle
    from edge_sdk.profiles import load_profile, profile_from_dict

    opened = open_bundle(bundle, verify="stamp")
    profile = load_profile(profile_name) if profile_name else profile_from_dict(opened.manifest.profile)
    path = graph_for(opened, graph, adapter, profile.name)
    # FLOPs at the bundle's own sequence length unless the profile fixes one.
    static = profile.static_shapes
    dims = {} if static and static.sequence else {"sequence": opened.manifest.max_length}
    predicted = predict_coverage(path, profile, dims)
    measured = measure_coverage(path, profile, bundle_root=opened.root, dims=dims) if measure else None
    comparison = compare_coverage(predicted, measured) if measured else None
    if as_json:
        emit_json({"predicted": predicted, "measured": measured, "comparison": comparison})
        return
    click.echo(format_coverage(predicted))
    if measured is not None:
        click.echo(format_coverage(measured))
        if comparison["agree"]:
            click.echo("measured and predicted agree on every node")
        for item in comparison["op_types"]:
            click.echo(f"  differs: {item['op_type']} x{item['count']}: predicted {item['predicted']}, "
                       f"measured {item['measured']}")
