"""In-process transport: the engine runs in the caller's process."""
from __future__ import annotations

import threading
from typing import Any

from medret.config import EngineOptions
from medret.engine import Engine
from medret.transports.base import AnswerStats, BaseTransport


class LocalTransport(BaseTransport):
    """The engine in this process. ``search`` answers Search-R1's scored items per query."""

    backend = "local"

    @classmethod
    def from_config(cls, config: Any) -> "LocalTransport":
        return cls(config)

    @classmethod
    def needs(cls, dense: bool) -> dict[str, str]:
        return {"torch": "dense", "transformers": "dense", "faiss-cpu": "dense"} if dense else {}

    def __init__(self, config: EngineOptions, progress: bool = False, engine: Engine | None = None):
        self.engine = engine if engine is not None else Engine(config, progress=progress)
        self._lock = threading.Lock()  # the engine's buffers and encoders are not shared between threads

    @property
    def answer_stats(self) -> AnswerStats:
        """(documents in the corpus, their mean stored size in bytes) for answer-size limits."""
        return len(self.engine.store), self.engine.doc_bytes

    def search(self, queries: list[str], k: int) -> list[list[dict]]:
        with self._lock:
            return self.engine.scored(queries, k)

    def info(self) -> dict[str, Any]:
        return self.engine.info()

    def close(self) -> None:
        self.engine.close()
