"""``batchserve runs`` and ``batchserve diff``: run history read from manifests, one line per run."""

import json
from typing import TYPE_CHECKING, Annotated

import typer

from batchserve.cli.common import guard, lazy, storage_options

if TYPE_CHECKING:
    from batchserve import history as hist
else:
    hist = lazy("batchserve.history")

__all__ = ["history_commands", "run_line"]


def run_line(r: "hist.RunRow") -> str:
    """status, when, model@version, files, rows, seconds, drifted features and predictions, scope: one run,
    one line; ``*`` marks a run whose outputs a later run has all replaced (not current)."""
    if r.drifted_features is None:
        drift = "no reference"
    else:
        drift = f"{r.drifted_features}/{r.features} drifted" + (f" ({', '.join(r.drifted)})" if r.drifted else "")
        drift += f", predictions {len(r.drifted_predictions)}/{r.predictions or 0} drifted" + (
            f" ({', '.join(r.drifted_predictions)})" if r.drifted_predictions else "")
    failed = f", {r.failed_files} failed" if r.failed_files else ""
    scope = f"  [{' and '.join(r.scope)}]" if r.scope else ""
    alias = f"  ({r.alias_event})" if r.alias_event else ""
    mark = " " if r.current else "*"
    tagged = "@" in r.model.rsplit("/", 1)[-1]  # fraud@production: the version follows in words, not as @2
    model = f"{r.model} (v{r.model_version or '-'})" if tagged else f"{r.model}@{r.model_version or '-'}"
    return (f"{r.status:<11}{mark}{r.started_at[:19]}Z  {r.run_id}  {model}{alias}  "
            f"{r.files} files{failed}  {r.rows:,} rows  {r.seconds:.1f}s  {drift}{scope}  {r.output}")


def history_commands(app: typer.Typer) -> None:
    """Register ``runs`` and ``diff`` on the main app."""

    @app.command(epilog="Example: batchserve runs out/nightly/  (a folder of date=*/ outputs, or several outputs)")
    def runs(
        outputs: Annotated[list[str], typer.Argument(metavar="OUTPUT...", help="Output folders, their parent folder, or _manifest.json files.")],
        as_json: Annotated[bool, typer.Option("--json", help="One JSON object per run instead of a line.")] = False,
        storage_option: Annotated[list[str] | None, typer.Option("--storage-option", help="fsspec option key=value (repeatable).")] = None,
        debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False,
    ) -> None:
        """List the runs found, oldest first: status, when, model@version, files, rows, seconds, drifted features."""
        opts = storage_options(storage_option, debug)
        urls = guard(debug, lambda: hist.find_manifests(outputs, opts))
        manifests = guard(debug, lambda: hist.load_runs(urls, opts))
        for row in hist.run_rows(manifests, urls):
            if as_json:
                import dataclasses

                typer.echo(json.dumps(dataclasses.asdict(row)))
            else:
                typer.echo(run_line(row))

    @app.command(epilog="Examples: batchserve diff out/date=2026-11-04 out/date=2026-11-05\n\n"
                 "batchserve diff --in scored/ 20261105T0200 20261106T0200  (run ids from batchserve runs, or their prefixes)")
    def diff(
        before: Annotated[str, typer.Argument(metavar="A", help="The earlier run: _manifest.json, its output folder (its latest run), or a run id with --in.")],
        after: Annotated[str, typer.Argument(metavar="B", help="The later run.")],
        within: Annotated[str | None, typer.Option("--in", help="The output whose ledger (_runs/) holds runs A and B, named by id.")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="One JSON object per change.")] = False,
        storage_option: Annotated[list[str] | None, typer.Option("--storage-option", help="fsspec option key=value (repeatable).")] = None,
        debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False,
    ) -> None:
        """What changed between two runs: model, config, inputs, rows, timings, drift per feature and prediction."""
        opts = storage_options(storage_option, debug)

        def locate(name: str) -> str:
            if within is not None:
                return hist.run_id_url(within, name, opts)
            urls = hist.find_manifests([name], opts)
            return urls[-1]  # an output folder: its latest run

        a_url = guard(debug, lambda: locate(before))
        b_url = guard(debug, lambda: locate(after))
        a, b = guard(debug, lambda: hist.load_runs([a_url, b_url], opts))
        changes = hist.diff(a, b)
        if as_json:
            for c in changes:
                typer.echo(json.dumps({"section": c.section, "item": c.item, "before": c.before, "after": c.after}))
            return
        typer.echo(f"A: {a.run.id} ({a.run.status}, {a_url})")
        typer.echo(f"B: {b.run.id} ({b.run.status}, {b_url})")
        width = max((len(c.section) for c in changes), default=0)
        for c in changes:
            typer.echo(f"{c.section:<{width}}  {c.item}: {c.before} -> {c.after}")
