"""``batchserve models``: register, list, show, promote, rollback and history of a model repository."""

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from batchserve.cli.common import guard, lazy, storage_options
from batchserve.config import current_actor

if TYPE_CHECKING:
    from batchserve import registry
else:
    registry = lazy("batchserve.registry")

__all__ = ["models_app"]

models_app = typer.Typer(
    help="A model repository: versions, aliases (production, candidate ...), promote and rollback, audit trail.",
    no_args_is_help=True,
)

StorageOpt = Annotated[list[str] | None, typer.Option("--storage-option", help="fsspec option key=value (repeatable).")]
Debug = Annotated[bool, typer.Option(help="Show tracebacks.")]
Message = Annotated[str | None, typer.Option("--message", help="Why: recorded in the audit trail. (-m is --model in score; here it is spelled out.)")]


def _line(e: "registry.Event") -> str:
    move = {
        "register": f"registered version {e.to_version}",
        "promote": f"{e.alias}: {e.from_version if e.from_version is not None else '-'} -> {e.to_version}",
        "rollback": f"{e.alias}: rolled back {e.from_version} -> {e.to_version}",
    }[e.action]
    return f"#{e.seq} {e.time} {e.actor} {e.action} {move}" + (f"  ({e.message})" if e.message else "")


@models_app.command(epilog="Example: batchserve models register models/fraud trained/fraud.onnx -m 'retrained on November'")
def register(
    model: Annotated[str, typer.Argument(help="The model's folder in the repository (any fsspec URL).")],
    file: Annotated[str, typer.Argument(help="The ONNX file to register as the next version.")],
    message: Message = None,
    storage_option: StorageOpt = None,
    debug: Debug = False,
) -> None:
    """Check an ONNX file loads, and add it as the model's next version (visible only once complete)."""
    opts = storage_options(storage_option, debug)
    from batchserve import io

    data = guard(debug, lambda: io.read_bytes(file, opts))
    event = guard(debug, lambda: registry.register(model, data, opts, actor=current_actor(), message=message))
    typer.echo(f"registered {model} version {event.to_version} (sha256 {event.sha256})")


@models_app.command(epilog="Example: batchserve models promote models/fraud 3 --alias production -m 'AUC +0.01'")
def promote(
    model: Annotated[str, typer.Argument(help="The model's folder in the repository.")],
    version: Annotated[int, typer.Argument(help="The version the alias should point to.")],
    alias: Annotated[str, typer.Option(help="The alias to move, e.g. production.")],
    message: Message = None,
    storage_option: StorageOpt = None,
    debug: Debug = False,
) -> None:
    """Point an alias at a version; the audit trail records who, when, why and where it pointed before."""
    opts = storage_options(storage_option, debug)
    event = guard(debug, lambda: registry.promote(model, version, alias, opts, actor=current_actor(), message=message))
    typer.echo(_line(event))


@models_app.command(epilog="Examples: batchserve models rollback models/fraud --alias production --message 'bad scores'\n\n"
                    "batchserve models rollback models/fraud --alias production --to 3 --dry-run")
def rollback(
    model: Annotated[str, typer.Argument(help="The model's folder in the repository.")],
    alias: Annotated[str, typer.Option(help="The alias to move back, e.g. production.")],
    to: Annotated[int | None, typer.Option("--to", min=1, help="Go back to this earlier promotion of the alias (default: one step back).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what the rollback would do and change nothing.")] = False,
    message: Message = None,
    storage_option: StorageOpt = None,
    debug: Debug = False,
) -> None:
    """Move an alias one step back through its promotions (never to a version it was rolled back from)."""
    opts = storage_options(storage_option, debug)
    event = guard(debug, lambda: registry.rollback(model, alias, opts, actor=current_actor(), message=message,
                                                   to=to, dry_run=dry_run))
    if dry_run:
        typer.echo(f"dry run, nothing changed: {event.alias} would roll back {event.from_version} -> {event.to_version}")
        return
    typer.echo(_line(event))


@models_app.command(epilog="Example: batchserve models history models/fraud --json")
def history(
    model: Annotated[str, typer.Argument(help="The model's folder in the repository.")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    storage_option: StorageOpt = None,
    debug: Debug = False,
) -> None:
    """The audit trail, newest first: every register, promote and rollback, with who, when and why."""
    opts = storage_options(storage_option, debug)
    trail = guard(debug, lambda: registry.events(model, opts))
    for e in reversed(trail):
        typer.echo(json.dumps(e.as_dict()) if as_json else _line(e))


@models_app.command(epilog="Example: batchserve models show models/fraud")
def show(
    model: Annotated[str, typer.Argument(help="The model's folder in the repository.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    storage_option: StorageOpt = None,
    debug: Debug = False,
) -> None:
    """Each version: complete or not, sha256, size, created, producer, opset, features, aliases on it."""
    opts = storage_options(storage_option, debug)
    found = guard(debug, lambda: registry.versions(model, opts, verify=True))
    on = registry.aliases(guard(debug, lambda: registry.events(model, opts)))
    rows: list[dict[str, Any]] = [
        {"version": v.version, "complete": v.complete, "problem": v.problem, **dict(v.record),
         "aliases": sorted(a for a, e in on.items() if e.to_version == v.version)}
        for v in found
    ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console  # only for the table: see batchserve.cli's inspect
    from rich.markup import escape
    from rich.table import Table

    table = Table("version", "state", "aliases", "sha256", "bytes", "created", "by")  # the rest: --json
    for r in rows:
        state = "complete" if r["complete"] else f"incomplete: {r['problem']}"
        table.add_row(str(r["version"]), escape(state), escape(", ".join(r["aliases"])), str(r.get("sha256", ""))[:12],
                      str(r.get("bytes", "")), escape(str(r.get("created_at", ""))[:19]), escape(str(r.get("actor", ""))))
    Console(width=max(Console().width, 120)).print(table)


@models_app.command(name="list", epilog="Example: batchserve models list models/")
def list_models(
    root: Annotated[str, typer.Argument(help="A folder of model folders (any fsspec URL).")],
    storage_option: StorageOpt = None,
    debug: Debug = False,
) -> None:
    """Every model under a folder: its versions (complete ones) and its aliases."""
    opts = storage_options(storage_option, debug)
    from batchserve import io

    for name in guard(debug, lambda: io.list_dir(root, opts)):
        folder = io.join_url(root, name)
        found = guard(debug, lambda f=folder: registry.versions(f, opts, verify=True))  # type: ignore[misc]
        if not found:
            continue
        on = registry.aliases(guard(debug, lambda f=folder: registry.events(f, opts)))  # type: ignore[misc]
        complete = [str(v.version) for v in found if v.complete]
        tags = ", ".join(f"{a}={e.to_version}" for a, e in sorted(on.items())) or "-"
        typer.echo(f"{name}  versions: {', '.join(complete) or '-'}  aliases: {tags}")
