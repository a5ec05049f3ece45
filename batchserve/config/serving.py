"""The frozen settings of ``batchserve serve`` (:class:`ServeConfig`), resolved through the same
cascade as ``score``: explicit settings > ``BATCHSERVE_*`` > the job file's ``[serve]`` table > defaults.

Safe by default is decided here, before anything listens: loopback unless told, a bearer token from a
file or ``BATCHSERVE_TOKEN`` (never a flag's value, never a job-file key: both end up in shell history
or version control), and a non-loopback address without a token refused unless the caller says so.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Mapping
from typing import Any

from batchserve.config.environment import from_env
from batchserve.config.secrets import redact, redact_text
from batchserve.config.values import SERVE_CONVERTERS, merge_layers, storage_dict
from batchserve.errors import ConfigError, UsageError
from batchserve.jobfile import load_job_file, parse_vars, substitute

__all__ = ["ServeConfig", "resolve_serve_config", "is_loopback", "check_tls"]

_DEVICES = ("auto", "cpu", "cuda")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach ``host`` (``localhost``, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """Everything that decides what the server does; immutable once resolved."""

    model: str
    #: The model's name in URLs (``/v2/models/{name}``); default: the repository folder's name.
    name: str = ""
    host: str = "127.0.0.1"
    port: int = 8080
    features: tuple[str, ...] | None = None
    features_override: bool = False
    device: str = "auto"
    nan: str = "pass"
    storage_options: tuple[tuple[str, Any], ...] = ()
    #: Server processes sharing the port, each with its own session and its share of the cores.
    workers: int = 1
    #: Dynamic batching: at most this many rows in one inference call (requests are never split).
    max_batch_size: int = 256
    #: How long a forming batch waits for more requests while the model is idle (0: never waits;
    #: requests that arrive while a batch runs are merged into the next one anyway).
    max_queue_delay_us: int = 0
    #: Batches of at most this many rows run on the event loop's thread (no hand-off); larger ones on
    #: a worker thread, while the loop reads the next requests.
    inline_rows: int = 64
    #: Rows waiting for the model, across requests: beyond this a request is a 503 with Retry-After.
    max_queue_rows: int = 262_144
    #: Bytes in a request body (refused with 413 before it is read, when Content-Length says so).
    max_body: int = 64 << 20
    #: Rows in one request (413 beyond).
    max_rows: int = 65_536
    #: Seconds between checks of the alias the server follows (``root@alias``); SIGHUP checks at once.
    poll_seconds: float = 10.0
    token_file: str | None = None
    allow_unauthenticated: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None
    #: On SIGTERM/SIGINT: stop accepting, and give requests in flight this long to finish.
    drain_seconds: float = 30.0
    #: Seconds a client has to send a request's headers (from its first byte, or from the connection's
    #: opening) and, once they are in, its body; past either the connection is answered 408 and closed, so a
    #: slow client cannot hold a connection and its buffers forever.
    read_timeout: float = 30.0
    #: Open connections at most; one more is answered 503 and closed at once (idle keep-alive ones close
    #: after 30 s, slow ones after ``read_timeout``).
    max_connections: int = 1024
    access_log: bool = True
    #: Hybrid serving. Request logs: a Parquet dataset (date=/hour= folders, a file per flush).
    log_requests: str | None = None
    log_flush_rows: int = 50_000
    log_flush_seconds: float = 60.0
    #: Rows answered but not yet written; past it the oldest unwritten rows are dropped (and counted).
    log_buffer_rows: int = 500_000
    #: Share of requests logged (each request in or out whole), recorded in every file's metadata.
    log_sample: float = 1.0
    #: Live drift against this profile (or a succeeded run's manifest), over ``drift_window``
    #: (rows, e.g. ``100000``, or minutes, e.g. ``15m``).
    reference: str | None = None
    drift_window: str = "100000"
    drift_metric: tuple[str, ...] = ()
    drift_threshold: tuple[str, ...] = ()
    #: A second model scored on the same rows after the answer (online shadow).
    challenger: str | None = None
    #: The share of one core's time the challenger may take after the answer (a token bucket over the time
    #: its runs take): rows beyond it go unshadowed, counted, so a slow challenger never slows the answers.
    shadow_budget: float = 0.1
    #: Nightly scores served: the last committed run in this output, looked up by ``key``.
    precomputed: str | None = None
    key: str | None = None
    precomputed_only: bool = False
    #: The bearer token every endpoint but the health checks needs (from ``token_file`` or
    #: ``BATCHSERVE_TOKEN``); never printed.
    token: str | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.model:
            raise ConfigError("--model is empty; name an ONNX file or a model repository")
        if self.name and (not _NAME.match(self.name) or self.name in (".", "..")):
            raise ConfigError(f"--name must be one URL path segment (letters, digits, _ . -), got {self.name!r}: "
                              "it is the {name} in /v2/models/{name}/infer")
        kind, _, index = self.device.partition(":")
        if kind not in _DEVICES or (index and (kind != "cuda" or not index.isdigit())):
            raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.nan not in ("fail", "pass"):
            raise ConfigError(f"--nan must be fail or pass, got {self.nan!r}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be between 0 and 65535, got {self.port}")
        if not self.host or any(c.isspace() for c in self.host):
            raise ConfigError(f"--host must be an address or a host name, got {self.host!r}")
        bounds = {"workers": (1, 256), "max_batch_size": (1, 1 << 20), "max_queue_delay_us": (0, 1_000_000),
                  "inline_rows": (0, 1 << 20),
                  "max_queue_rows": (1, 1 << 30), "max_body": (1024, 1 << 34), "max_rows": (1, 1 << 26),
                  "max_connections": (1, 1 << 20)}
        for name, (lo, hi) in bounds.items():
            value = getattr(self, name)
            if not lo <= value <= hi:
                raise ConfigError(f"--{name.replace('_', '-')} must be between {lo:,} and {hi:,}, got {value:,}")
        if self.max_queue_rows < self.max_rows:
            raise ConfigError(f"--max-queue-rows ({self.max_queue_rows:,}) must hold at least one request of "
                              f"--max-rows ({self.max_rows:,})")
        for name in ("poll_seconds", "drain_seconds", "read_timeout"):
            value = getattr(self, name)
            if not 0 < value <= 86_400:
                raise ConfigError(f"--{name.replace('_', '-')} must be between 0 and 86400 seconds, got {value}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together: name the certificate and its key")
        if self.features is not None and len(set(self.features)) != len(self.features):
            raise ConfigError(f"--features lists a column twice: {', '.join(sorted(set(self.features)))}")
        if self.token is not None and (not self.token or any(c.isspace() for c in self.token)):
            raise ConfigError("the token is empty or holds white space (check --token-file or BATCHSERVE_TOKEN)")
        if not 1 <= self.log_flush_rows <= self.log_buffer_rows:
            raise ConfigError(f"--log-flush-rows must be between 1 and --log-buffer-rows ({self.log_buffer_rows:,}), "
                              f"got {self.log_flush_rows:,}")
        if not 0 < self.log_flush_seconds <= 86_400:
            raise ConfigError(f"--log-flush-seconds must be between 0 and 86400, got {self.log_flush_seconds}")
        if not 0 < self.shadow_budget <= 1:
            raise ConfigError("--shadow-budget must be a share of one core above 0 and at most 1, got "
                              f"{self.shadow_budget}")
        if not 0 < self.log_sample <= 1:
            raise ConfigError(f"--log-sample must be a share above 0 and at most 1, got {self.log_sample}")
        window_rows, window_seconds = self.window
        if (window_rows is not None and window_rows < 1) or (window_seconds is not None and window_seconds <= 0):
            raise ConfigError("--drift-window must be a number of rows, or minutes such as 15m, got "
                              f"{self.drift_window!r}")
        if (self.drift_metric or self.drift_threshold) and not self.reference:
            raise ConfigError("--drift-metric and --drift-threshold need --reference")
        if (self.precomputed is None) != (self.key is None):
            raise ConfigError("--precomputed and --key go together: name the scored output and its key column")
        if self.precomputed_only and self.precomputed is None:
            raise ConfigError("--precomputed-only needs --precomputed")
        if not is_loopback(self.host) and self.token is None and not self.allow_unauthenticated:
            raise ConfigError(
                f"--host {self.host} is reachable from other machines and no token is set: pass --token-file "
                "(or set BATCHSERVE_TOKEN), or --allow-unauthenticated if a proxy in front authenticates")

    @property
    def storage(self) -> dict[str, Any]:
        return storage_dict(self.storage_options)

    @property
    def window(self) -> tuple[int | None, float | None]:
        """``--drift-window`` as (rows, None) or (None, seconds); (-1, None) when unreadable."""
        text = self.drift_window.strip().lower()
        try:
            if text.endswith("m"):
                return None, float(text[:-1]) * 60
            return int(text.replace("_", "")), None
        except ValueError:
            return -1, None

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    def to_settings(self) -> dict[str, Any]:
        """The settings that make this config again (no token: :func:`resolve_serve_config` reads it from
        ``token_file`` or the environment), for a server's worker processes."""
        data = dataclasses.asdict(self)
        data.pop("token")
        data["storage_options"] = dict(storage_dict(self.storage_options))
        return {k: v for k, v in data.items() if v is not None}

    def redacted(self) -> dict[str, Any]:
        """For logs and the metadata endpoint: storage secrets and URL passwords masked, no token."""
        data = dataclasses.asdict(self)
        data.pop("token")
        data["features"] = list(self.features) if self.features is not None else None
        for name in ("drift_metric", "drift_threshold"):
            data[name] = list(getattr(self, name))
        data["storage_options"] = redact(storage_dict(self.storage_options))
        for name in ("model", "log_requests", "reference", "challenger", "precomputed"):
            if isinstance(data.get(name), str):
                data[name] = redact_text(data[name])
        data["authenticated"] = self.token is not None
        return data


def _read_token(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip()
    except FileNotFoundError:
        raise ConfigError("--token-file not found", path=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read --token-file: {getattr(exc, 'strerror', None) or exc}", path=path) from None


def resolve_serve_config(
    settings: Mapping[str, Any], *, env: Mapping[str, str] | None = None,
) -> ServeConfig:
    """``batchserve serve``'s settings: explicit > ``BATCHSERVE_*`` > the job file's ``[serve]`` table
    (``job``; ``vars`` fill its placeholders) > defaults.

    >>> resolve_serve_config({"model": "models/fraud@champion"}, env={}).port
    8080
    """
    env = os.environ if env is None else env
    flags = {k: v for k, v in settings.items() if k not in ("job", "vars") and v is not None}
    layers: list[tuple[str, Mapping[str, Any]]] = []
    job = settings.get("job")
    given = parse_vars(settings.get("vars"))
    if job is not None:
        if not isinstance(job, str):
            raise ConfigError(f"job must be the path of a TOML job file, got {job!r}")
        table = load_job_file(job, SERVE_CONVERTERS, command="serve")
        used: set[str] = set()
        layers.append((f"job file {job}", {
            k: substitute(v, given, env, f"job file {job}, key {k!r}", used) for k, v in table.items()}))
    elif given:
        raise ConfigError(f"--var {next(iter(given))} needs --job: variables fill a job file's ${{name}} placeholders")
    layers.append(("environment", from_env(env, SERVE_CONVERTERS)))
    layers.append(("arguments", flags))
    merged = merge_layers(layers, SERVE_CONVERTERS)
    if "model" not in merged:
        raise UsageError("missing required setting: model; pass --model or set it in the job file's [serve] table")
    token = env.get("BATCHSERVE_TOKEN") or None
    if merged.get("token_file"):
        token = _read_token(merged["token_file"])
    cfg = ServeConfig(**merged, token=token)
    if cfg.tls_cert is not None and cfg.tls_key is not None:
        check_tls(cfg.tls_cert, cfg.tls_key)
    return cfg


def _pem(path: str, flag: str, marker: bytes, what: str) -> None:
    try:
        with open(path, "rb") as fh:
            head = fh.read(1 << 20)
    except FileNotFoundError:
        raise ConfigError(f"{flag} not found", path=path) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {flag}: {exc.strerror or exc}", path=path) from None
    if marker not in head:
        raise ConfigError(f"{flag} is not {what} in PEM form (no {marker.decode()} line)", path=path)


def check_tls(cert: str, key: str) -> None:
    """The certificate and its key load together, or one line naming the file, before anything listens (a bad
    one used to be found by the first TLS handshake, after "listening on https" was said)."""
    import ssl

    _pem(cert, "--tls-cert", b"-----BEGIN CERTIFICATE-----", "a certificate")
    _pem(key, "--tls-key", b"PRIVATE KEY-----", "a private key")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key, password=lambda: b"")
    except (ssl.SSLError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or str(exc)
        raise ConfigError(f"--tls-key does not go with --tls-cert, or needs a passphrase ({reason})",
                          path=key) from None
