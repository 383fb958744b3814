"""The transport protocol, as httpx's: one declared method set, every transport an object carrying its own options.

* ``search(queries, k)`` answers, per query, Search-R1's scored items ``[{"document": {...}, "score": s}, ...]``
  best first: the one shape every transport carries, so nothing is converted on the way (``Hit`` exists only at
  the API);
* ``retrieve(queries, k, return_scores)`` answers Search-R1's whole ``/retrieve`` JSON (the HTTP transport hands
  the server's answer through; the others build it from ``search``);
* ``answer_stats``: (documents in the corpus, their mean stored size in bytes), each None when the transport does
  not know them (a server checks its own limits);
* ``info()`` and ``close()``.

:class:`medret.api.Retriever` takes any object with these methods (``Retriever(config, transport=...)``), or makes
the one ``config.backend`` names (:func:`medret.transports.make_transport`).
"""
from __future__ import annotations

from typing import Any, ClassVar, Optional, Protocol, Tuple, runtime_checkable

AnswerStats = Tuple[Optional[int], Optional[int]]


@runtime_checkable
class Transport(Protocol):
    @property
    def answer_stats(self) -> AnswerStats: ...

    def search(self, queries: list[str], k: int) -> list[list[dict]]: ...

    def retrieve(self, queries: list[str], k: int, return_scores: bool) -> dict: ...

    def info(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


class BaseTransport:
    """What a transport that only knows how to ``search`` inherits: ``retrieve`` from it, unknown answer stats.

    Each transport also answers, as a class, what callers would otherwise decide by comparing ``backend`` names
    (``medret doctor``, the benchmark, the veRL tool): ``backend`` (the ``RetrieverConfig.backend`` value that
    names it), ``remote`` (True when the index is searched by a server elsewhere, so this machine needs no
    corpus, index or model: nothing to check or preload here), :meth:`needs` (the optional packages it uses,
    with the extra that installs them) and :meth:`where` (where it searches, in words)."""

    backend: ClassVar[str] = ""
    remote: ClassVar[bool] = False

    @classmethod
    def from_config(cls, config: Any) -> "BaseTransport":
        """The transport with its options taken from a :class:`medret.config.RetrieverConfig`."""
        raise NotImplementedError

    @classmethod
    def needs(cls, dense: bool) -> dict[str, str]:
        """The optional packages (→ the extra that installs them) this process needs; ``dense``: the retriever
        has a dense part."""
        return {}

    @classmethod
    def where(cls, config: Any) -> str:
        return f"corpus={config.corpus_name} retriever={config.retriever_name}"

    @property
    def answer_stats(self) -> AnswerStats:
        return None, None

    def search(self, queries: list[str], k: int) -> list[list[dict]]:
        raise NotImplementedError

    def retrieve(self, queries: list[str], k: int, return_scores: bool) -> dict:
        return {"result": without_scores(self.search(queries, k), drop=not return_scores)}

    def info(self) -> dict[str, Any]:
        raise NotImplementedError

    def close(self) -> None:
        return None


def without_scores(rows: list[list[dict]], drop: bool = True) -> list[list[dict]]:
    """Search-R1's answer without scores is the documents alone; ``drop=False`` keeps the scored items."""
    return [[item["document"] for item in row] for row in rows] if drop else rows
