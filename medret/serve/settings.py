"""The knobs of ``medret serve`` that are not part of the retriever, each declared once (flags come from here).

The request limits are the retriever's (:class:`medret.config.Limits`). This module needs no server package, so
``medret serve --help`` works without the ``serve`` extra.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from medret.config import DEFAULT_TOPK
from medret.errors import ConfigError
from medret.options import option
from medret.serve.batcher import SERVER, BatchOptions
from medret.validate import check_number, check_token, check_whole

TOKEN_ENV = "MEDRET_TOKEN"


def env_token() -> str | None:
    """The token in ``$MEDRET_TOKEN``; None when the variable is unset. Set but empty is refused, as an empty
    --token-file is: it would turn authentication off without a word (a job script's unset secret, say)."""
    value = os.environ.get(TOKEN_ENV)
    if value is None:
        return None
    if not value.strip():
        raise ConfigError(f"${TOKEN_ENV} is set but empty: put the token in it, or unset {TOKEN_ENV} to serve "
                          "without authentication")
    return check_token(value, f"${TOKEN_ENV}")


def _check_token(name: str, value: Any) -> None:
    check_token(value, name)




@dataclass(frozen=True)
class ServeSettings(BatchOptions):
    """Server knobs that are not part of the retriever (limits of a request are in :class:`RetrieverConfig`).

    Each is declared once, here, with its flag and help; ``medret serve`` derives its flags from the fields."""

    default_topk: int = option(DEFAULT_TOPK, "topk of a request that has none (as Search-R1's)", flag="--topk",
                               check=check_whole, metavar="N", group=SERVER)
    max_body_bytes: int = option(32 * 1024 * 1024, "largest request body in bytes (413 above)", check=check_whole,
                                 metavar="N", group=SERVER)
    header_timeout_s: float = option(10.0, "seconds a connection has to send a whole request head (from connecting, "
                                     "or from the previous answer); then it is closed", flag="--header-timeout",
                                     check=check_number.positive().at_most(86400), metavar="X", group=SERVER)
    body_timeout_s: float = option(60.0, "seconds a client has to send a whole request body (408 after)",
                                   flag="--body-timeout", check=check_number.positive().at_most(86400), metavar="X",
                                   group=SERVER)
    keep_alive_s: float = option(5.0, "seconds an idle keep-alive connection stays open between requests",
                                 flag="--keep-alive", check=check_number.positive().at_most(86400), metavar="X",
                                 group=SERVER)
    # require "Authorization: Bearer <token>" (all routes but /health); from --token-file or $MEDRET_TOKEN
    token: str | None = option(None, "bearer token", kind=str, flag=False, check=_check_token)
    latency_window: int = option(10000, "requests kept for the latency percentiles", flag=False, check=check_whole)
