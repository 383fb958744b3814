"""Stream one URL into a file: resumable, verified, and bounded in time and size.

* **Time.** Every request (HEAD, each GET, each resume) connects and waits for its next bytes at most
  ``FetchOptions.timeout`` seconds. A host that accepts the connection and never answers, or stops sending in the
  middle of a body, ends the download with one line naming the host, the timeout and the fix; a stall after some
  bytes arrived is resumed (HTTP ``Range``) like a dropped connection, and a resumed request that gets nothing
  again ends it. What arrived is kept in the partial file for the next run.
* **Size.** A host that announces the size (the hub's listing, ``Content-Length``, ``Content-Range``) is held to
  it; one that announces none is stopped at ``FetchOptions.max_download_bytes``, and then, as when the disk fills
  up, the partial file is deleted.
* **Integrity.** The file is written to ``.<name>.part`` and renamed onto its name only after its size (and
  sha256 or git blob id, when the hub gives one) are right; a wrong one is deleted.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

from medret import compat
from medret.errors import CorpusError, MedretError
from medret.fetch.env import require_hub
from medret.fetch.files import _HASH_BLOCK, human_bytes, is_lfs_pointer, partial_path, sha256_file
from medret.fetch.settings import FetchOptions

logger = logging.getLogger(__name__)

_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def host_of(url: str) -> str:
    return urlsplit(url).netloc or url


def _failed_url(e: BaseException, url: str) -> str:
    """The URL the failed request went to (after redirects, e.g. the hub's storage host), when the client says."""
    cur: BaseException | None = e
    for _ in range(6):
        if cur is None:
            break
        try:
            req = getattr(cur, "request", None)  # httpx raises RuntimeError when the request is not set
            found = getattr(req, "url", None) if req is not None else getattr(cur, "url", None)
        except RuntimeError:
            found = None
        pool = getattr(cur, "pool", None)  # urllib3's errors: the connection pool and the path
        host, port = getattr(pool, "host", None), getattr(pool, "port", None)
        if (not found or "://" not in str(found)) and host:
            found = f"{getattr(pool, 'scheme', 'http')}://{host}:{port}{found or '/'}"
        if found and "://" in str(found):
            return str(found)
        nxt = cur.__cause__ or cur.__context__
        if nxt is None and cur.args and isinstance(cur.args[0], BaseException):
            nxt = cur.args[0]  # requests wraps urllib3's error as its first argument
        cur = nxt
    return url


def network_error(e: BaseException, url: str, timeout: float, doing: str, fix: str,
                  error: type[MedretError] = CorpusError) -> MedretError:
    """The one line for a request that failed in transport: a timeout names the host (the one that failed, after
    redirects) and the deadline, anything else the host and the cause; both end with ``fix``."""
    url = _failed_url(e, url)
    host = host_of(url)
    if compat.is_timeout(e):
        return error(f"{host} did not answer within {timeout:g} s while {doing} ({url}); {fix}; if the link is only "
                     "slow, raise --timeout")
    text = str(e).strip()[:300] or "no answer"
    return error(f"cannot reach {host} while {doing} ({type(e).__name__}: {text}); {fix}")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[Any]:
    """Open ``path`` for appending under an exclusive lock, so two downloads never write the same partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "ab", buffering=0)  # unbuffered: a full disk fails the write itself, never a later close
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise CorpusError(f"{path} is being written by another download (lock held); wait for it to finish "
                              "or stop it") from None
        yield f
    finally:
        f.close()


def _length_from(headers: Any, have: int) -> int | None:
    """The whole file's size from a response's headers (after ``have`` bytes asked to be skipped), or None."""
    if headers.get("Content-Encoding", "identity").lower() != "identity":
        return None
    cr = headers.get("Content-Range")
    if cr and "/" in cr and cr.rsplit("/", 1)[-1].strip().isdigit():
        return int(cr.rsplit("/", 1)[-1])
    cl = headers.get("Content-Length")
    if cl and cl.isdigit():
        return int(cl) + have
    return None


class _Refused(Exception):
    """The transfer must stop and the partial file go: ``message`` says why."""


def fetch_url(url: str, final: Path, *, expected_size: int | None, headers: dict[str, str] | None = None,
              sha256: str | None = None, blob_id: str | None = None, max_retries: int = 5,
              file_bar: Any = None, overall_bar: Any = None, session: Any = None,
              options: FetchOptions | None = None, fix: str = "check the URL / HF_ENDPOINT and retry") -> Path:
    """Stream ``url`` into ``final`` via ``.<name>.part`` with Range resume; verify; rename. Returns ``final``.

    A partial file left by an earlier run is resumed. A dropped connection (or a stall after some bytes) is
    resumed up to ``max_retries`` times in a row without progress. Size is always checked when known; ``sha256``
    or ``blob_id`` when given. On a mismatch, a body larger than announced (or than ``max_download_bytes`` when
    nothing was announced) or a full disk the partial file is deleted and CorpusError raised, leaving ``final``
    as it was. ``fix`` ends the message of a host that cannot be reached or does not answer.
    """
    opts = options or FetchOptions()
    if session is None:
        require_hub()
        session = compat.hub_session()
    errors = compat.http_transport_errors(session)
    part = partial_path(final)
    base_headers = dict(headers or {})
    base_headers["Accept-Encoding"] = "identity"
    with _locked(part) as out:  # the partial file is only ever deleted under its lock
        try:
            size, digest, sha1 = _transfer(url, final, part, out, expected_size, base_headers, sha256, blob_id,
                                           max_retries, file_bar, overall_bar, session, errors, opts, fix)
        except _Refused as e:
            part.unlink(missing_ok=True)
            raise CorpusError(str(e)) from None
        except MedretError:
            if os.fstat(out.fileno()).st_size == 0:
                part.unlink(missing_ok=True)  # nothing arrived: no empty partial file left behind
            raise
    if expected_size is not None and size != expected_size:
        part.unlink(missing_ok=True)
        raise CorpusError(f"{final.name}: received {size} bytes but the hub lists {expected_size}; the partial file "
                          "was deleted, run the command again")
    if sha256 and digest.hexdigest() != sha256:
        part.unlink(missing_ok=True)
        raise CorpusError(f"{final.name}: sha256 {digest.hexdigest()} does not match the hub's {sha256} (corrupted "
                          "in transfer or by a proxy); the bad copy was deleted, run the command again")
    if sha1 is not None and sha1.hexdigest() != blob_id:
        part.unlink(missing_ok=True)
        raise CorpusError(f"{final.name}: git blob id {sha1.hexdigest()} does not match the hub's {blob_id}; the bad "
                          "copy was deleted, run the command again")
    if is_lfs_pointer(part) and (expected_size is None or expected_size > 1024):
        part.unlink(missing_ok=True)
        raise CorpusError(f"{final.name}: the server sent a git-lfs pointer instead of the data; check HF_ENDPOINT")
    os.replace(part, final)
    return final


def _transfer(url: str, final: Path, part: Path, out: Any, expected_size: int | None, base_headers: dict[str, str],
              sha256: str | None, blob_id: str | None, max_retries: int, file_bar: Any, overall_bar: Any,
              session: Any, errors: tuple[type[BaseException], ...], opts: FetchOptions,
              fix: str) -> tuple[int, Any, Any]:
    """The body of :func:`fetch_url`, under the partial file's lock: (bytes in the partial file, its sha256, its
    git blob hash or None)."""
    have = out.tell()
    if expected_size is not None and have > expected_size:
        out.truncate(0)
        have = 0
    digest = sha256_file(part, have) if sha256 and have else hashlib.sha256()
    sha1 = None
    if blob_id and expected_size is not None:
        sha1 = hashlib.sha1(b"blob %d\0" % expected_size)
        if have:
            with open(part, "rb") as f:
                for block in iter(lambda: f.read(_HASH_BLOCK), b""):
                    sha1.update(block)
    if file_bar is not None:
        file_bar.update(have)
    total = expected_size
    announced = expected_size is not None
    retries = max_retries
    while total is None or have < total:
        req = dict(base_headers)
        if have:
            req["Range"] = f"bytes={have}-"
        got = 0
        try:
            with compat.http_stream(session, url, req, timeout=opts.timeout) as resp:
                if resp.status_code == 416 and total is not None and have >= total:
                    break
                if resp.status_code >= 400:
                    raise CorpusError(f"GET {url} answered HTTP {resp.status_code}"
                                      + (" (access denied: set HF_TOKEN or run `hf auth login`)"
                                         if resp.status_code in (401, 403) else "")
                                      + f"; {fix}")
                if have and resp.status_code != 206:  # the server ignored Range: start over
                    logger.warning("%s: server ignored the Range request; restarting the file", final.name)
                    out.truncate(0)
                    out.seek(0)
                    if file_bar is not None:
                        file_bar.update(-have)
                    if overall_bar is not None:
                        overall_bar.update(-have)
                    have = 0
                    digest = hashlib.sha256()
                    if sha1 is not None:
                        sha1 = hashlib.sha1(b"blob %d\0" % expected_size)  # type: ignore[str-format]
                if total is None:
                    total = _length_from(resp.headers, have)
                    announced = total is not None
                    if total is not None and file_bar is not None:
                        file_bar.total = total
                        file_bar.refresh()
                cap = total if total is not None else opts.max_download_bytes
                for block in resp.iter_bytes():
                    if not block:
                        continue
                    if have + len(block) > cap:
                        raise _Refused(
                            f"{host_of(url)} sent more than the {human_bytes(cap)} it announced for {final.name}; "
                            "the partial file was deleted: run the command again (or use a mirror)" if announced else
                            f"{host_of(url)} announced no size for {final.name} and sent more than "
                            f"--max-download-bytes={opts.max_download_bytes} ({human_bytes(cap)}); the partial "
                            "file was deleted: check the URL, or raise --max-download-bytes if the file really is "
                            "that large")
                    _write_all(out, block)
                    digest.update(block)
                    if sha1 is not None:
                        sha1.update(block)
                    have += len(block)
                    got += len(block)
                    if file_bar is not None:
                        file_bar.update(len(block))
                    if overall_bar is not None:
                        overall_bar.update(len(block))
            out.flush()
            if total is None:
                total = have
            if have < total:
                raise ConnectionError(f"connection closed after {have} of {total} bytes")
        except errors as e:
            out.flush()
            if compat.is_timeout(e) and not got:
                kept = (f"; {have} bytes are kept in {part}: run the same command again to resume" if have else "")
                raise network_error(e, url, opts.timeout, f"downloading {final.name}", fix + kept) from None
            retries = max_retries if got else retries - 1
            if retries < 0:
                raise CorpusError(f"download of {url} keeps failing ({type(e).__name__}: {e}); {have} bytes are "
                                  f"kept in {part}: run the same command again to resume") from e
            # a stall is resumed quietly: if the host stays silent the next attempt ends with the one line
            logger.log(logging.INFO if compat.is_timeout(e) else logging.WARNING, "%s: %s after %d bytes; resuming",
                       final.name, type(e).__name__, have)
            time.sleep(0.2 if got else 1.0)
            continue
        except OSError as e:
            raise _disk_full(e, part) from None
    try:
        out.flush()
        os.fsync(out.fileno())
    except OSError as e:
        raise _disk_full(e, part) from None
    return out.tell(), digest, sha1


def _write_all(out: Any, block: bytes) -> None:
    view = memoryview(block)
    while view:
        view = view[out.write(view):]


def _disk_full(e: OSError, part: Path) -> BaseException:
    """A full disk (or quota) as the reason to stop and delete the partial file; any other OSError as it is."""
    if e.errno in _DISK_FULL:
        return _Refused(f"the disk holding {part.parent} is full ({e.strerror}); the partial file was deleted: free "
                        "space or choose another --db-dir / --dir, then run the command again")
    return e


def remote_size(session: Any, url: str, fix: str, options: FetchOptions | None = None) -> int | None:
    """The size a server gives for ``url`` (after redirects), None when it gives none; CorpusError (with ``fix``)
    when it cannot be reached, does not answer within the timeout, or refuses."""
    opts = options or FetchOptions()
    try:
        status, headers = compat.http_head(session, url, {"Accept-Encoding": "identity"}, timeout=opts.timeout)
    except Exception as e:  # noqa: BLE001 - any transport failure gets the same advice
        raise network_error(e, url, opts.timeout, "asking for the size of the file", fix) from None
    if status >= 400:
        raise CorpusError(f"HEAD {url} answered HTTP {status}; {fix}")
    cl = headers.get("Content-Length")
    return int(cl) if cl and cl.isdigit() else None
