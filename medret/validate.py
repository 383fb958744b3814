"""Request validation shared by the in-process API and the HTTP server."""
from __future__ import annotations

from typing import Any

from medret.errors import QueryError


def check_queries(queries: Any, max_batch: int, max_chars: int) -> list[str]:
    if isinstance(queries, str) or not isinstance(queries, (list, tuple)):
        raise QueryError(f"queries={_short(queries)} is invalid: pass a list of strings, e.g. "
                         f"[\"sepsis mortality\"] (a single string must be wrapped in a list)")
    if len(queries) > max_batch:
        raise QueryError(f"queries has {len(queries)} items, more than max_batch={max_batch}: split the batch "
                         f"or raise max_batch")
    for i, q in enumerate(queries):
        if not isinstance(q, str):
            raise QueryError(f"queries[{i}]={_short(q)} is a {type(q).__name__}: every query must be a string")
        if not q.strip():
            raise QueryError(f"queries[{i}]={q!r} is empty: every query needs some text")
        if len(q) > max_chars:
            raise QueryError(f"queries[{i}] has {len(q)} characters, more than max_query_chars={max_chars}: "
                             f"shorten the query")
    return list(queries)


def check_topk(topk: Any, max_topk: int) -> int:
    if isinstance(topk, bool) or not isinstance(topk, int):
        raise QueryError(f"topk={_short(topk)} is invalid: a whole number from 1 to {max_topk}")
    if not 1 <= topk <= max_topk:
        raise QueryError(f"topk={topk} is out of range: use 1 to {max_topk} (max_topk)")
    return topk


def check_flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise QueryError(f"{name}={_short(value)} is invalid: true or false")
    return value


def dedupe(queries: list[str]) -> tuple[list[str], list[int]]:
    """Unique queries in first-seen order, and for each input the index of its unique query."""
    seen: dict[str, int] = {}
    where = [seen.setdefault(q, len(seen)) for q in queries]
    return list(seen), where


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 80 else s[:80] + "…"
