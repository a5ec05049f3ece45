"""``batchserve serve``: the same model repository, answering online over the Open Inference Protocol."""

from typing import TYPE_CHECKING, Annotated, Any

import typer

from batchserve.cli.common import choices, guard, helptext, settings_guard, setup_logging, storage_flag

if TYPE_CHECKING:
    from batchserve.online import server
else:
    from batchserve.cli.common import lazy

    server = lazy("batchserve.online.server")

__all__ = ["serve_command"]

H = helptext


def serve_command(app: typer.Typer) -> None:
    """Register ``serve`` on the main app."""

    @app.command(epilog=(
        "Examples: batchserve serve --model models/fraud@champion --name fraud;  "
        "curl -s localhost:8080/v2/models/fraud/infer -d '{\"inputs\": [{\"name\": \"amount\", \"datatype\": "
        "\"FP32\", \"shape\": [1], \"data\": [12.5]}, ...]}'"))
    def serve(
        model: Annotated[str | None, typer.Option("--model", "-m", help=H("ONNX file or model repository (root, root@alias, root@N); any fsspec URL. With root@alias the server follows the alias.", setting="model"))] = None,
        name: Annotated[str | None, typer.Option(help=H("The model's name in URLs (/v2/models/NAME).", default="the repository folder's name", setting="name"))] = None,
        host: Annotated[str | None, typer.Option(help=H("Address to bind; anything but loopback needs a token or --allow-unauthenticated.", default="127.0.0.1", setting="host"))] = None,
        port: Annotated[int | None, typer.Option(help=H("Port (0: any free port, printed).", default=8080, setting="port"))] = None,
        features: Annotated[str | None, typer.Option(help=H("Feature names in model input order, comma-separated.", default="the model's feature_names metadata", setting="features"))] = None,
        features_override: Annotated[bool | None, typer.Option("--features-override/--no-features-override", help=H("Accept --features that contradict the model's feature_names metadata.", default="no-features-override", setting="features_override"))] = None,
        device: Annotated[str | None, typer.Option(autocompletion=choices("auto", "cpu", "cuda", "cuda:0"), help=H("auto | cpu | cuda | cuda:N.", default="auto", setting="device"))] = None,
        nan: Annotated[str | None, typer.Option(autocompletion=choices("pass", "fail"), help=H("pass: NaN/inf/null features reach the model as NaN; fail: such a request is a 400.", default="pass", setting="nan"))] = None,
        storage_option: Annotated[list[str] | None, typer.Option("--storage-option", help=H("fsspec option key=value (repeatable).", setting="storage_options"))] = None,
        workers: Annotated[int | None, typer.Option(help=H("Server processes sharing the port, each with its own session and share of the cores.", default=1, setting="workers"))] = None,
        max_batch_size: Annotated[int | None, typer.Option(help=H("Dynamic batching: most rows merged into one inference call.", default=256, setting="max_batch_size"))] = None,
        max_queue_delay_us: Annotated[int | None, typer.Option(help=H("Microseconds an idle model waits for more requests before running a batch.", default=0, setting="max_queue_delay_us"))] = None,
        inline_rows: Annotated[int | None, typer.Option(help=H("Batches of at most this many rows run on the event loop's thread (no hand-off); larger ones on a worker thread.", default=64, setting="inline_rows"))] = None,
        max_queue_rows: Annotated[int | None, typer.Option(help=H("Rows waiting for the model at most; past it a request is a 503 with Retry-After.", default=262144, setting="max_queue_rows"))] = None,
        max_body: Annotated[int | None, typer.Option(help=H("Largest request body in bytes (413 beyond, refused before it is read).", default=64 << 20, setting="max_body"))] = None,
        max_rows: Annotated[int | None, typer.Option(help=H("Most rows in one request (413 beyond).", default=65536, setting="max_rows"))] = None,
        poll_seconds: Annotated[float | None, typer.Option(help=H("With root@alias: seconds between checks of the alias (SIGHUP checks at once).", default=10, setting="poll_seconds"))] = None,
        token_file: Annotated[str | None, typer.Option(help=H("File holding the bearer token every endpoint but the health checks then needs (or set BATCHSERVE_TOKEN).", setting="token_file"))] = None,
        allow_unauthenticated: Annotated[bool | None, typer.Option("--allow-unauthenticated/--no-allow-unauthenticated", help=H("Allow a non-loopback --host without a token (a proxy in front authenticates).", default="no-allow-unauthenticated", setting="allow_unauthenticated"))] = None,
        tls_cert: Annotated[str | None, typer.Option(help=H("TLS certificate (PEM); with --tls-key, serve HTTPS.", setting="tls_cert"))] = None,
        tls_key: Annotated[str | None, typer.Option(help=H("TLS private key (PEM).", setting="tls_key"))] = None,
        drain_seconds: Annotated[float | None, typer.Option(help=H("On SIGTERM/SIGINT: seconds requests in flight get to finish.", default=30, setting="drain_seconds"))] = None,
        read_timeout: Annotated[float | None, typer.Option(help=H("Seconds a client has to send a request's headers, and then its body; past either: 408, connection closed.", default=30, setting="read_timeout"))] = None,
        max_connections: Annotated[int | None, typer.Option(help=H("Open connections at most; one more is answered 503 and closed.", default=1024, setting="max_connections"))] = None,
        access_log: Annotated[bool | None, typer.Option("--access-log/--no-access-log", help=H("One log line per request (request id, status, version).", default="access-log", setting="access_log"))] = None,
        log_requests: Annotated[str | None, typer.Option(help=H("Log every scored row as Parquet here (log_date=/log_hour= folders; any fsspec URL): input to score, profile and drift as it is.", setting="log_requests"))] = None,
        log_flush_rows: Annotated[int | None, typer.Option(help=H("Rows per request-log file (a flush).", default=50000, setting="log_flush_rows"))] = None,
        log_flush_seconds: Annotated[float | None, typer.Option(help=H("Seconds at most between request-log flushes.", default=60, setting="log_flush_seconds"))] = None,
        log_buffer_rows: Annotated[int | None, typer.Option(help=H("Unwritten request-log rows kept at most; beyond, the oldest are dropped and counted.", default=500000, setting="log_buffer_rows"))] = None,
        log_sample: Annotated[float | None, typer.Option(help=H("Share of requests logged (recorded in each file).", default=1.0, setting="log_sample"))] = None,
        reference: Annotated[str | None, typer.Option(help=H("Live drift against this profile (batchserve profile) or a run's _manifest.json: /v2/models/NAME/drift and /metrics.", setting="reference"))] = None,
        drift_window: Annotated[str | None, typer.Option(help=H("Live drift window: rows (100000) or minutes (15m).", default="100000", setting="drift_window"))] = None,
        drift_metric: Annotated[list[str] | None, typer.Option("--drift-metric", help=H("[COLUMN:]METRIC deciding drift, as for score (repeatable).", default="psi", setting="drift_metric"))] = None,
        drift_threshold: Annotated[list[str] | None, typer.Option("--drift-threshold", help=H("[COLUMN:]METRIC=VALUE, as for score (repeatable).", setting="drift_threshold"))] = None,
        challenger: Annotated[str | None, typer.Option(help=H("Score a second model on the same rows after each answer (online shadow), e.g. models/fraud@candidate.", setting="challenger"))] = None,
        shadow_budget: Annotated[float | None, typer.Option(help=H("Share of one core's time the challenger may take; rows beyond it go unshadowed and counted, so a slow challenger never slows the answers.", default=0.1, setting="shadow_budget"))] = None,
        precomputed: Annotated[str | None, typer.Option(help=H("Answer from the last committed run of this scored output when a request carries its --key.", setting="precomputed"))] = None,
        key: Annotated[str | None, typer.Option(help=H("The key column of --precomputed (an input of that name in a request).", setting="key"))] = None,
        precomputed_only: Annotated[bool | None, typer.Option("--precomputed-only/--no-precomputed-only", help=H("A key the nightly run did not score is a 404 (not scored online).", default="no-precomputed-only", setting="precomputed_only"))] = None,
        job: Annotated[str | None, typer.Option(help="TOML job file ([serve] table); flags and BATCHSERVE_* variables override it.")] = None,
        var: Annotated[list[str] | None, typer.Option("--var", help="Fill ${NAME} in the job file: NAME=VALUE (repeatable).")] = None,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors (no access log lines).")] = False,
        log_format: Annotated[str, typer.Option(autocompletion=choices("plain", "json"), show_default=False, envvar="BATCHSERVE_LOG_FORMAT", show_envvar=False, help=H("plain (UTC timestamps) or json (one object per line).", default="plain", setting="log_format"))] = "plain",
        log_file: Annotated[str | None, typer.Option(envvar="BATCHSERVE_LOG_FILE", show_envvar=False, help=H("Also append every log line to this file.", setting="log_file"))] = None,
        debug: Annotated[bool, typer.Option(help="Show tracebacks and debug logs.")] = False,
    ) -> None:
        """Serve the model online: Open Inference Protocol v2 (JSON and binary tensors), SageMaker's /ping
        and /invocations, Prometheus /metrics; hot swap when the alias moves.

        Exit codes: 0 stopped by SIGTERM/SIGINT after draining, 1 could not start (one `error:` line),
        2 usage error (bad or missing option).
        """
        setup_logging(debug, quiet, log_format, log_file)

        def resolve() -> Any:
            from batchserve.config import resolve_serve_config

            flags: dict[str, Any] = {
                "model": model, "name": name, "host": host, "port": port, "features": features,
                "features_override": features_override, "device": device, "nan": nan,
                "storage_options": storage_flag(storage_option), "workers": workers,
                "max_batch_size": max_batch_size, "max_queue_delay_us": max_queue_delay_us, "inline_rows": inline_rows,
                "max_queue_rows": max_queue_rows, "max_body": max_body, "max_rows": max_rows,
                "poll_seconds": poll_seconds, "token_file": token_file,
                "allow_unauthenticated": allow_unauthenticated, "tls_cert": tls_cert, "tls_key": tls_key,
                "drain_seconds": drain_seconds, "read_timeout": read_timeout, "max_connections": max_connections,
                "shadow_budget": shadow_budget, "access_log": access_log, "log_requests": log_requests,
                "log_flush_rows": log_flush_rows, "log_flush_seconds": log_flush_seconds,
                "log_buffer_rows": log_buffer_rows, "log_sample": log_sample, "reference": reference,
                "drift_window": drift_window, "drift_metric": drift_metric, "drift_threshold": drift_threshold,
                "challenger": challenger, "precomputed": precomputed, "key": key,
                "precomputed_only": precomputed_only, "job": job, "vars": var,
            }
            return resolve_serve_config(flags)

        cfg = settings_guard(debug, resolve)
        guard(debug, lambda: server.run(cfg))
