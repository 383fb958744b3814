"""The server knobs of ``medret serve`` (:class:`ServeSettings`), apart from the app so that the command line can
declare its flags without the server's packages (starlette) installed."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from medret.errors import QueryError
from medret.validate import check_token


def _knob(default: Any, flag: str | None, help: str) -> Any:
    """A server setting with its command-line flag and help: `medret serve` makes its flags from these."""
    return field(default=default, metadata={"flag": flag, "help": help})


@dataclass(frozen=True)
class ServeSettings:
    """Server knobs that are not part of the retriever (limits of a request are in :class:`RetrieverConfig`).

    Each is declared once, here, with its flag and help; ``medret serve`` derives its flags from the fields."""

    default_topk: int = _knob(3, "--topk", "topk of a request that has none (as Search-R1's)")
    max_batch_queries: int = _knob(4096, "--max-batch-queries",
                                   "most queries merged from concurrent requests into one engine call")
    max_batch_docs: int = _knob(65536, "--max-batch-docs",
                                "most hits (queries x topk) one engine call computes; a larger request is searched "
                                "alone, in slices of this size, with other requests served between its slices")
    max_wait_ms: float = _knob(0.0, "--max-wait-ms",
                               "milliseconds to wait for more requests before a batch (0: take what is queued)")
    max_body_bytes: int = _knob(32 * 1024 * 1024, "--max-body-bytes", "largest request body in bytes (413 above)")
    header_timeout_s: float = _knob(10.0, "--header-timeout",
                                    "seconds a connection has to send a whole request head (from connecting, or "
                                    "from the previous answer); then it is closed")
    body_timeout_s: float = _knob(60.0, "--body-timeout",
                                  "seconds a client has to send a whole request body (408 after)")
    keep_alive_s: float = _knob(5.0, "--keep-alive",
                                "seconds an idle keep-alive connection stays open between requests")
    token: str | None = None         # require "Authorization: Bearer <token>" (all routes but /health)
    latency_window: int = 10000      # requests kept for the latency percentiles

    def __post_init__(self) -> None:
        for name in ("default_topk", "max_batch_queries", "max_batch_docs", "max_body_bytes", "latency_window"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise QueryError(f"{name}={v!r} is invalid: a positive whole number")
        if isinstance(self.max_wait_ms, bool) or not isinstance(self.max_wait_ms, (int, float)) \
                or not 0 <= self.max_wait_ms <= 10_000:
            raise QueryError(f"max_wait_ms={self.max_wait_ms!r} is invalid: milliseconds from 0 to 10000")
        for name in ("header_timeout_s", "body_timeout_s", "keep_alive_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 86400:
                raise QueryError(f"{name}={v!r} is invalid: seconds, more than 0")
        check_token(self.token, "token")
