"""How a search travels: in-process (local), over HTTP, or to a Ray actor. One small protocol for all."""
from __future__ import annotations

from medret.transports.base import Transport, make_transport

__all__ = ["Transport", "make_transport"]
