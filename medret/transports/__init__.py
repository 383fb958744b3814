"""How a search travels: in-process (local), over HTTP, or to a Ray actor. One small protocol for all
(:class:`medret.transports.base.Transport`); each transport is an object that carries its own options."""
from __future__ import annotations

from medret.config import BACKENDS, RetrieverConfig
from medret.errors import ConfigError
from medret.transports.base import BaseTransport, Transport
from medret.transports.http import HttpTransport
from medret.transports.local import LocalTransport
from medret.transports.ray import RayTransport

__all__ = ["TRANSPORTS", "BaseTransport", "HttpTransport", "LocalTransport", "RayTransport", "Transport",
           "make_transport", "transport_class"]

# every transport, by the ``backend`` value that names it (the option's choices, config.BACKENDS)
TRANSPORTS: dict[str, type[BaseTransport]] = {c.backend: c for c in (LocalTransport, HttpTransport, RayTransport)}
assert tuple(TRANSPORTS) == BACKENDS, "config.BACKENDS and the transports registered here must agree"


def transport_class(backend: str) -> type[BaseTransport]:
    """The transport class ``backend`` names (what it needs, whether it is remote, where it searches)."""
    cls = TRANSPORTS.get(backend)
    if cls is None:
        raise ConfigError(f"backend={backend!r} is invalid: choose one of {', '.join(TRANSPORTS)}")
    return cls


def make_transport(config: RetrieverConfig) -> Transport:
    """The transport ``config.backend`` names, with its options taken from ``config``."""
    return transport_class(config.backend).from_config(config)
