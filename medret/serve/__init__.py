"""`medret serve`: the retriever as an HTTP service speaking Search-R1's /retrieve protocol.

``create_app(config, settings)`` builds the ASGI app (Starlette + orjson, micro-batched engine on one owner
thread); ``run_server(...)`` runs it under uvicorn with a free port, an address file and graceful shutdown.
Heavy imports (starlette, uvicorn) happen when these names are first used.
"""
from __future__ import annotations

from typing import Any

__all__ = ["create_app", "ServeSettings", "run_server"]


def __getattr__(name: str) -> Any:
    if name in ("create_app", "ServeSettings"):
        from medret.serve import app

        return getattr(app, name)
    if name == "run_server":
        from medret.serve.server import run_server

        return run_server
    raise AttributeError(name)
