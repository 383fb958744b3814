"""The hub's file listing, asked directly (one request per page, each bounded by the download timeout).

``HfApi.list_repo_tree`` takes no timeout and the hub library's session has none, so a host that accepts the
connection and never answers held ``medret corpus download --list`` forever. Here the two documented endpoints are
asked through huggingface_hub's own session (its proxies, certificates and headers): ``/api/{kind}s/{repo}
[/revision/{rev}]`` for the commit a revision resolves to, and ``/api/{kind}s/{repo}/tree/{commit}[/{path}]``
(following the ``Link: rel="next"`` pages) for the files with their sizes, git blob ids and LFS sha256.
"""
from __future__ import annotations

import json
import re
from typing import Any, Callable
from urllib.parse import quote

from medret import compat
from medret.errors import CorpusError, MedretError
from medret.fetch.env import hf_endpoint, require_hub
from medret.fetch.files import RemoteFile
from medret.fetch.settings import FetchOptions
from medret.fetch.transfer import host_of, network_error

#: a listing page larger than this is not the hub's answer (pages hold 1,000 entries, ~300 KB)
MAX_LISTING_BYTES = 64 * 1024 * 1024
_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')

HUB_FIX = ("check the network (or set HF_ENDPOINT to a reachable mirror), and HF_TOKEN if the repository needs it; "
           "on a node without internet download on a login node into the same folder, or set HF_HUB_OFFLINE=1 to "
           "use files already in the Hugging Face cache")


def remote_file(entry: dict) -> RemoteFile:
    """A file entry of the hub's tree listing as a RemoteFile: size, LFS sha256 or git blob id."""
    lfs = entry.get("lfs")
    sha = lfs.get("oid") if isinstance(lfs, dict) else None
    return RemoteFile(path=str(entry["path"]), size=int(entry["size"]), sha256=sha,
                      blob_id=None if lfs else entry.get("oid"))


def _get_json(session: Any, url: str, headers: dict[str, str], opts: FetchOptions, doing: str, fix: str,
              error: type[MedretError]) -> tuple[Any, Any]:
    try:
        with compat.http_stream(session, url, headers, timeout=opts.timeout) as resp:
            body = bytearray()
            for block in resp.iter_bytes():
                body += block
                if len(body) > MAX_LISTING_BYTES:
                    raise error(f"{host_of(url)} sent more than {MAX_LISTING_BYTES} bytes while {doing}: it is not "
                                f"the hub's answer; {fix}")
            status, resp_headers = resp.status_code, resp.headers
    except MedretError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure to get an answer (the hub library's session raises many
        raise network_error(e, url, opts.timeout, doing, fix, error) from None  # types): one line with the fix
    if status >= 400:
        text = body.decode("utf-8", "replace").strip()
        try:
            text = str(json.loads(text).get("error", text))
        except (ValueError, AttributeError):
            pass
        hint = " (access denied: set HF_TOKEN or pass --token)" if status in (401, 403) else ""
        raise error(f"{host_of(url)} answered HTTP {status} while {doing}{hint}: {text[:300] or '(empty)'}; {fix}")
    try:
        return json.loads(bytes(body)), resp_headers
    except ValueError:
        raise error(f"{host_of(url)} answered {doing} with something that is not JSON: is HF_ENDPOINT a hub? "
                    f"{fix}") from None


def list_repo_files(kind: str, repo_id: str, revision: str | None = None, *, path: str = "",
                    recursive: bool = True, token: str | bool | None = None, endpoint: str | None = None,
                    options: FetchOptions | None = None, fix: str = HUB_FIX,
                    error: type[MedretError] = CorpusError,
                    keep: Callable[[str], bool] = lambda p: True) -> tuple[str, list[RemoteFile]]:
    """``(commit, files)``: the commit ``revision`` (default ``main``) of the hub ``kind`` ("model" or "dataset")
    repository resolves to, and its files under ``path`` (``keep``-filtered, sorted by path)."""
    hub = require_hub()
    opts = options or FetchOptions()
    endpoint = (endpoint or hf_endpoint()).rstrip("/")
    headers = hub.utils.build_hf_headers(token=token, library_name="medret")
    session = compat.hub_session()
    api = f"{endpoint}/api/{kind}s/{repo_id}"
    doing = f"asking {endpoint} for {kind} {repo_id}"
    info, _ = _get_json(session, api + (f"/revision/{quote(revision, safe='')}" if revision else ""), headers, opts,
                        doing, fix, error)
    commit = str(info.get("sha") or revision or "main") if isinstance(info, dict) else (revision or "main")
    url: str | None = (f"{api}/tree/{quote(commit, safe='')}" + (f"/{quote(path)}" if path else "")
                       + f"?recursive={'true' if recursive else 'false'}&expand=false")
    files: list[RemoteFile] = []
    while url:
        page, resp_headers = _get_json(session, url, headers, opts, f"listing the files of {repo_id}", fix, error)
        if not isinstance(page, list):
            raise error(f"{host_of(url)} answered the file listing of {repo_id} with a {type(page).__name__}, not a "
                        f"list: is HF_ENDPOINT a hub? {fix}")
        files += [remote_file(e) for e in page if isinstance(e, dict) and e.get("type") == "file"
                  and isinstance(e.get("path"), str) and isinstance(e.get("size"), int) and keep(e["path"])]
        found = _NEXT.search(resp_headers.get("Link", "") or "")
        url = found.group(1) if found else None
    return commit, sorted(files, key=lambda f: f.path)
