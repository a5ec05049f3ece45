"""What a run leaves for people and machines once it is planned or done: the dry run's plan, the
summary line (a JSON log event with ``--log-format json``), and the Prometheus metrics."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import typer

from batchserve.cli.common import lazy, state
from batchserve.config.secrets import redact_text
from batchserve.errors import BatchserveError

if TYPE_CHECKING:
    from batchserve import metrics, pipeline
else:
    metrics, pipeline = lazy("batchserve.metrics"), lazy("batchserve.pipeline")

__all__ = ["publish_metrics", "echo_dry_run", "echo_result"]

log = logging.getLogger("batchserve")


def publish_metrics(cfg: Any, run_id: str, code: int, done: Any, seconds: float, job_file: str | None = None) -> None:
    """After success and after failure: the file and the push. A failed run's numbers come from the
    manifest it left in the output (the committed files), when that manifest is this run's."""
    if not (cfg.metrics_file or cfg.pushgateway):
        return
    if done is None:
        try:
            left = pipeline.read_manifest(cfg.output, cfg.storage)
            done = left if left.run.id == run_id else None
        except BatchserveError:
            done = None
    outcome = metrics.RunOutcome(output=cfg.output, model=cfg.model, exit_code=code, run_id=run_id,
                                 seconds=seconds, manifest=done,
                                 job=cfg.metrics_job or metrics.default_job(cfg.output, job_file))
    if cfg.metrics_file:
        try:
            metrics.write_metrics_file(cfg.metrics_file, outcome)
        except OSError as exc:
            log.warning("could not write --metrics-file %s: %s", cfg.metrics_file, exc.strerror or exc)
    if cfg.pushgateway:
        from batchserve.pipeline.signals import interrupting  # the run's own modules: loaded by now

        # not the console script's "before scoring started; nothing was scored": the run had finished
        with interrupting(lambda name: f"interrupted by {name} while pushing the metrics of a run that had "
                                       f"finished (exit {code}); its outputs and manifest are written"):
            problem = metrics.push_metrics(cfg.pushgateway, outcome, cfg.push_timeout)
        if problem:
            log.warning("could not push metrics to %s (%s); the run's result stands", cfg.pushgateway, problem,
                        extra={"fields": {"pushgateway": cfg.pushgateway}})


def echo_dry_run(d: pipeline.DryRun, cfg: Any) -> None:
    """The plan an analyst reads before rescoring; nothing was written."""
    p = d.plan
    if state["format"] == "json":
        typer.echo(json.dumps({
            "dry_run": True, "files": d.files, "rows": d.rows, "bytes": d.bytes, "model": redact_text(p.model_uri),
            "model_version": p.model_version, "model_url": redact_text(p.model_url), "sha256": p.info.sha256,
            "output": d.output, "filter": list(cfg.filter), "resumable_files": d.reusable,
            "resumable_rows": d.reusable_rows, "previous_run": d.previous_run,
            "estimate_seconds": d.estimate_seconds, "scope": list(d.scope), "would_remove": list(d.removes),
            "inputs": [{"path": part.relpath, "rows": f.num_rows, "bytes": part.size}
                       for part, f in zip(p.partitions, p.footers, strict=True)],
        }))
        return
    where = f" (--filter {' and '.join(cfg.filter)})" if cfg.filter else ""
    typer.echo(f"dry run: nothing written{where}")
    typer.echo(f"  inputs: {d.files} file(s), {d.rows:,} rows, {d.bytes:,} bytes (from the footers) under {p.input_root}")
    for part, f in list(zip(p.partitions, p.footers, strict=True))[:20]:
        typer.echo(f"    {part.relpath}  {f.num_rows:,} rows  {part.size:,} bytes")
    if d.files > 20:
        typer.echo(f"    ... and {d.files - 20} more")
    if p.failures:
        typer.echo(f"  skipped (--on-error skip): {len(p.failures)} file(s), e.g. {p.failures[0].relpath}: {p.failures[0].error}")
    typer.echo(f"  model: {redact_text(p.model_uri)} -> version {p.model_version or '-'} ({redact_text(p.model_url)}, "
               f"sha256 {p.info.sha256[:12]})")
    scope = f"the files --filter {' and '.join(d.scope)} selects; other partitions are left as they are" if d.scope else "all of it"
    typer.echo(f"  output: {d.output} (this run owns {scope})")
    if d.removes:
        typer.echo(f"  would remove {len(d.removes)} earlier output(s) in its scope whose input is gone: {', '.join(d.removes[:20])}"
                   + (f" ... and {len(d.removes) - 20} more" if len(d.removes) > 20 else ""))
    if d.previous_run is None:
        typer.echo("  resume: nothing to reuse (no earlier run in the output)")
        typer.echo("  estimate: none (no earlier run in the output to go by)")
    else:
        typer.echo(f"  resume: --resume would keep {d.reusable} of {d.files} file(s) ({d.reusable_rows:,} rows) "
                   f"from run {d.previous_run} ({d.previous_status})")
        if d.estimate_seconds is not None:
            typer.echo(f"  estimate: about {d.estimate_seconds:,.1f}s of scoring at {d.previous_rows_per_second:,.0f} rows/s "
                       f"(run {d.previous_run}), plus startup")


def echo_result(result: pipeline.RunResult) -> None:
    """The summary a person reads after a run (with --log-format json: one JSON object)."""
    t = result.manifest.totals
    d = result.manifest.drift
    ch = result.manifest.challenger
    if state["format"] == "json":
        fields = {"files": t.files, "rows": t.rows, "seconds": t.seconds, "rows_per_second": t.rows_per_second,
                  "output": result.output, "manifest": result.manifest_url,
                  "model_version": result.manifest.model.version}
        if d is not None and d.reference is not None:
            fields["drifted_features"] = list(d.drifted_features)
            fields["drifted_predictions"] = list(d.drifted_predictions)
        log.info("scored", extra={"fields": fields})
        return
    typer.echo(
        f"scored {t.files} file(s), {t.rows:,} rows in {t.seconds:.1f}s ({t.rows_per_second:,.0f} rows/s) "
        f"-> {result.output}  manifest: {result.manifest_url}"
    )
    if d is not None and d.reference is not None:
        typer.echo(
            f"drift: {len(d.drifted_features)} of {len(d.features)} features drifted"
            + (f" ({', '.join(d.drifted_features)})" if d.drifted_features else "")
            + f", {len(d.drifted_predictions)} of {len(d.predictions)} prediction columns drifted"
            + (f" ({', '.join(d.drifted_predictions)})" if d.drifted_predictions else "")
            + f"; report: batchserve report {result.manifest_url} --output report.html"
        )
    if ch is not None:
        worst = max((c.mean_abs_diff or 0.0 for c in ch.columns.values()), default=0.0)
        typer.echo(
            f"challenger {ch.model['uri']} (version {ch.model['version']}) -> {ch.output}: "
            f"largest mean |difference| {worst:.4g}; inference {ch.infer_seconds['challenger']:.2f}s beside "
            f"{ch.infer_seconds['champion']:.2f}s"
        )
