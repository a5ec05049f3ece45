"""The online side: ``batchserve serve`` answers requests from the same model repository as ``score``.

One job per module, data flowing one way: ``protocol`` (V2 JSON and binary tensors, pure), ``inputs``
(request tensors -> model feeds, through scoring's feature plan), ``batcher`` (dynamic batching),
``slots`` (load, check, warm up, follow the alias, swap), ``telemetry`` (metrics, access log),
``app`` (ASGI routes, auth, limits) and ``server`` (the only importer of uvicorn).

Named ``online``, not ``serve`` as the house plan first said: ``batchserve.serve`` is the public
function (as ``batchserve.score`` is), and a package of that name would shadow it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["serve", "create_app"]


def serve(**settings: Any) -> None:
    """Serve a model until SIGTERM/SIGINT: the Python API of ``batchserve serve`` (same settings)."""
    from batchserve.config import resolve_serve_config
    from batchserve.online.server import run

    run(resolve_serve_config(settings))


def create_app(**settings: Any) -> Any:
    """An ASGI app serving one model, to mount in your own ASGI server (see docs/serving.md)."""
    from batchserve.online.app import create_app as make

    return make(**settings)
