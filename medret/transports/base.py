"""The transport protocol: ``search(queries, k)`` plus ``info()`` and ``close()``.

``search`` answers, per query, Search-R1's scored items ``[{"document": {...}, "score": s}, ...]`` best first:
the one shape every transport carries, so nothing is converted on the way (``Hit`` exists only at the API).
A transport may add ``retrieve(queries, k, return_scores)`` returning Search-R1's whole answer when it can
produce it cheaper than from ``search`` (the HTTP client hands the server's JSON through).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from medret.config import RetrieverConfig

# backend name → "module:class"; each class is built as cls(config)
BACKENDS = {
    "local": "medret.transports.local:LocalTransport",
    "http": "medret.transports.http:HttpTransport",
    "ray": "medret.transports.ray:RayTransport",
}


class Transport(Protocol):
    def search(self, queries: list[str], k: int) -> list[list[dict]]: ...

    def info(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


def make_transport(config: "RetrieverConfig") -> Transport:
    module, _, cls = BACKENDS[config.backend].partition(":")
    return getattr(importlib.import_module(module), cls)(config)
