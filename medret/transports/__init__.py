"""How a search travels: in-process (local), over HTTP, or to a Ray actor. One small protocol for all
(:class:`medret.transports.base.Transport`); each transport is an object that carries its own options."""
from __future__ import annotations

from medret.config import HttpOptions, RayOptions, RetrieverConfig
from medret.transports.base import BaseTransport, Transport
from medret.transports.http import HttpTransport
from medret.transports.local import LocalTransport
from medret.transports.ray import RayTransport

__all__ = ["BaseTransport", "HttpTransport", "LocalTransport", "RayTransport", "Transport", "make_transport"]


def make_transport(config: RetrieverConfig) -> Transport:
    """The transport ``config.backend`` names, with its options taken from ``config``."""
    if config.backend == "http":
        return HttpTransport(HttpOptions.of(config))
    if config.backend == "ray":
        return RayTransport(config, RayOptions.of(config))
    return LocalTransport(config)
