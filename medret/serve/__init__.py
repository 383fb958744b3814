"""`medret serve`: the retriever as an HTTP service speaking Search-R1's /retrieve protocol.

``create_app(config, settings)`` builds the ASGI app (Starlette + orjson, micro-batched engine on one owner
thread); ``run_server(...)`` runs it under uvicorn with a free port, an address file and graceful shutdown.
Heavy imports (starlette, uvicorn) happen when these names are first used.
"""
from __future__ import annotations

from typing import Any

from medret.serve.settings import ServeSettings

__all__ = ["create_app", "ServeSettings", "run_server"]


def __getattr__(name: str) -> Any:
    # starlette and uvicorn (the serve extra) are imported when the app or the server is first asked for
    if name == "create_app":
        from medret.serve.app import create_app  # noqa: PLC0415 - optional dependency (serve extra)

        return create_app
    if name == "run_server":
        from medret.serve.server import run_server  # noqa: PLC0415 - optional dependency (serve extra)

        return run_server
    raise AttributeError(name)
