"""Where the versions of Python and of medret's dependencies differ, the difference is absorbed here and only here.

medret runs inside the trainers' own environments (Search-R1's: Python 3.9, torch 2.4, transformers 4.47,
numpy 1.x, huggingface_hub 0.x; veRL's: Python 3.10+, transformers 5, numpy 2, huggingface_hub 1.x), so it
supports Python 3.9-3.13, numpy 1.24-2.x, torch >= 2.1, transformers 4.40-5.x and huggingface_hub 0.24-2.x.
Other modules call the functions below instead of an API whose name or behaviour changed between those versions.

- transformers: the precision keyword of ``from_pretrained`` is ``dtype`` from 4.56 on and ``torch_dtype`` before
  (4.x rejects ``dtype`` with ``TypeError: __init__() got an unexpected keyword argument 'dtype'``):
  :func:`dtype_kwargs`.
- huggingface_hub: ``huggingface_hub.utils.get_session()`` is an ``httpx.Client`` from 1.x on and a
  ``requests.Session`` in 0.x, whose ``stream`` is a bool (hence ``TypeError: 'bool' object is not callable``
  when called like httpx's): :func:`hub_session`, :func:`http_stream`, :func:`http_head`,
  :func:`http_transport_errors`, :func:`is_timeout` speak to either (a ``timeout`` is a float for httpx, a
  (connect, read) pair for requests).
- Python: the syntax is kept to 3.9's (``from __future__ import annotations`` for ``X | Y`` annotations; no
  ``match``, ``zip(strict=)``, dataclass ``slots``/``kw_only``, parenthesised multi-item ``with``);
  tests/core/test_compat.py parses every file of the package, tests and benchmarks with 3.9's grammar.
- numpy: nothing in medret calls an API that exists in only one of 1.x / 2.x; new differences belong here.
"""
from __future__ import annotations

import contextlib
import importlib
import re
import socket
from importlib import metadata
from typing import Any, Iterator

from medret import optional

#: transformers release that renamed ``torch_dtype`` to ``dtype`` in ``from_pretrained``.
TRANSFORMERS_DTYPE_KWARG_SINCE = (4, 56)

_CHUNK = 1 << 20  # bytes per block read from a streamed HTTP body


def version_tuple(dist: str) -> tuple[int, ...]:
    """The leading release numbers of the installed distribution ``dist`` ((4, 47, 1) for '4.47.1'; () if absent)."""
    try:
        text = metadata.version(dist)
    except metadata.PackageNotFoundError:
        return ()
    return parse_version(text)


def parse_version(text: str) -> tuple[int, ...]:
    """'4.47.1' -> (4, 47, 1); '2.4.0+cu121' -> (2, 4, 0); '5.0.0rc1' -> (5, 0, 0)."""
    out = []
    for part in str(text).split("+", 1)[0].split("."):
        m = re.match(r"\d+", part)
        if m is None:
            break
        out.append(int(m.group()))
        if m.end() != len(part):
            break
    return tuple(out)


# ---------------------------------------------------------------------------------------------------------------------
# transformers


def dtype_kwargs(dtype: Any, transformers_version: tuple[int, ...] | None = None) -> dict[str, Any]:
    """The keyword that sets the weights' dtype in ``from_pretrained`` for the installed transformers."""
    v = version_tuple("transformers") if transformers_version is None else transformers_version
    return {"dtype": dtype} if v >= TRANSFORMERS_DTYPE_KWARG_SINCE else {"torch_dtype": dtype}


# ---------------------------------------------------------------------------------------------------------------------
# huggingface_hub's HTTP session: httpx.Client (hub 1.x) or requests.Session (hub 0.x)


def hub_session() -> Any:
    """The HTTP session huggingface_hub itself uses (its proxies, certificates and offline mode apply)."""
    return importlib.import_module("huggingface_hub.utils").get_session()


def is_httpx_session(session: Any) -> bool:
    """httpx's ``Client.stream`` is a method; requests' ``Session.stream`` is a bool attribute."""
    return callable(getattr(session, "stream", None))


class StreamedResponse:
    """The part of a streamed response medret reads: ``status_code``, ``headers``, ``iter_bytes()``."""

    def __init__(self, status_code: int, headers: Any, blocks: Any):
        self.status_code = int(status_code)
        self.headers = headers  # case-insensitive mapping in both clients
        self._blocks = blocks

    def iter_bytes(self) -> Iterator[bytes]:
        return iter(self._blocks())


def _timeout_kw(session: Any, timeout: float | None) -> dict[str, Any]:
    """``timeout=``: connect and each read (httpx: also each write and the pool wait) within ``timeout`` seconds;
    None keeps the session's own (huggingface_hub's: none)."""
    if timeout is None:
        return {}
    return {"timeout": timeout if is_httpx_session(session) else (timeout, timeout)}


@contextlib.contextmanager
def http_stream(session: Any, url: str, headers: dict[str, str] | None = None,
                timeout: float | None = None) -> Iterator[StreamedResponse]:
    """GET ``url`` following redirects, the body not read until ``iter_bytes()``; closed on exit. ``timeout``:
    seconds to connect and the longest wait for the next bytes."""
    if is_httpx_session(session):
        with session.stream("GET", url, headers=headers, follow_redirects=True,
                            **_timeout_kw(session, timeout)) as resp:
            yield StreamedResponse(resp.status_code, resp.headers, resp.iter_bytes)
        return
    resp = session.get(url, headers=headers, stream=True, allow_redirects=True, **_timeout_kw(session, timeout))
    try:
        yield StreamedResponse(resp.status_code, resp.headers, lambda: _requests_blocks(resp))
    finally:
        resp.close()


def _requests_blocks(resp: Any) -> Iterator[bytes]:
    """The body as it arrives, like httpx's ``iter_bytes``: a dropped connection loses no byte already received
    (``iter_content(n)`` would drop a partial block of n bytes, so a resumed download would restart it)."""
    read1 = getattr(resp.raw, "read1", None)
    if read1 is None:  # urllib3 1.x: no read1; small blocks keep what a drop loses small
        yield from resp.iter_content(chunk_size=1 << 14)
        return
    requests = optional.requests()
    urllib3 = optional.load("urllib3", "client")
    while True:
        try:
            block = read1(_CHUNK, decode_content=True)
        except urllib3.exceptions.HTTPError as e:  # what iter_content raises as ChunkedEncodingError
            # with the request (after redirects), so an error can name the host that failed
            raise requests.exceptions.ChunkedEncodingError(e, request=resp.request) from e
        if not block:
            return
        yield block


def http_head(session: Any, url: str, headers: dict[str, str] | None = None,
              timeout: float | None = None) -> tuple[int, Any]:
    """HEAD ``url`` following redirects: (status code, headers)."""
    if is_httpx_session(session):
        r = session.head(url, headers=headers, follow_redirects=True, **_timeout_kw(session, timeout))
    else:
        r = session.head(url, headers=headers, allow_redirects=True, **_timeout_kw(session, timeout))
    return int(r.status_code), r.headers


def is_timeout(e: BaseException) -> bool:
    """Whether ``e`` (or what caused it) is a connect or read timeout, in either client: httpx's
    ``ConnectTimeout``/``ReadTimeout``, requests' and urllib3's ``*Timeout*`` (requests wraps a read timeout of a
    streamed body in a ``ConnectionError``), or the socket's own ``TimeoutError``."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, (TimeoutError, socket.timeout)) or any("Timeout" in c.__name__ for c in type(cur).__mro__):
            return True
        cur = cur.__cause__ or cur.__context__ or (cur.args[0] if cur.args and isinstance(cur.args[0],
                                                                                          BaseException) else None)
    return False


def http_transport_errors(session: Any) -> tuple[type[BaseException], ...]:
    """Connection-level exceptions of the session's client (worth a retry; an HTTP status is not among them)."""
    errs: list[type[BaseException]] = [ConnectionError, TimeoutError]
    root = type(session).__module__.split(".")[0]
    mod = importlib.import_module(root)
    if is_httpx_session(session):  # httpx (or huggingface_hub's fork of it)
        names: tuple[str, ...] = ("TransportError", "StreamError")
    else:  # requests
        mod = importlib.import_module(f"{root}.exceptions")
        names = ("ConnectionError", "ChunkedEncodingError", "Timeout")
    for name in names:
        cls = getattr(mod, name, None)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            errs.append(cls)
    return tuple(errs)
