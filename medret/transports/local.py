"""In-process transport: the engine runs in the caller's process."""
from __future__ import annotations

from typing import Any

from medret.api import Hit
from medret.config import RetrieverConfig
from medret.engine import Engine


class LocalTransport:
    def __init__(self, config: RetrieverConfig, progress: bool = False):
        self.engine = Engine(config, progress=progress)

    def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        scores, rows = self.engine.search_rows(queries, k)
        docs = iter(self.engine.documents(rows))
        return [[Hit(next(docs), float(s)) for s, r in zip(srow, rrow) if r >= 0]
                for srow, rrow in zip(scores.tolist(), rows.tolist())]

    def info(self) -> dict[str, Any]:
        return self.engine.info()

    def close(self) -> None:
        self.engine.close()
