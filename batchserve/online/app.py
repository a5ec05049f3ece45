"""The ASGI application: routes, auth, limits, errors -> statuses. No model code (slots.py) and no
protocol code (protocol.py) here.

Routes (Open Inference Protocol v2, SageMaker's container contract, Prometheus)::

    GET  /v2/health/live  /v2/health/ready  /ping             open (probes carry no token)
    GET  /v2                                                   server metadata
    GET  /v2/models/{name}[/versions/{v}][/ready]              model metadata / readiness
    POST /v2/models/{name}[/versions/{v}]/infer                inference (JSON or binary tensors)
    POST /invocations                                          SageMaker: CSV rows or JSON instances
    GET  /metrics                                              Prometheus text format

Nothing here loads, registers or promotes a model, or opens a path or URL a request names: what is
served changes through the CLI and its audit trail only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hmac
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

from batchserve import tuning
from batchserve.config import ServeConfig
from batchserve.errors import BatchserveError, RequestError, closest
from batchserve.online import protocol, sagemaker
from batchserve.online.hybrid import hybrid_parts
from batchserve.online.inputs import to_feeds
from batchserve.online.live_drift import LiveDrift
from batchserve.online.precomputed import Precomputed
from batchserve.online.shadow import OnlineShadow
from batchserve.online.slots import Served, Slots
from batchserve.online.tap import Tap
from batchserve.online.telemetry import Telemetry, log_request
from batchserve.version import version

__all__ = ["ServeApp", "create_app"]

log = logging.getLogger("batchserve.serve")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
#: status, JSON-able body or raw bytes, extra headers, the version that answered, rows scored.
Answer = tuple[int, Any, list[tuple[bytes, bytes]], str | None, int]

_OPEN = frozenset({"/v2/health/live", "/v2/health/ready", "/ping"})
_JSON = (b"content-type", b"application/json")


class _Gone(Exception):
    """The client disconnected before its body arrived."""


def _request_id(headers: dict[bytes, bytes]) -> str:
    given = headers.get(b"x-request-id", b"")[:128].decode("latin-1")
    return given if given and given.isprintable() and " " not in given else os.urandom(12).hex()


class ServeApp:
    """One model, served; an ASGI 3 application (uvicorn, hypercorn, granian, gunicorn's uvicorn worker)."""

    def __init__(self, cfg: ServeConfig, *, preloaded: Served | None = None, worker_index: int = 0,
                 threads: int | None = None) -> None:
        self.cfg = cfg
        self.telemetry = Telemetry()
        # One batch in flight per model: a batch uses the session's intra-op threads (the cores), and
        # requests that arrive meanwhile form the next batch (README, "Speed: dynamic batching").
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="batchserve-infer")
        self._threads = threads or max(1, tuning.available_cores() // cfg.workers)
        self.slots = Slots(cfg, self.telemetry, self.executor, self._threads, worker_index)
        self._preloaded = preloaded
        self._token = cfg.token.encode() if cfg.token else None
        self._tasks: list[asyncio.Task[None]] = []
        self._prepared = False
        self.draining = False
        self.tap: Tap | None = None
        self.live: LiveDrift | None = None
        self.shadow: OnlineShadow | None = None
        self.challenger: Slots | None = None
        self.precomputed: Precomputed | None = None

    # --- lifecycle -----------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Load, check and warm up the model (unless given loaded), and what serves beside it: the
        challenger, the live drift reference, the request log, the nightly scores. Blocking; a failure
        is one :class:`BatchserveError`."""
        if self._prepared:
            return
        served = self._preloaded or self.slots.load()
        self._preloaded = None
        hybrid = hybrid_parts(self.cfg, self.telemetry, self.executor, self.slots.name, served)
        if hybrid.tap is not None:
            self.slots.on_answer = hybrid.hook
        self.slots.start(served)
        self.challenger, self.precomputed = hybrid.challenger, hybrid.precomputed
        self.live, self.shadow, self.tap = hybrid.live, hybrid.shadow, hybrid.tap
        if self.live is not None or self.shadow is not None:
            self.telemetry.watch(self.sections)
        self._prepared = True

    async def startup(self) -> None:
        """Prepare (in a thread: loading takes seconds), then follow the aliases and the nightly output."""
        loop = asyncio.get_running_loop()
        if not self._prepared:
            await loop.run_in_executor(None, self.prepare)
        if self._tasks:
            return
        for slots in (self.slots, self.challenger):
            if slots is not None and slots.alias is not None:
                self._tasks.append(loop.create_task(slots.follow()))
        if self.precomputed is not None:
            self._tasks.append(loop.create_task(self.precomputed.follow(self.cfg.poll_seconds, self.slots)))
            nightly = self.precomputed
            # A swap changes which version answers online: the nightly run's version is compared again
            # (it used to be only at start and when a newer run committed).
            self.slots.on_swap = lambda served: nightly.check_version(served.version)
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread
            loop.add_signal_handler(signal.SIGHUP, self._hup)

    def _hup(self) -> None:
        log.info("SIGHUP: checking the aliases and the nightly output now")
        for slots in (self.slots, self.challenger):
            if slots is not None and slots.hup is not None:
                slots.hup.set()
        if self.precomputed is not None:
            self.precomputed.hup.set()

    async def shutdown(self) -> None:
        self.draining = True
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.executor.shutdown(wait=True)
        if self.tap is not None:  # what was answered reaches the shadow, the drift and the log
            await asyncio.get_running_loop().run_in_executor(None, self.tap.close, self.cfg.drain_seconds)

    def sections(self) -> dict[str, Any]:
        """The drift endpoint's document: live drift and shadow agreement, whichever are on."""
        doc: dict[str, Any] = {"model_name": self.slots.name,
                               "model_version": self.slots.current.version if self.slots.ready else None}
        if self.live is not None:
            doc["drift"] = self.live.section()
        if self.shadow is not None:
            doc["challenger"] = self.shadow.section()
        return doc

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except BatchserveError as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # --- requests ------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        headers = dict(scope["headers"])
        rid = _request_id(headers)
        scope["batchserve.request"] = (rid, time.time_ns())
        path, method = scope["path"], scope["method"]
        endpoint, version, rows = "other", None, 0
        extra: list[tuple[bytes, bytes]] = []
        try:
            endpoint, handler = self._route(method, path)
            if self._token is not None and path not in _OPEN:
                self._authenticate(headers)
            status, body, extra, version, rows = await handler(scope, receive, headers)
        except _Gone:
            self.telemetry.requests.labels(endpoint, "499").inc()
            return
        except asyncio.CancelledError:
            # Only the server cancels a request: when --drain-seconds ran out on SIGTERM. The client gets a
            # JSON 503 it can retry elsewhere, and the log one line (not a traceback and a text/plain 500).
            status, body = 503, {"error": "the server stopped before this request was answered (--drain-seconds "
                                          f"{self.cfg.drain_seconds:g} ran out); retry it"}
            extra = [(b"retry-after", b"1"), (b"connection", b"close")]
            log.warning("request %s on %s cut off by the drain: answered 503", rid, path,
                        extra={"fields": {"event": "drain_cut", "request_id": rid}})
        except BatchserveError as exc:
            status, body = exc.http_status, {"error": str(exc)}
            if status == 401:
                extra = [(b"www-authenticate", b"Bearer")]
            elif status == 503:
                extra = [(b"retry-after", b"1")]
            elif status == 413:  # the rest of the body may still be on its way: not read, so not kept
                extra = [(b"connection", b"close")]
        except Exception as exc:
            status, body = 500, {"error": f"internal error (a bug in batchserve); request id {rid}"}
            log.error("internal error on %s %s, request id %s: %s: %s", method, path, rid, type(exc).__name__,
                      " ".join(str(exc).split())[:300], exc_info=log.isEnabledFor(logging.DEBUG))
        if isinstance(body, bytes):
            payload = body
            kind = next((v for k, v in extra if k == b"content-type"), None)
            if kind is None:
                extra = [_JSON, *extra]
        else:
            payload = protocol.dumps(body)
            extra = [_JSON, *extra]
        response_headers = [(b"content-length", str(len(payload)).encode()), (b"x-request-id", rid.encode()), *extra]
        if version is not None:
            response_headers.append((b"x-model-version", version.encode()))
        with contextlib.suppress(OSError):
            await send({"type": "http.response.start", "status": status, "headers": response_headers})
            await send({"type": "http.response.body", "body": payload})
        seconds = time.perf_counter() - start
        self.telemetry.requests.labels(endpoint, str(status)).inc()
        self.telemetry.latency.labels(endpoint).observe(seconds)
        if self.cfg.access_log:
            log_request({"method": method, "path": path, "status": status, "ms": round(seconds * 1000, 3),
                         "rows": rows, "version": version, "request_id": rid, "model": self.slots.name})

    def _authenticate(self, headers: dict[bytes, bytes]) -> None:
        given = headers.get(b"authorization", b"")
        scheme, _, token = given.partition(b" ")
        assert self._token is not None
        # Compared in constant time, whatever the scheme said: timing tells nothing about the token.
        ok = hmac.compare_digest(token.strip(), self._token)
        if not ok or scheme.lower() != b"bearer":
            raise RequestError("missing or wrong bearer token (Authorization: Bearer <token>)", status=401)

    def _route(self, method: str, path: str) -> tuple[str, Callable[..., Awaitable[Answer]]]:
        parts = path.strip("/").split("/")
        want = "GET"
        handler: Callable[..., Awaitable[Answer]]
        if path == "/v2/health/live":
            endpoint, handler = "live", self._live
        elif path == "/v2/health/ready" or path == "/ping":
            endpoint, handler = "ready", self._ready
        elif path.rstrip("/") == "/v2":
            endpoint, handler = "server", self._server
        elif path == "/metrics":
            endpoint, handler = "metrics", self._metrics
        elif path == "/invocations":
            endpoint, handler, want = "invocations", self._invocations, "POST"
        elif len(parts) >= 3 and parts[:2] == ["v2", "models"]:
            endpoint, handler, want = self._model_route(parts[2:])
        else:
            raise RequestError(f"no such endpoint: {path[:200]}", status=404)
        if method != want and not (method == "HEAD" and want == "GET"):
            raise RequestError(f"{method} is not allowed on {path[:200]}; use {want}", status=405)
        return endpoint, handler

    def _model_route(self, rest: list[str]) -> tuple[str, Callable[..., Awaitable[Answer]], str]:
        name, rest = rest[0], rest[1:]
        pinned = None
        if rest[:1] == ["versions"] and len(rest) >= 2:
            pinned, rest = rest[1], rest[2:]
        if not rest:
            return "metadata", lambda *_: self._metadata(name, pinned), "GET"
        if rest == ["ready"]:
            return "model_ready", lambda *_: self._model_ready(name, pinned), "GET"
        if rest == ["infer"]:
            return "infer", lambda s, r, h: self._infer(name, pinned, s, r, h), "POST"
        if rest == ["drift"] and pinned is None:
            return "drift", lambda *_: self._drift(name), "GET"
        raise RequestError(f"no such endpoint under /v2/models/{name[:100]}", status=404)

    def _served(self, name: str, pinned: str | None) -> Served:
        if name != self.slots.name:
            raise RequestError(f"unknown model {name[:100]!r}{closest(name, [self.slots.name], quote=True)}; "
                               f"this server serves {self.slots.name!r}", status=404)
        if not self.slots.ready:
            raise RequestError("the model is still loading", status=503)
        served = self.slots.current
        if pinned is not None and pinned != served.version:
            raise RequestError(f"version {pinned[:40]!r} of {name!r} is not being served (serving version "
                               f"{served.version})", status=404)
        return served

    async def _body(self, receive: Receive, headers: dict[bytes, bytes]) -> bytes:
        limit = self.cfg.max_body
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestError(f"request body of {int(declared):,} bytes is over --max-body {limit:,}", status=413)
        chunks = []
        size = 0
        # The body's deadline (--read-timeout) is the server's: online.server.GuardedProtocol answers 408
        # and closes, and this loop then sees the client gone.
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Gone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise RequestError(f"request body is over --max-body {limit:,} bytes", status=413)
            chunks.append(chunk)
            if not message.get("more_body"):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    # --- handlers ------------------------------------------------------------------------------------

    async def _live(self, *_: Any) -> Answer:
        return 200, {"live": True}, [], None, 0

    async def _ready(self, *_: Any) -> Answer:
        if not self.slots.ready or self.draining:
            raise RequestError("not ready: " + ("shutting down" if self.draining else "the model is loading"),
                               status=503)
        return 200, {"ready": True}, [], None, 0

    async def _server(self, *_: Any) -> Answer:
        return 200, {"name": "batchserve", "version": version(), "extensions": ["binary_tensor_data"]}, [], None, 0

    async def _metrics(self, *_: Any) -> Answer:
        batcher = self.slots.current.batcher if self.slots.ready else None
        self.telemetry.queue_rows.set(batcher.queued_rows if batcher is not None else 0)
        # Live drift is summarised when scraped: off the event loop.
        text = await asyncio.get_running_loop().run_in_executor(None, self.telemetry.render)
        return 200, text, [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")], None, 0

    async def _metadata(self, name: str, pinned: str | None) -> Answer:
        served = self._served(name, pinned)
        return 200, self.slots.metadata(served), [], served.version, 0

    async def _model_ready(self, name: str, pinned: str | None) -> Answer:
        served = self._served(name, pinned)
        return 200, {"name": name, "ready": not self.draining}, [], served.version, 0

    async def _drift(self, name: str) -> Answer:
        served = self._served(name, None)
        if self.live is None and self.shadow is None:
            raise RequestError("no live drift or shadow here: start the server with --reference PROFILE or "
                               "--challenger MODEL", status=404)
        doc = await asyncio.get_running_loop().run_in_executor(None, self.sections)
        return 200, doc, [], served.version, 0

    async def _predict(self, served: Served, tensors: Any, scope: Scope) -> tuple[dict[str, Any], int]:
        feeds, n = to_feeds(tensors, served.plan, self.cfg.max_rows)
        assert served.batcher is not None
        rid, received = scope["batchserve.request"]
        tag = (rid, received, n, self.tap.sampled()) if self.tap is not None else None
        return dict(await served.batcher.submit(feeds, n, tag)), n

    async def _infer(self, name: str, pinned: str | None, scope: Scope, receive: Receive,
                     headers: dict[bytes, bytes]) -> Answer:
        body = await self._body(receive, headers)
        raw = headers.get(protocol.HEADER_LENGTH.encode())
        length = None
        if raw is not None:
            if not raw.strip().isdigit():
                raise RequestError(f"Inference-Header-Content-Length must be a number of bytes, got {raw[:40]!r}")
            length = int(raw)
        request = protocol.parse_infer(body, length)
        served = self._served(name, pinned)  # picked and queued with no await between: the version answers
        answered = (self.precomputed.answer(request.inputs, self.cfg.precomputed_only)
                    if self.precomputed is not None else None)
        params: dict[str, Any] | None
        if answered is not None:
            columns, n, version, params = answered
        else:
            inputs = [t for t in request.inputs if self.precomputed is None or t.name != self.precomputed.key]
            columns, n = await self._predict(served, inputs, scope)
            version, params = served.version, ({"source": "online"} if self.precomputed is not None else None)
        if request.outputs is None:
            wanted = [(k, request.binary_output) for k in columns]
        else:
            for k, _ in request.outputs:
                if k not in columns:
                    raise RequestError(f"unknown output {k!r}{closest(k, list(columns), quote=True)}; "
                                       f"outputs: {', '.join(columns)}")
            wanted = list(request.outputs)
        tensors = [protocol.prediction_tensor(k, columns[k]) for k, _ in wanted]
        head: dict[str, Any] = {"model_name": self.slots.name, "model_version": version}
        if request.id is not None:
            head["id"] = request.id
        if params is not None:
            head["parameters"] = params
        payload, header_length = protocol.encode_infer(head, tensors, [b for _, b in wanted])
        extra = [] if header_length is None else [
            (b"content-type", b"application/octet-stream"),
            (protocol.HEADER_LENGTH.encode(), str(header_length).encode())]
        return 200, payload, extra, version, n

    async def _invocations(self, scope: Scope, receive: Receive, headers: dict[bytes, bytes]) -> Answer:
        answer_kind = sagemaker.response_kind(headers.get(b"accept", b"").decode("latin-1"))  # a 406 scores nothing
        body = await self._body(receive, headers)
        kind = headers.get(b"content-type", b"application/json").split(b";")[0].strip().lower()
        served = self._served(self.slots.name, None)
        tensors = sagemaker.request_tensors(body, kind.decode("latin-1"), served.plan.features)
        columns, n = await self._predict(served, tensors, scope)
        payload, content_type = sagemaker.encode_rows(columns, n, served.version, answer_kind)
        return 200, payload, [(b"content-type", content_type)], served.version, n


def create_app(cfg: ServeConfig | None = None, **settings: Any) -> ServeApp:
    """An ASGI app serving one model, for any ASGI server: ``uvicorn --factory
    'batchserve.online:app_from_environment'``, or mount ``create_app(model="models/fraud@champion")``
    in your own. The model loads in the server's lifespan startup; readiness follows."""
    if cfg is None:
        from batchserve.config import resolve_serve_config

        cfg = resolve_serve_config(settings)
    return ServeApp(cfg)
