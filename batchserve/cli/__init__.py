"""The ``batchserve`` command: parse, resolve config, make one library call, print.

Owns the exit codes (one table, below) and how things look: a progress bar on
a terminal, plain timestamped log lines under cron or Airflow, and exactly one
``error: ...`` line on stderr for anything a user can fix. Anything else is a
bug and keeps its traceback; ``--debug`` shows tracebacks always.
"""

from __future__ import annotations

import json
import sys
import traceback
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from batchserve import pipeline, report
from batchserve.cli.common import (
    BarProgress,
    columns,
    err_console,
    fail,
    guard,
    setup_logging,
    storage_flag,
    storage_options,
)
from batchserve.cli.models import models_app
from batchserve.config import resolve_config, resolve_score_config
from batchserve.errors import EXIT_OK, EXIT_USAGE, BatchserveError, DriftError, Interrupted, exit_code_of

__all__ = ["app", "main", "EXIT_CODES"]

#: The exit-code contract that cron lines and Airflow tasks depend on, derived from the error
#: classes (each carries its own code), so there is one table: errors.py.
EXIT_CODES = {
    "ok": EXIT_OK,
    "failed": BatchserveError.exit_code,
    "usage": EXIT_USAGE,  # Typer/Click's own code for bad flags
    "drift": DriftError.exit_code,
    "interrupted": Interrupted(signum=2).exit_code,  # SIGINT; SIGTERM gives 143 (128 + signal number)
}

#: The run id of the score command in progress, so even a bug's one line names the run.
_current_run: dict[str, str] = {}

app = typer.Typer(
    name="batchserve",
    help="Score Parquet datasets with ONNX models on Dask. See `batchserve COMMAND --help`.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
@app.command(
    epilog=(
        "Example: batchserve score --model models/churn --input s3://lake/events/ "
        "--output s3://lake/scored/2026-11-21/ --storage-option anon=false --overwrite"
    ),
)
def score(
    model: Annotated[str | None, typer.Option("--model", "-m", help="ONNX file or model repository folder (<root>/<version>/model.onnx); any fsspec URL.")] = None,
    input: Annotated[str | None, typer.Option("--input", "-i", help="Parquet file, folder/prefix (recursive) or glob; any fsspec URL.")] = None,
    output: Annotated[str | None, typer.Option("--output", "-o", help="Output folder/prefix; mirrors the input layout.")] = None,
    features: Annotated[str | None, typer.Option(help="Feature columns in model input order, comma-separated. Default: the model's feature_names metadata.")] = None,
    keep: Annotated[str | None, typer.Option(help="Input columns to carry to the output, comma-separated (default: all).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Rows per inference batch [default: 65536].")] = None,
    workers: Annotated[int | None, typer.Option(help="Local cluster size (default: one per GPU, else cores/4).")] = None,
    scheduler: Annotated[str | None, typer.Option(help="Address of an existing Dask scheduler, e.g. tcp://10.0.0.5:8786.")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda | cuda:N [default: auto].")] = None,
    overwrite: Annotated[bool | None, typer.Option("--overwrite/--no-overwrite", help="Replace a non-empty output.")] = None,
    model_version: Annotated[int | None, typer.Option(help="Version folder to use in a model repository (default: highest).")] = None,
    prefix: Annotated[str | None, typer.Option(help="Prefix for prediction column names, e.g. pred_.")] = None,
    storage_option: Annotated[list[str] | None, typer.Option("--storage-option", help="fsspec option key=value (repeatable), e.g. endpoint_url=http://127.0.0.1:9000.")] = None,
    split_rows: Annotated[int | None, typer.Option(help="Split files above about this many rows by row groups (default: automatic).")] = None,
    reference: Annotated[str | None, typer.Option(help="Reference profile (batchserve profile) or an earlier run's _manifest.json to measure drift against.")] = None,
    drift: Annotated[bool | None, typer.Option("--drift/--no-drift", help="Record drift statistics while scoring [default: on].")] = None,
    drift_metric: Annotated[list[str] | None, typer.Option("--drift-metric", help="[COLUMN:]METRIC deciding drift: psi, js, wasserstein or ks (repeatable) [default: psi].")] = None,
    drift_threshold: Annotated[list[str] | None, typer.Option("--drift-threshold", help="[COLUMN:]METRIC=VALUE, e.g. psi=0.25 or amount:js=0.05 (repeatable).")] = None,
    fail_on_drift: Annotated[bool | None, typer.Option("--fail-on-drift", help="Exit 3 when features drift (outputs are still committed).")] = None,
    max_drift_share: Annotated[float | None, typer.Option(help="With --fail-on-drift: exit 3 only when more than this share of features drift.")] = None,
    resume: Annotated[bool | None, typer.Option("--resume", help="Keep outputs an earlier (failed, interrupted or killed) run committed with the same model, settings and inputs; score the rest.")] = None,
    retries: Annotated[int | None, typer.Option(help="Retries per file after transient errors (I/O, object-store 5xx), with backoff [default: 2].")] = None,
    on_error: Annotated[str | None, typer.Option(help="fail: the first bad file fails the run; skip: bad files are skipped and listed in the manifest [default: fail].")] = None,
    max_failed_files: Annotated[int | None, typer.Option(help="With --on-error skip: exit 1 when more files than this are bad.")] = None,
    nan: Annotated[str | None, typer.Option(help="pass: NaN/inf/nulls in float features reach the model as NaN; fail: they fail the file [default: pass].")] = None,
    challenger: Annotated[str | None, typer.Option(help="A second model scored beside --model in the same pass (shadow scoring), e.g. models/fraud@candidate.")] = None,
    challenger_output: Annotated[str | None, typer.Option(help="Where the challenger's predictions go (mirrors the layout); required with --challenger.")] = None,
    challenger_keep: Annotated[str | None, typer.Option(help="Input columns beside the challenger's predictions, e.g. a key (default: the --keep columns).")] = None,
    job: Annotated[str | None, typer.Option(help="TOML job file; flags and BATCHSERVE_* variables override it.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors on stderr.")] = False,
    debug: Annotated[bool, typer.Option(help="Show tracebacks and debug logs.")] = False,
) -> None:
    """Score a Parquet dataset with an ONNX model into scored Parquet plus _manifest.json.

    Exit codes: 0 done, 1 failed (one `error:` line on stderr), 2 usage error,
    3 drift past the threshold with --fail-on-drift (outputs committed),
    130/143 interrupted by SIGINT/SIGTERM (committed files kept; re-run with --resume).
    """
    setup_logging(debug, quiet)

    def resolve() -> Any:
        flags: dict[str, Any] = {
            "model": model, "input": input, "output": output, "features": columns(features),
            "keep": columns(keep), "batch_size": batch_size, "workers": workers, "scheduler": scheduler,
            "device": device, "overwrite": overwrite, "model_version": model_version, "prefix": prefix,
            "split_rows": split_rows, "reference": reference, "drift": drift, "fail_on_drift": fail_on_drift,
            "max_drift_share": max_drift_share, "drift_metric": drift_metric or None,
            "drift_threshold": drift_threshold or None, "resume": resume, "retries": retries,
            "on_error": on_error, "max_failed_files": max_failed_files, "nan": nan, "challenger": challenger,
            "challenger_output": challenger_output, "challenger_keep": columns(challenger_keep),
            "storage_options": storage_flag(storage_option),
        }
        return resolve_score_config(flags, job_file=job)

    cfg = guard(debug, resolve)
    run_id = pipeline.new_run_id()
    _current_run["id"] = run_id
    bar = BarProgress() if err_console.is_terminal and not quiet else None

    def run() -> tuple[Any, DriftError | None]:
        try:
            return pipeline.score(cfg, on_progress=bar, run_id=run_id), None
        except DriftError as exc:  # outputs are committed: say what was scored, then why it is exit 3
            return exc.result, exc

    try:
        result, drifted = guard(debug, run)
    finally:
        if bar is not None:
            bar.stop()
    _echo_result(result)
    if drifted is not None:
        fail(str(drifted), drifted.exit_code)


def _echo_result(result: pipeline.RunResult) -> None:
    """The summary a person (or a cron mail) reads after a run."""
    t = result.manifest.totals
    typer.echo(
        f"scored {t.files} file(s), {t.rows:,} rows in {t.seconds:.1f}s ({t.rows_per_second:,.0f} rows/s) "
        f"-> {result.output}  manifest: {result.manifest_url}"
    )
    d = result.manifest.drift
    if d is not None and d.reference is not None:
        typer.echo(
            f"drift: {len(d.drifted_features)} of {len(d.features)} features drifted"
            + (f" ({', '.join(d.drifted_features)})" if d.drifted_features else "")
            + f"; report: batchserve report {result.manifest_url} --output report.html"
        )
    ch = result.manifest.challenger
    if ch is not None:
        worst = max((c.mean_abs_diff or 0.0 for c in ch.columns.values()), default=0.0)
        typer.echo(
            f"challenger {ch.model['uri']} (version {ch.model['version']}) -> {ch.output}: "
            f"largest mean |difference| {worst:.4g}; inference {ch.infer_seconds['challenger']:.2f}s beside "
            f"{ch.infer_seconds['champion']:.2f}s"
        )


@app.command(epilog="Example: batchserve inspect sample_data/model --json")
def inspect(
    model: Annotated[str, typer.Argument(help="ONNX file or model repository folder; any fsspec URL.")],
    model_version: Annotated[int | None, typer.Option(help="Version folder in a model repository.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    storage_option: Annotated[list[str] | None, typer.Option("--storage-option", help="fsspec option key=value (repeatable).")] = None,
    debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False,
) -> None:
    """Show a model's inputs, outputs, ONNX metadata and sha256."""
    opts = storage_options(storage_option, debug)
    info = guard(debug, lambda: pipeline.inspect_model(model, model_version=model_version, storage_options=opts))
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    out = Console()
    # Everything from the model file is escaped: metadata like "[/x]" is text, not rich markup.
    out.print(f"[bold]{escape(info['resolved_uri'])}[/bold]  version={escape(str(info['version']))}  "
              f"sha256={info['sha256']}")
    out.print(escape(
        f"producer={info['producer_name']} {info['producer_version']}  ir={info['ir_version']}  "
        f"opset={info['opset']}  bytes={info['bytes']:,}"
    ))
    if info.get("feature_names_error"):
        out.print(f"[red]feature_names: {escape(info['feature_names_error'])}[/red]")
    table = Table("kind", "name", "type", "shape")
    for kind in ("inputs", "outputs"):
        for t in info[kind]:
            table.add_row(kind[:-1], escape(t["name"]), escape(t["type"]), escape(str(t["shape"])))
    out.print(table)
    if info["metadata_props"]:
        meta = Table("metadata key", "value")
        for k, v in info["metadata_props"].items():
            meta.add_row(escape(k), escape(v if len(v) < 200 else v[:197] + "..."))
        out.print(meta)


@app.command(epilog="Example: batchserve validate --model sample_data/model --input sample_data/transactions")
def validate(
    model: Annotated[str, typer.Option("--model", "-m", help="ONNX file or model repository folder.")],
    input: Annotated[str, typer.Option("--input", "-i", help="Parquet file, folder/prefix or glob.")],
    features: Annotated[str | None, typer.Option(help="Feature columns in model input order, comma-separated.")] = None,
    keep: Annotated[str | None, typer.Option(help="Input columns to carry to the output.")] = None,
    model_version: Annotated[int | None, typer.Option(help="Version folder in a model repository.")] = None,
    prefix: Annotated[str | None, typer.Option(help="Prefix for prediction column names.")] = None,
    storage_option: Annotated[list[str] | None, typer.Option("--storage-option", help="fsspec option key=value (repeatable).")] = None,
    debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False,
) -> None:
    """Check the feature mapping and every file's schema without scoring (exit 0 or 1)."""
    def resolve() -> Any:
        flags: dict[str, Any] = {
            "model": model, "input": input, "output": "", "features": columns(features), "keep": columns(keep),
            "model_version": model_version, "prefix": prefix,
            "storage_options": storage_flag(storage_option),
        }
        return resolve_config(flags, command="validate")

    cfg = guard(debug, resolve)
    plan = guard(debug, lambda: pipeline.validate(cfg))
    typer.echo(
        f"ok: {len(plan.partitions)} file(s), {plan.rows:,} rows; features ({plan.features.source}): "
        f"{', '.join(plan.features.features)}"
    )


@app.command(
    epilog="Example: batchserve profile --input sample_data/transactions --model sample_data/model --output reference.json"
)
def profile(
    input: Annotated[str, typer.Option("--input", "-i", help="Trusted data (e.g. training set): Parquet file, folder or glob.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Where to write the profile JSON (any fsspec URL).")],
    features: Annotated[str | None, typer.Option(help="Columns to profile (default: the model's features, else every numeric column).")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Also profile this model's predictions on the data.")] = None,
    model_version: Annotated[int | None, typer.Option(help="Version folder in a model repository.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Rows per batch (default: 65536).")] = None,
    workers: Annotated[int | None, typer.Option(help="Local cluster size.")] = None,
    scheduler: Annotated[str | None, typer.Option(help="Address of an existing Dask scheduler.")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda | cuda:N (default: auto).")] = None,
    prefix: Annotated[str | None, typer.Option(help="Prediction column prefix, as used when scoring.")] = None,
    storage_option: Annotated[list[str] | None, typer.Option("--storage-option", help="fsspec option key=value (repeatable).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors on stderr.")] = False,
    debug: Annotated[bool, typer.Option(help="Show tracebacks and debug logs.")] = False,
) -> None:
    """Build a reference profile (per-column statistics) to compare nightly runs against."""
    setup_logging(debug, quiet)

    def resolve() -> Any:
        flags: dict[str, Any] = {
            "input": input, "output": output, "features": columns(features), "model": model,
            "model_version": model_version, "batch_size": batch_size, "workers": workers, "scheduler": scheduler,
            "device": device, "prefix": prefix,
            "storage_options": storage_flag(storage_option),
        }
        return resolve_config(flags, command="profile")

    cfg = guard(debug, resolve)
    prof = guard(debug, lambda: pipeline.profile(cfg))
    typer.echo(
        f"profiled {prof.source['rows']:,} rows in {prof.source['files']} file(s): {len(prof.features)} feature(s)"
        f", {len(prof.predictions)} prediction column(s) -> {output}"
    )


@app.command(epilog="Example: batchserve report out/_manifest.json --output out/report.html")
def report_cmd(
    manifest_uri: Annotated[str, typer.Argument(metavar="MANIFEST", help="A run's _manifest.json (or its output folder).")],
    output: Annotated[str | None, typer.Option("--output", "-o", help="Write a self-contained HTML report here.")] = None,
    storage_option: Annotated[list[str] | None, typer.Option("--storage-option", help="fsspec option key=value (repeatable).")] = None,
    debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False,
) -> None:
    """Show a run's drift: a plain-text summary here, and an HTML page with --output."""
    opts = storage_options(storage_option, debug)
    data = guard(debug, lambda: pipeline.read_manifest(manifest_uri, opts))
    typer.echo(report.render_text(data), nl=False)
    if output:
        guard(debug, lambda: pipeline.write_text(output, report.render_html(data), opts))
        typer.echo(f"report: {output}")


app.registered_commands[-1].name = "report"
app.add_typer(models_app, name="models")


def main() -> None:
    """Run the app; whatever escapes the commands still reaches the user as one line.

    A :class:`BatchserveError` is the user's to fix; anything else is a bug in batchserve,
    said so in one line that names the run and points to ``--debug`` for the traceback.
    """
    debug = "--debug" in sys.argv
    try:
        app()
    except SystemExit:
        raise
    except BatchserveError as exc:
        _last_line(str(exc), exc.exit_code, debug)
    except KeyboardInterrupt as exc:
        _last_line("interrupted", exit_code_of(exc), debug)
    except Exception as exc:  # noqa: BLE001 - the last resort: a bug, still one line
        run = _current_run.get("id")
        text = " ".join(str(exc).split())[:300]
        _last_line(
            f"internal error (a bug in batchserve): {type(exc).__name__}: {text}"
            + (f"; run {run}" if run else "")
            + "; re-run with --debug for the traceback, and please report it",
            exit_code_of(exc), debug,
        )


def _last_line(message: str, code: int, debug: bool) -> NoReturn:
    if debug:
        traceback.print_exc()
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    sys.exit(code)
