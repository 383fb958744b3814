"""Checks of values: a request's (shared by the in-process API and the HTTP server) and an option's.

Option checks have the signature ``check(name, value)`` and raise :class:`ConfigError` saying
``name=value is invalid: <what is valid>``; :func:`medret.options.option` takes them as ``check=``, and any code
that checks a number it was given calls them rather than writing the test again.
"""
from __future__ import annotations

import math
import numbers
from typing import Any

from medret.errors import AnswerTooLargeError, ConfigError, QueryError

# bytes a scored hit adds to its document's stored JSON in an answer ({"document": ..., "score": ...}, the title
# quoted again at the head of "contents"); the estimate is this plus the corpus's mean stored document size
HIT_OVERHEAD_BYTES = 64


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
        check_text(q, f"queries[{i}]")
    return list(queries)


def check_text(text: str, field: str) -> None:
    """QueryError when ``text`` holds a lone surrogate (U+D800..U+DFFF): not Unicode text, so no tokenizer, UTF-8
    encoder or JSON writer takes it (one half of a UTF-16 pair: a string cut inside an emoji, or bytes decoded with
    ``surrogateescape``)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise QueryError(f"{field} holds a lone surrogate U+{ord(text[e.start]):04X} at position {e.start}: that is "
                         "half of a UTF-16 pair, not text; send valid Unicode (e.g. decode bytes with "
                         "errors='replace')") from None


def check_topk(topk: Any, max_topk: int, rerank_depth: int | None = None) -> int:
    """``topk`` from 1 to ``max_topk``; with a rerank stage (``rerank_depth``: its candidates per query) at most
    that depth, since the reranker orders only those."""
    if isinstance(topk, bool) or not isinstance(topk, int):
        raise QueryError(f"topk={_short(topk)} is invalid: a whole number from 1 to {max_topk}")
    if not 1 <= topk <= max_topk:
        raise QueryError(f"topk={topk} is out of range: use 1 to {max_topk} (max_topk)")
    if rerank_depth is not None and topk > rerank_depth:
        raise QueryError(f"topk={topk} is more than rerank_depth={rerank_depth}: the reranker orders the "
                         f"{rerank_depth} first-stage candidates of each query; ask for topk <= {rerank_depth} "
                         "or raise rerank_depth")
    return topk


def check_answer_size(n_queries: int, topk: int, max_docs: int, max_bytes: int, doc_bytes: float | None = None,
                      n_docs: int | None = None) -> None:
    """Refuse a request whose answer would exceed ``max_docs`` documents (queries x topk, topk capped at the
    corpus size when known) or an estimated ``max_bytes`` (documents x (mean stored document + per-hit overhead),
    when the mean document size is known). Raises :class:`AnswerTooLargeError` naming the limit and the fix."""
    k = min(topk, n_docs) if n_docs else topk
    docs = n_queries * k
    if docs > max_docs:
        raise AnswerTooLargeError(
            f"queries x topk = {n_queries} x {k} = {docs} documents, more than max_answer_docs={max_docs}: send "
            f"at most {max(1, max_docs // k)} queries per request at topk {k} (or a smaller topk), or raise "
            f"max_answer_docs (medret serve --max-answer-docs)")
    if doc_bytes:
        per_doc = int(doc_bytes) + HIT_OVERHEAD_BYTES
        estimate = docs * per_doc
        if estimate > max_bytes:
            raise AnswerTooLargeError(
                f"queries x topk = {n_queries} x {k} = {docs} documents of ~{per_doc} bytes each would make an "
                f"answer of ~{estimate / 2**20:.0f} MiB, more than max_answer_bytes={max_bytes} "
                f"({max_bytes / 2**20:.0f} MiB): send at most {max(1, max_bytes // per_doc // k)} queries per "
                f"request at topk {k} (or a smaller topk), or raise max_answer_bytes (medret serve "
                f"--max-answer-bytes)")


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


def check_token(token: Any, field: str = "token") -> str | None:
    """A bearer token: printable ASCII without spaces, or None (no auth). Never echoes the token.

    Non-ASCII is refused rather than sent as UTF-8: a token travels in an HTTP header, and the usual clients
    (``requests``, ``http.client``, Search-R1's and veRL's) encode header values as latin-1, so a non-ASCII token
    either fails to encode or arrives as other bytes than the server compares with: it could never work for all
    of them.
    """
    if token is None:
        return None
    if not isinstance(token, str) or not token.strip():
        raise ConfigError(f"{field} is empty: give a non-empty token, or none at all to turn authentication off")
    for i, c in enumerate(token):
        if not "!" <= c <= "~":
            what = "a non-ASCII character" if ord(c) > 127 else "a space or control character"
            raise ConfigError(
                f"{field} has {what} at position {i}: a bearer token must be printable ASCII without spaces "
                "(HTTP clients send headers as latin-1/ASCII, so it could never match); make one with "
                "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`")
    return token


# ------------------------------------------------------------------------------------------------ option checks


def _invalid(name: str, value: Any, what: str) -> ConfigError:
    return ConfigError(f"{name}={_short(value)} is invalid: {what}")


class Whole:
    """A whole number (never a bool) of at least ``minimum``; ``optional`` also accepts None (saying what None
    means). Use the module-level :data:`check_whole` and derive: ``check_whole.at_least(0).optional("...")``."""

    def __init__(self, minimum: int = 1, none: str | None = None, error: type[ConfigError] = ConfigError,
                 maximum: int | None = None):
        self.minimum, self.none, self.error, self.maximum = minimum, none, error, maximum

    def __call__(self, name: str, value: Any, tail: str = "") -> None:
        if value is None and self.none is not None:
            return
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < self.minimum \
                or (self.maximum is not None and int(value) > self.maximum):
            raise self.error(f"{name}={_short(value)} is invalid: {self.describe()}" + (f", {tail}" if tail else ""))

    def describe(self) -> str:
        what = {1: "a positive whole number", 0: "a non-negative whole number"}.get(
            self.minimum, f"a whole number >= {self.minimum}")
        if self.maximum is not None:
            what += f" up to {self.maximum}"
        return what + (f", or None for {self.none}" if self.none else " or None" if self.none == "" else "")

    def at_least(self, minimum: int) -> "Whole":
        return Whole(minimum, self.none, self.error, self.maximum)

    def at_most(self, maximum: int) -> "Whole":
        return Whole(self.minimum, self.none, self.error, maximum)

    def optional(self, meaning: str = "") -> "Whole":
        return Whole(self.minimum, meaning, self.error, self.maximum)


class Number:
    """A finite number (int or float, never a bool) above 0 (``positive``) or at least ``minimum``."""

    def __init__(self, minimum: float = -math.inf, strict: bool = False, none: str | None = None,
                 maximum: float = math.inf):
        self.minimum, self.strict, self.none, self.maximum = minimum, strict, none, maximum

    def __call__(self, name: str, value: Any) -> None:
        if value is None and self.none is not None:
            return
        ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) \
            and (value > self.minimum if self.strict else value >= self.minimum) and value <= self.maximum
        if not ok:
            raise _invalid(name, value, self.describe())

    def describe(self) -> str:
        what = (f"a number > {self.minimum:g}" if self.strict else f"a number >= {self.minimum:g}") \
            if self.minimum > -math.inf else "a finite number"
        if self.maximum < math.inf:
            what += f" and <= {self.maximum:g}"
        return what + (f", or None ({self.none})" if self.none else "")

    def positive(self) -> "Number":
        return Number(0, True, self.none, self.maximum)

    def at_least(self, minimum: float) -> "Number":
        return Number(minimum, False, self.none, self.maximum)

    def at_most(self, maximum: float) -> "Number":
        return Number(self.minimum, self.strict, self.none, maximum)

    def optional(self, meaning: str) -> "Number":
        return Number(self.minimum, self.strict, meaning, self.maximum)


check_whole = Whole()
check_number = Number()


def check_gpu_id(name: str, value: Any) -> None:
    """A physical GPU number (as nvidia-smi counts) or None."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise _invalid(name, value, "a GPU number such as 0 or 3")


def check_string(name: str, value: Any, tail: str = "") -> None:
    if value is not None and not isinstance(value, str):
        raise _invalid(name, value, "a string" + (f", {tail}" if tail else ""))


def check_yes_no(name: str, value: Any, tail: str = "") -> None:
    if value is not None and not isinstance(value, bool):
        raise _invalid(name, value, "true or false" + (f", {tail}" if tail else ""))


def check_token_count(name: str, value: Any, tail: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise _invalid(name, value, "a token count >= 2 (e.g. 256)" + (f", {tail}" if tail else ""))
