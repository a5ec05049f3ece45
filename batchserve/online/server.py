"""Running the app: the one module that imports the ASGI server (uvicorn, with uvloop and httptools).

The socket is bound here, before the model loads, so a port in use is one line naming it; the model
is loaded, checked and warmed up before the first connection is accepted. With ``--workers N`` the
parent binds and N processes share the socket (uvicorn's supervisor), each with its own session and
its share of the cores; SIGHUP to the parent replaces them one by one, each loading what the alias
names then. SIGTERM and SIGINT stop accepting, let requests in flight finish (``--drain-seconds``)
and exit 0.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import time
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from batchserve import tuning
from batchserve.config import ServeConfig, resolve_serve_config
from batchserve.errors import BatchserveError
from batchserve.logformat import JsonFormatter, formatter
from batchserve.online.app import ServeApp
from batchserve.online.slots import load_model

__all__ = ["run", "app_from_environment", "bind", "GuardedProtocol"]

log = logging.getLogger("batchserve.serve")
_CONFIG_ENV = "_BATCHSERVE_SERVE_CONFIG"
_LOG_ENV = "_BATCHSERVE_SERVE_LOG_FORMAT"


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, or one line saying why not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(2048)
    except OSError as exc:
        raise BatchserveError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


#: What the connection guard enforces, set from the settings in this process (the parent, or each worker
#: process from its own settings: uvicorn hands the protocol class over by name).
_LIMITS = {"read_timeout": 30.0, "max_connections": 1024}
_warned: dict[str, float] = {}


def _set_limits(cfg: ServeConfig) -> None:
    _LIMITS.update(read_timeout=cfg.read_timeout, max_connections=cfg.max_connections)


def _refuse(transport: Any, status: int, reason: str, message: str) -> None:
    """Answer a connection that never became a request, and close it: a JSON error as every other."""
    body = json.dumps({"error": message}).encode()
    transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                    b"connection: close\r\n\r\n%s" % (status, reason.encode(), len(body), body))
    transport.close()
    now = time.monotonic()
    if now - _warned.get(reason, -60.0) >= 60.0:  # a flood of slow clients is one line a minute
        _warned[reason] = now
        log.warning("refused a connection (%d): %s", status, message,
                    extra={"fields": {"event": "connection_refused", "status": status}})


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with what it lacks against slow clients: a deadline for a request's
    headers (from the connection's opening, or from the first byte of a request on a kept-alive one), then
    one for its body, each ``--read-timeout``; and a cap on open connections. Module level: uvicorn's
    worker processes receive it by name.

    No timer per request: each connection notes when its current phase began (one attribute), and one
    sweep per process closes the late ones (``_sweep``). A timer armed and cancelled per request, and an
    ``asyncio.timeout`` around each body, cost the answers throughput that showed in make bench-serve."""

    _since: float | None = None
    _phase = "headers"

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        cap = int(_LIMITS["max_connections"])
        if len(self.connections) > cap:
            _refuse(transport, 503, "Service Unavailable",
                    f"the server has --max-connections {cap} open connections; retry shortly")
            return
        _sweep(self.loop, self.connections)
        self._since = self.loop.time()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._since is None:  # a kept-alive connection's next request: its headers' deadline starts now
            self._since = self.loop.time()
        self._phase = "headers"

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._since, self._phase = self.loop.time(), "body"

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._since = None

    def late(self) -> None:
        """Past the deadline of its phase: a 408 if no answer has started, and the connection closed (an
        app waiting for the body then sees the client gone)."""
        self._since = None
        limit = f"--read-timeout {_LIMITS['read_timeout']:g} s"
        cycle = self.cycle
        if self._phase == "headers":
            _refuse(self.transport, 408, "Request Timeout", f"request headers did not arrive within {limit}")
        elif cycle is None or not cycle.response_started:
            _refuse(self.transport, 408, "Request Timeout", f"request body did not arrive within {limit}")
        else:
            self.transport.close()


#: The loops that have a sweep running (one per process, unless a test runs several).
_swept: set[int] = set()


def _sweep(loop: Any, connections: set[Any]) -> None:
    """Start, once per loop, the check that closes connections past their phase's deadline: every half
    ``--read-timeout`` and at least every second, so a deadline is kept to within that."""
    if id(loop) in _swept:
        return
    _swept.add(id(loop))

    def check() -> None:
        now, limit = loop.time(), _LIMITS["read_timeout"]
        try:
            for conn in list(connections):
                since = getattr(conn, "_since", None)
                if since is not None and now - since > limit and not conn.transport.is_closing():
                    conn.late()
        finally:  # one connection's failure must not end the deadlines of all the others
            loop.call_later(min(1.0, limit / 2), check)

    loop.call_later(min(1.0, _LIMITS["read_timeout"] / 2), check)


def _uvicorn_config(cfg: ServeConfig, app: Any, **extra: Any) -> Any:
    import uvicorn

    _set_limits(cfg)
    return uvicorn.Config(
        app, host=cfg.host, port=cfg.port, loop="uvloop", http=GuardedProtocol, lifespan="on", access_log=False,
        log_config=None, log_level="warning", timeout_graceful_shutdown=int(max(1, cfg.drain_seconds)),
        ssl_certfile=cfg.tls_cert, ssl_keyfile=cfg.tls_key, server_header=False, date_header=False,
        timeout_keep_alive=30, **extra)


def _quiet_signals() -> None:
    # uvicorn re-raises the signal that stopped it once it has drained; with these no-op handlers that
    # is the clean exit 0 the drain promised, not a death by signal (or our launcher's "interrupted").
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)


def run(cfg: ServeConfig) -> None:
    """Serve until SIGTERM/SIGINT; raises :class:`BatchserveError` (one line) if it cannot start."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    sock = bind(cfg.host, cfg.port)
    port = sock.getsockname()[1]
    threads = max(1, tuning.available_cores() // cfg.workers)
    first = load_model(cfg, threads)  # fails here, as one line, before anything is accepted
    scheme = "https" if cfg.tls_cert else "http"
    if cfg.workers == 1:
        app = ServeApp(cfg, preloaded=first, threads=threads)
        app.prepare()  # the challenger, reference, log and nightly scores too: a bad one is one line here
        server = uvicorn.Server(_uvicorn_config(cfg, app))
        _quiet_signals()
        log.info("listening on %s://%s:%d (model %s, version %s)", scheme, cfg.host, port, app.slots.name,
                 first.version or "-", extra={"fields": {"event": "listening", "port": port}})
        server.run(sockets=[sock])
        if not server.started:
            raise BatchserveError(f"the server on {cfg.host}:{port} did not start (see the lines above)")
        log.info("stopped", extra={"fields": {"event": "stopped"}})
        return
    probe = ServeApp(cfg, preloaded=first, threads=threads)
    probe.prepare()  # every part checked once here, as one line; each worker then loads its own
    if probe.tap is not None:
        probe.tap.close(0)
    first.loaded.close()
    del first, probe
    os.environ[_CONFIG_ENV] = json.dumps(cfg.to_settings())
    parent = logging.getLogger("batchserve")
    as_json = any(isinstance(h.formatter, JsonFormatter) for h in parent.handlers)
    os.environ[_LOG_ENV] = "json" if as_json else "plain"
    config = _uvicorn_config(cfg, "batchserve.online.server:app_from_environment", factory=True,
                             workers=cfg.workers)
    log.info("listening on %s://%s:%d with %d worker processes", scheme, cfg.host, port, cfg.workers,
             extra={"fields": {"event": "listening", "port": port}})
    Multiprocess(config, sockets=[sock]).run()
    log.info("stopped", extra={"fields": {"event": "stopped"}})


def app_from_environment() -> ServeApp:
    """The app of one worker process (``uvicorn --factory``): settings from the parent, or from
    ``BATCHSERVE_*`` alone when a team's own ASGI server starts it."""
    raw = os.environ.get(_CONFIG_ENV)
    settings = json.loads(raw) if raw else {}
    cfg = resolve_serve_config(settings)
    _set_limits(cfg)
    if raw:
        _setup_child_logging()
    return ServeApp(cfg, worker_index=os.getpid() % 1024 if cfg.workers > 1 else 0)


def _setup_child_logging() -> None:
    parent = logging.getLogger("batchserve")
    if not parent.handlers:  # spawned workers start bare: the lines their parent writes, plain or JSON
        handler = logging.StreamHandler()
        handler.setFormatter(formatter(os.environ.get(_LOG_ENV, "plain")))
        parent.addHandler(handler)
        parent.setLevel(logging.INFO)
        parent.propagate = False
