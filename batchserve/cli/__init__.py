"""The ``batchserve`` command: parse, resolve config, make one library call, print.

Owns the exit codes (one table, below) and how things look: a progress bar on
a terminal, plain timestamped log lines under cron or Airflow, and exactly one
``error: ...`` line on stderr for anything a user can fix. Anything else is a
bug and keeps its traceback; ``--debug`` shows tracebacks always.

The command modules have no ``from __future__ import annotations``: typer reads every option's
annotation, and string annotations make it compile and eval each one (~0.01 s on every command).
"""

import json
import logging
import sys
import time
import traceback
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from batchserve.cli.common import (
    BarProgress,
    choices,
    columns,
    emit_closing,
    emit_error,
    fail,
    guard,
    helptext,
    lazy,
    on_terminal,
    settings_guard,
    setup_logging,
    state,
    storage_flag,
    storage_options,
)
from batchserve.cli.history import history_commands
from batchserve.cli.history import run_line as _run_line
from batchserve.cli.models import models_app
from batchserve.cli.output import echo_dry_run, echo_result, publish_metrics
from batchserve.cli.serve import serve_command
from batchserve.config import DEFAULT_BATCH_SIZE, new_run_id, resolve_config, resolve_score_config
from batchserve.errors import EXIT_OK, EXIT_USAGE, BatchserveError, DriftError, Interrupted, exit_code_of
from batchserve.preflight import check_local_paths

if TYPE_CHECKING:
    from batchserve import history as hist
    from batchserve import metrics, pipeline, report
else:  # imported when a command needs them, so --help and early errors stay fast
    hist, metrics, pipeline, report = (lazy(f"batchserve.{m}") for m in ("history", "metrics", "pipeline", "report"))

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

log = logging.getLogger("batchserve")

app = typer.Typer(
    name="batchserve",
    help="Score Parquet datasets with ONNX models on Dask. See `batchserve COMMAND --help`.",
    add_completion=True,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Click's plain help: rich's panels cut long words at 80 columns (environment variable names
    # ended in "…") and read "[score]" in help text as markup; plain help wraps and shows it as written.
    rich_markup_mode=None,
    context_settings={"max_content_width": 160},  # Click's own cap is 80 columns, whatever the terminal
)


def _version(value: bool) -> None:
    if value:
        from batchserve.version import version

        typer.echo(f"batchserve {version()}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Score Parquet datasets with ONNX models on Dask. See `batchserve COMMAND --help`."""
H = helptext


def _batch_flag(value: str | None) -> str | None:
    """``--batch-size`` takes auto or a whole number: anything else is a usage error (exit 2), as a
    bad integer was when the option was typed as one."""
    if value is None or value.strip().lower() == "auto" or value.strip().isdigit():
        return value
    raise typer.BadParameter(f"expected auto or a whole number of rows, got {value!r}")


@app.command(
    epilog=(
        "Example: batchserve score --job jobs/nightly.toml --var ds=2026-11-05 -q "
        "--metrics-file /var/lib/node_exporter/batchserve.prom"
    ),
)
def score(
    model: Annotated[str | None, typer.Option("--model", "-m", help=H("ONNX file or model repository folder (<root>/<version>/model.onnx, root@alias, root@N); any fsspec URL.", setting="model"))] = None,
    input: Annotated[str | None, typer.Option("--input", "-i", help=H("Parquet file, folder/prefix (recursive) or glob; any fsspec URL.", setting="input"))] = None,
    output: Annotated[str | None, typer.Option("--output", "-o", help=H("Output folder/prefix; mirrors the input layout.", setting="output"))] = None,
    features: Annotated[str | None, typer.Option(help=H("Feature columns in model input order, comma-separated.", default="the model's feature_names metadata", setting="features"))] = None,
    features_override: Annotated[bool | None, typer.Option("--features-override/--no-features-override", help=H("Score with --features even where they contradict the model's feature_names metadata.", default="no-features-override", setting="features_override"))] = None,
    keep: Annotated[str | None, typer.Option(help=H("Input columns to carry to the output, comma-separated.", default="all", setting="keep"))] = None,
    filter: Annotated[list[str] | None, typer.Option("--filter", help=H("Score only files whose hive key=value folders match, e.g. 'date>=2026-11-03', date=2026-11-05, 'region in (eu,us)' (repeatable, all must hold).", setting="filter"))] = None,
    batch_size: Annotated[str | None, typer.Option(callback=_batch_flag, help=H(f"auto: read and write {DEFAULT_BATCH_SIZE:,}-row batches and run the model in the pieces a short probe on each worker finds fastest; N: N rows for both.", default="auto", setting="batch_size"))] = None,
    workers: Annotated[int | None, typer.Option(help=H("Local cluster size.", default="one per GPU, else cores/4", setting="workers"))] = None,
    scheduler: Annotated[str | None, typer.Option(help=H("Address of an existing Dask scheduler, e.g. tcp://10.0.0.5:8786.", default="start a local cluster", setting="scheduler"))] = None,
    device: Annotated[str | None, typer.Option(autocompletion=choices("auto", "cpu", "cuda", "cuda:0"), help=H("auto | cpu | cuda | cuda:N.", default="auto", setting="device"))] = None,
    overwrite: Annotated[bool | None, typer.Option("--overwrite/--no-overwrite", help=H("Replace a non-empty output (only files batchserve wrote).", default="no-overwrite", setting="overwrite"))] = None,
    model_version: Annotated[int | None, typer.Option(help=H("Version folder to use in a model repository.", default="highest", setting="model_version"))] = None,
    prefix: Annotated[str | None, typer.Option(help=H("Prefix for prediction column names, e.g. pred_.", default="none", setting="prefix"))] = None,
    storage_option: Annotated[list[str] | None, typer.Option("--storage-option", help=H("fsspec option key=value (repeatable), e.g. endpoint_url=http://127.0.0.1:9000.", setting="storage_options"))] = None,
    split_rows: Annotated[int | None, typer.Option(help=H("Split files above about this many rows by row groups.", default="automatic", setting="split_rows"))] = None,
    reference: Annotated[str | None, typer.Option(help=H("Reference profile (batchserve profile) or an earlier run's _manifest.json to measure drift against.", setting="reference"))] = None,
    drift: Annotated[bool | None, typer.Option("--drift/--no-drift", help=H("Record drift statistics while scoring.", default="drift", setting="drift"))] = None,
    drift_metric: Annotated[list[str] | None, typer.Option("--drift-metric", autocompletion=choices("psi", "js", "wasserstein", "ks"), help=H("[COLUMN:]METRIC deciding drift: psi, js, wasserstein or ks (repeatable).", default="psi", setting="drift_metric"))] = None,
    drift_threshold: Annotated[list[str] | None, typer.Option("--drift-threshold", help=H("[COLUMN:]METRIC=VALUE, e.g. psi=0.25 or amount:js=0.05 (repeatable).", setting="drift_threshold"))] = None,
    fail_on_drift: Annotated[bool | None, typer.Option("--fail-on-drift/--no-fail-on-drift", help=H("Exit 3 when features drift past --max-drift-share or any prediction column drifts (outputs are still committed).", default="no-fail-on-drift", setting="fail_on_drift"))] = None,
    max_drift_share: Annotated[float | None, typer.Option(help=H("With --fail-on-drift: exit 3 only when more than this share of features drift.", default="any drifted feature", setting="max_drift_share"))] = None,
    resume: Annotated[bool | None, typer.Option("--resume/--no-resume", help=H("Keep outputs an earlier (failed, interrupted or killed) run committed with the same model, settings and inputs; score the rest.", default="no-resume", setting="resume"))] = None,
    retries: Annotated[int | None, typer.Option(help=H("Retries per file after transient errors (I/O, object-store 5xx), with backoff.", default=2, setting="retries"))] = None,
    on_error: Annotated[str | None, typer.Option(autocompletion=choices("fail", "skip"), help=H("fail: the first bad file fails the run; skip: bad files are skipped and listed in the manifest.", default="fail", setting="on_error"))] = None,
    max_failed_files: Annotated[int | None, typer.Option(help=H("With --on-error skip: exit 1 when more files than this are bad.", default="no limit", setting="max_failed_files"))] = None,
    nan: Annotated[str | None, typer.Option(autocompletion=choices("pass", "fail"), help=H("pass: NaN/inf/nulls in float features reach the model as NaN; fail: they fail the file.", default="pass", setting="nan"))] = None,
    challenger: Annotated[str | None, typer.Option(help=H("A second model scored beside --model in the same pass (shadow scoring), e.g. models/fraud@candidate.", setting="challenger"))] = None,
    challenger_output: Annotated[str | None, typer.Option(help=H("Where the challenger's predictions go (mirrors the layout); required with --challenger.", setting="challenger_output"))] = None,
    challenger_keep: Annotated[str | None, typer.Option(help=H("Input columns beside the challenger's predictions, e.g. a key.", default="the --keep columns", setting="challenger_keep"))] = None,
    precision: Annotated[str | None, typer.Option(autocompletion=choices("fp32", "fp16"), help=H("On a GPU: fp32, or fp16 (weights and arithmetic in float16; inputs and outputs keep their types).", default="fp32", setting="precision"))] = None,
    trt_cache: Annotated[str | None, typer.Option(help=H("On a GPU: run through TensorRT, caching its engines in this folder (keep it between runs: building takes minutes, loading seconds).", setting="trt_cache"))] = None,
    metrics_file: Annotated[str | None, typer.Option(help=H("Write the run's Prometheus metrics here (atomically) after success or failure, for node_exporter's textfile collector.", setting="metrics_file"))] = None,
    metrics_job: Annotated[str | None, typer.Option(help=H("The job's stable name in metrics (label batchserve_job, the push's grouping key): one series night after night.", default="the job file's name, else the output without trailing key=value folders", setting="metrics_job"))] = None,
    push_timeout: Annotated[float | None, typer.Option(help=H("Seconds a finished run waits for the Pushgateway in all, then one warning; the run's exit code stands.", default="15", setting="push_timeout"))] = None,
    pushgateway: Annotated[str | None, typer.Option(help=H("Push the run's metrics to this Prometheus Pushgateway (job batchserve, grouped by output); unreachable: one warning.", setting="pushgateway"))] = None,
    job: Annotated[str | None, typer.Option(help="TOML job file ([score] table); flags and BATCHSERVE_* variables override it.")] = None,
    var: Annotated[list[str] | None, typer.Option("--var", help="Fill ${NAME} in the job file: NAME=VALUE (repeatable); else the environment's NAME.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan (files, rows, bytes, model version, output, what --resume would keep, an estimate) and write nothing.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing on success; only warnings and the one error line (cron mails what a job prints).")] = False,
    log_format: Annotated[str, typer.Option(autocompletion=choices("plain", "json"), show_default=False, envvar="BATCHSERVE_LOG_FORMAT", show_envvar=False, help=H("plain (UTC timestamps) or json (one object per line).", default="plain", setting="log_format"))] = "plain",
    log_file: Annotated[str | None, typer.Option(envvar="BATCHSERVE_LOG_FILE", show_envvar=False, help=H("Also append every log line (INFO and up, whatever -q says) and the error line to this file.", setting="log_file"))] = None,
    debug: Annotated[bool, typer.Option(help="Show tracebacks and debug logs.")] = False,
) -> None:
    """Score a Parquet dataset with an ONNX model into scored Parquet plus _manifest.json.

    Exit codes: 0 done, 1 failed (one `error:` line on stderr), 2 usage error (bad or missing option),
    3 drift past the threshold with --fail-on-drift (outputs committed),
    130/143 interrupted by SIGINT/SIGTERM (committed files kept; re-run with --resume).
    """
    run_id = new_run_id()
    _current_run["id"] = run_id
    state["run_id"] = run_id
    setup_logging(debug, quiet, log_format, log_file)

    def resolve() -> Any:
        flags: dict[str, Any] = {
            "model": model, "input": input, "output": output, "features": columns(features), "features_override": features_override,
            "keep": columns(keep), "batch_size": batch_size, "workers": workers, "scheduler": scheduler,
            "device": device, "overwrite": overwrite, "model_version": model_version, "prefix": prefix,
            "split_rows": split_rows, "reference": reference, "drift": drift, "fail_on_drift": fail_on_drift,
            "max_drift_share": max_drift_share, "drift_metric": drift_metric or None,
            "drift_threshold": drift_threshold or None, "resume": resume, "retries": retries,
            "on_error": on_error, "max_failed_files": max_failed_files, "nan": nan, "challenger": challenger,
            "challenger_output": challenger_output, "challenger_keep": columns(challenger_keep),
            "storage_options": storage_flag(storage_option), "filter": filter or None,
            "metrics_file": metrics_file, "metrics_job": metrics_job, "push_timeout": push_timeout, "pushgateway": pushgateway, "precision": precision, "trt_cache": trt_cache,
        }
        return resolve_score_config(flags, job_file=job, variables=var)

    cfg = settings_guard(debug, resolve)
    if dry_run:
        guard(debug, lambda: check_local_paths(cfg))
        plan = guard(debug, lambda: pipeline.dry_run(cfg))
        echo_dry_run(plan, cfg)
        return
    if cfg.metrics_file:
        problem = metrics.check_metrics_path(cfg.metrics_file)
        if problem:
            fail(problem, 2)
    bar = BarProgress() if on_terminal() and not quiet and log_format == "plain" else None
    t0 = time.monotonic()
    code, done = 1, None

    def run() -> tuple[Any, DriftError | None]:
        check_local_paths(cfg)
        try:
            return pipeline.score(cfg, on_progress=bar, run_id=run_id), None
        except DriftError as exc:  # outputs are committed: say what was scored, then why it is exit 3
            return exc.result, exc

    try:
        try:
            result, drifted = guard(debug, run)
        finally:
            if bar is not None:
                bar.stop()
        done = result.manifest
        code = drifted.exit_code if drifted is not None else 0
        if not quiet:
            echo_result(result)
        if drifted is not None:
            fail(str(drifted), drifted.exit_code)
        t = done.totals
        emit_closing(f"finished: scored {t.files} file(s), {t.rows} rows in {t.seconds:.1f}s, exit 0",
                     {"files": t.files, "rows": t.rows, "seconds": t.seconds})
    except typer.Exit as exc:
        code = exc.exit_code
        raise
    except BaseException as exc:
        code = exit_code_of(exc)
        raise
    finally:
        publish_metrics(cfg, run_id, code, done, time.monotonic() - t0, job)


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
    from rich.console import Console  # tables only here: rich.console and rich.table cost ~0.02 s
    from rich.markup import escape
    from rich.table import Table

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
    model: Annotated[str, typer.Option("--model", "-m", help=H("ONNX file or model repository folder.", setting="model"))],
    input: Annotated[str, typer.Option("--input", "-i", help=H("Parquet file, folder/prefix or glob.", setting="input"))],
    features: Annotated[str | None, typer.Option(help=H("Feature columns in model input order, comma-separated.", setting="features"))] = None,
    features_override: Annotated[bool | None, typer.Option("--features-override/--no-features-override", help=H("Accept --features that contradict the model's feature_names metadata.", setting="features_override"))] = None,
    keep: Annotated[str | None, typer.Option(help=H("Input columns to carry to the output.", setting="keep"))] = None,
    model_version: Annotated[int | None, typer.Option(help=H("Version folder in a model repository.", setting="model_version"))] = None,
    prefix: Annotated[str | None, typer.Option(help=H("Prefix for prediction column names.", setting="prefix"))] = None,
    storage_option: Annotated[list[str] | None, typer.Option("--storage-option", help=H("fsspec option key=value (repeatable).", setting="storage_options"))] = None,
    debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False,
) -> None:
    """Check the feature mapping and every file's schema without scoring (exit 0 or 1)."""
    def resolve() -> Any:
        flags: dict[str, Any] = {
            "model": model, "input": input, "output": "", "features": columns(features), "keep": columns(keep),
            "features_override": features_override,
            "model_version": model_version, "prefix": prefix,
            "storage_options": storage_flag(storage_option),
        }
        return resolve_config(flags, command="validate")

    cfg = settings_guard(debug, resolve)
    plan = guard(debug, lambda: pipeline.validate(cfg))
    typer.echo(
        f"ok: {len(plan.partitions)} file(s), {plan.rows:,} rows; features ({plan.features.source}): "
        f"{', '.join(plan.features.features)}"
    )


@app.command(
    epilog="Example: batchserve profile --input sample_data/transactions --model sample_data/model --output reference.json"
)
def profile(
    input: Annotated[str, typer.Option("--input", "-i", help=H("Trusted data (e.g. training set): Parquet file, folder or glob.", setting="input"))],
    output: Annotated[str, typer.Option("--output", "-o", help=H("Where to write the profile JSON (any fsspec URL).", setting="output"))],
    features: Annotated[str | None, typer.Option(help=H("Columns to profile.", default="the model's features, else every numeric column", setting="features"))] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help=H("Also profile this model's predictions on the data.", setting="model"))] = None,
    model_version: Annotated[int | None, typer.Option(help=H("Version folder in a model repository.", setting="model_version"))] = None,
    filter: Annotated[list[str] | None, typer.Option("--filter", help=H("Profile only files whose hive key=value folders match, e.g. 'log_date>=2026-11-27' (repeatable, all must hold).", setting="filter"))] = None,
    batch_size: Annotated[int | None, typer.Option(help=H("Rows per batch.", default=DEFAULT_BATCH_SIZE, setting="batch_size"))] = None,
    workers: Annotated[int | None, typer.Option(help=H("Local cluster size.", default="one per GPU, else cores/4", setting="workers"))] = None,
    scheduler: Annotated[str | None, typer.Option(help=H("Address of an existing Dask scheduler.", default="start a local cluster", setting="scheduler"))] = None,
    device: Annotated[str | None, typer.Option(autocompletion=choices("auto", "cpu", "cuda", "cuda:0"), help=H("auto | cpu | cuda | cuda:N.", default='auto', setting="device"))] = None,
    prefix: Annotated[str | None, typer.Option(help=H("Prediction column prefix, as used when scoring.", setting="prefix"))] = None,
    storage_option: Annotated[list[str] | None, typer.Option("--storage-option", help=H("fsspec option key=value (repeatable).", setting="storage_options"))] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing on success; only warnings and the one error line.")] = False,
    debug: Annotated[bool, typer.Option(help="Show tracebacks and debug logs.")] = False,
) -> None:
    """Build a reference profile (per-column statistics) to compare nightly runs against."""
    setup_logging(debug, quiet)

    def resolve() -> Any:
        flags: dict[str, Any] = {
            "input": input, "output": output, "features": columns(features), "model": model,
            "model_version": model_version, "filter": filter, "batch_size": batch_size, "workers": workers,
            "scheduler": scheduler, "device": device, "prefix": prefix,
            "storage_options": storage_flag(storage_option),
        }
        return resolve_config(flags, command="profile")

    cfg = settings_guard(debug, resolve)
    prof = guard(debug, lambda: pipeline.profile(cfg))
    if quiet:
        return
    typer.echo(
        f"profiled {prof.source['rows']:,} rows in {prof.source['files']} file(s): {len(prof.features)} feature(s)"
        f", {len(prof.predictions)} prediction column(s) -> {output}"
    )


@app.command(epilog="Example: batchserve report out/_manifest.json -o report.html;  "
             "batchserve report --history out/date=*/_manifest.json -o trend.html")
def report_cmd(
    manifest_uris: Annotated[list[str], typer.Argument(metavar="MANIFEST...", help="A run's _manifest.json (or its output folder); with --history, several.")],
    output: Annotated[str | None, typer.Option("--output", "-o", help="Write a self-contained HTML report here.")] = None,
    history: Annotated[bool, typer.Option("--history", help="Drift per feature and prediction column over a series of runs, in partition order, model-version changes marked.")] = False,
    storage_option: Annotated[list[str] | None, typer.Option("--storage-option", help="fsspec option key=value (repeatable).")] = None,
    debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False,
) -> None:
    """Show a run's drift: a plain-text summary here, and an HTML page with --output."""
    opts = storage_options(storage_option, debug)
    if history:
        urls = guard(debug, lambda: hist.find_manifests(manifest_uris, opts))
        runs = guard(debug, lambda: hist.load_runs(urls, opts))
        for row in hist.run_rows(runs, urls):
            typer.echo(_run_line(row))
        if output:  # each partition's current run; a run a later one replaced is listed above, not charted
            current = {r.run_id for r in hist.run_rows(runs, urls) if r.current}
            series = [(m, u) for m, u in zip(runs, urls, strict=True) if m.run.id in current]
            page = report.render_history_html(series)
            guard(debug, lambda: pipeline.write_text(output, page, opts))
            typer.echo(f"trend report: {output} ({len(series)} runs)")
        return
    if len(manifest_uris) != 1:
        fail(f"report takes one manifest ({len(manifest_uris)} given); pass --history for a series of runs", 2)
    data = guard(debug, lambda: pipeline.read_manifest(manifest_uris[0], opts))
    typer.echo(report.render_text(data), nl=False)
    if output:
        guard(debug, lambda: pipeline.write_text(output, report.render_html(data), opts))
        typer.echo(f"report: {output}")


app.registered_commands[-1].name = "report"
history_commands(app)
serve_command(app)
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
    emit_error(message, code)
    sys.exit(code)
