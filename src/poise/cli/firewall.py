"""``poise firewall fit|check``: the activation-shift query firewall (``poise.probes.firewall``)."""

from __future__ import annotations

import logging

import typer

from poise.cli._common import console, expand_paths, shown, sigterm_as_interrupt, user_errors
from poise.errors import PoiseError

firewall_app = typer.Typer(
    help="A query firewall from activations (after ControlNET, arXiv 2504.09593): fit zones of "
    "roles from anchor queries, check queries against them.",
    no_args_is_help=True,
)


@firewall_app.command("fit")
def fit_command(
    anchors: str = typer.Option(
        ..., help='JSONL of {"role": ..., "query": ...} legitimate queries.', callback=expand_paths
    ),
    out: str = typer.Option(
        ...,
        "--out",
        "--output",  # as train, gate, compare and attacks export name what they write
        "-o",
        help="Folder to write the firewall to (new or empty).",
        callback=expand_paths,
    ),
    model: str = typer.Option("organism-large", "--model", "-m", help="Model spec (hf backend)."),
    percentile: float = typer.Option(
        95.0, help="Threshold: this percentile of the anchors' scores."
    ),
    layer: list[int] = typer.Option(
        [], "--layer", help="Layer to read; repeatable (default: all blocks)."
    ),
) -> None:
    """Fit one zone per role from its anchor queries."""
    with sigterm_as_interrupt(), user_errors():
        from poise.models import load_model
        from poise.probes.firewall import Firewall, check_fit_options, read_anchors
        from poise.probes.linear import check_new_folder
        from poise.probes.sweep import require_activations

        check_fit_options(percentile, layer)
        check_new_folder(out, "firewall")
        roles = read_anchors(anchors)
        loaded = load_model(model)
        require_activations("poise firewall fit", loaded)
        # the anchors read under the model's default system prompt (Firewall.fit's default)
        firewall = Firewall.fit(loaded, roles, layers=layer or None, percentile=percentile)
        firewall.save(out)
        for role, zone in firewall.zones.items():
            console.print(
                f"role {shown(role)}: {zone.anchors} anchors, threshold {zone.threshold:.3f} "
                f"(percentile {zone.percentile:g})"
            )
        console.print(f"firewall -> {shown(out)}")


@firewall_app.command("check")
def check_command(
    queries: list[str] = typer.Argument(..., help="Query text(s) to check."),
    firewall: str = typer.Option(
        ..., "--firewall", "-f", help="Firewall folder (poise firewall fit).", callback=expand_paths
    ),
    role: str = typer.Option(..., "--role", "-r", help="Role whose zone the queries must fall in."),
    model: str | None = typer.Option(
        None, "--model", "-m", help="Model spec (default: the firewall's)."
    ),
) -> None:
    """Score queries against a role's zone; exit code 1 when any is flagged."""
    with user_errors():
        from poise.models import load_model
        from poise.probes.firewall import load_firewall

        loaded_firewall = load_firewall(firewall)
        loaded_firewall.zone(role)  # the role exists, before loading weights
        spec = model or loaded_firewall.model
        if spec is None:
            raise PoiseError(f"{firewall}: the firewall names no model; pass --model")
        loaded = load_model(spec)
        fitted = loaded_firewall.model
        if fitted and fitted not in {loaded.spec, loaded.name} - {None, ""}:
            # zones are one model's activations: another model of the same shape passes the
            # layer and width checks and is scored by distances that mean nothing for it
            logging.getLogger(__name__).warning(
                "firewall: fitted on %s, checked with %s: its zones describe the activations of "
                "the model it was fitted on; fit it again on this model (poise firewall fit)",
                fitted,
                loaded.spec or loaded.name,
            )
        verdicts = loaded_firewall.check(loaded, role, queries)
        for query, verdict in zip(queries, verdicts, strict=True):
            mark = "[red]flagged[/]" if verdict.flagged else "[green]ok[/]"
            console.print(
                f"{mark} {verdict.score:.3f} (threshold {verdict.threshold:.3f})  {shown(query)}"
            )
        if any(v.flagged for v in verdicts):
            raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(firewall_app, name="firewall")
