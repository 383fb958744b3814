"""medret: a fast, correct medical retriever that runs where RL training runs."""
from __future__ import annotations

from medret.api import Hit, Retriever, clear_cache, get_retriever
from medret.version import __version__

__all__ = ["Hit", "Retriever", "get_retriever", "clear_cache", "__version__"]
