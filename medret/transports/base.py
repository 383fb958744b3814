"""The transport protocol: ``search(queries, k) -> list[list[Hit]]`` plus ``info()`` and ``close()``."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from medret.api import Hit
    from medret.config import RetrieverConfig

# backend name → "module:class"; each class is built as cls(config)
BACKENDS = {
    "local": "medret.transports.local:LocalTransport",
    "http": "medret.transports.http:HttpTransport",
    "ray": "medret.transports.ray:RayTransport",
}


class Transport(Protocol):
    def search(self, queries: list[str], k: int) -> list[list["Hit"]]: ...

    def info(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


def make_transport(config: "RetrieverConfig") -> Transport:
    module, _, cls = BACKENDS[config.backend].partition(":")
    return getattr(importlib.import_module(module), cls)(config)
