"""medret: a fast, correct medical retriever that runs where RL training runs."""
from __future__ import annotations

__version__ = "0.1.0"

from medret.api import Hit, Retriever, clear_cache, get_retriever

__all__ = ["Hit", "Retriever", "get_retriever", "clear_cache", "__version__"]
