"""In-process transport: the engine runs in the caller's process."""
from __future__ import annotations

import threading
from typing import Any

from medret.config import RetrieverConfig
from medret.engine import Engine


class LocalTransport:
    """Every transport's ``search`` answers Search-R1's scored items per query: ``[{"document", "score"}, ...]``."""

    def __init__(self, config: RetrieverConfig, progress: bool = False):
        self.engine = Engine(config, progress=progress)
        self._lock = threading.Lock()  # the engine's buffers and encoders are not shared between threads

    @property
    def answer_stats(self) -> tuple[int, int | None]:
        """(documents in the corpus, their mean stored size in bytes) for answer-size limits."""
        return len(self.engine.store), self.engine.doc_bytes

    def search(self, queries: list[str], k: int) -> list[list[dict]]:
        with self._lock:
            return self.engine.scored(queries, k)

    def info(self) -> dict[str, Any]:
        return self.engine.info()

    def close(self) -> None:
        self.engine.close()
