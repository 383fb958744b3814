"""Download MedRAG's corpora from the Hugging Face hub into MedRAG's layout, ``DB_DIR/<source>/chunk/*.jsonl``.

No git and no git-lfs: the file list (sizes, LFS sha256, git blob ids) comes from the hub's API through
``huggingface_hub``; each file is streamed into ``chunk/.<file>.part`` with HTTP ``Range`` resume (within a run after
a dropped connection, and across runs from the partial file), verified (size, then sha256 for LFS files or the git
blob id for plain files) and renamed onto its final name only when it is complete and correct.

The hub's usual environment is honoured: ``HF_ENDPOINT`` (read when the download runs), ``HF_TOKEN`` and the token
file under ``HF_HOME``, ``HF_HUB_CACHE``/``HF_HOME`` and ``HF_HUB_OFFLINE`` (offline, files are taken from the
Hugging Face cache when they are there, otherwise a clear error says what to do).

StatPearls is not on the hub: :func:`download_statpearls` fetches NCBI's archive (or takes a local copy) and
chunks it with :mod:`medret.corpus.statpearls`.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from tqdm.auto import tqdm

from medret import compat, optional
from medret.corpus.reader import LFS_MAGIC
from medret.corpus.registry import DISPLAY, SOURCES
from medret.corpus.statpearls import chunk_archive
from medret.errors import ConfigError, CorpusError
from medret.storage.atomic import atomic_write_text

logger = logging.getLogger(__name__)

#: Hub dataset of each source MedRAG distributes there (StatPearls is built locally from NCBI's archive).
HUB_REPOS: dict[str, str] = {"pubmed": "MedRAG/pubmed", "textbooks": "MedRAG/textbooks",
                             "wikipedia": "MedRAG/wikipedia"}
STATPEARLS_URL = "https://ftp.ncbi.nlm.nih.gov/pub/litarch/3d/12/statpearls_NBK430685.tar.gz"
STATPEARLS_ARCHIVE = "statpearls_NBK430685.tar.gz"
CHUNK_DIR = "chunk"
MANIFEST = Path("medret") / "download.json"
_BLOCK = 1 << 20
_HASH_BLOCK = 1 << 22


# --------------------------------------------------------------------------------------------------------------------
# Names and environment


def resolve_sources(names: list[str]) -> list[str]:
    """Map corpus names (case-insensitive; composites expand) to MedRAG's on-disk source names, in order, once each."""
    if not names:
        raise ConfigError("NAME is missing: give one or more of " + ", ".join(DISPLAY[n] for n in SOURCES))
    out: list[str] = []
    for name in names:
        key = str(name).strip().lower()
        if key not in SOURCES:
            raise ConfigError(f"NAME={name!r} is not a downloadable corpus: choose from "
                              + ", ".join(DISPLAY[n] for n in SOURCES))
        for src in SOURCES[key]:
            if src not in out:
                out.append(src)
    return out


def hf_endpoint() -> str:
    """The hub endpoint: ``HF_ENDPOINT`` as set now (huggingface_hub itself reads it only at import)."""
    env = os.environ.get("HF_ENDPOINT")
    if env:
        return env.rstrip("/")
    constants = optional.load("huggingface_hub.constants", "download")

    return str(constants.ENDPOINT).rstrip("/")


def hf_offline() -> bool:
    env = os.environ.get("HF_HUB_OFFLINE")
    if env is not None:
        return env.strip().upper() in {"1", "ON", "YES", "TRUE"}
    constants = optional.load("huggingface_hub.constants", "download")

    return bool(constants.HF_HUB_OFFLINE)


def hf_cache_dir() -> Path:
    """The hub cache as the environment says now: ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else the library default."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    constants = optional.load("huggingface_hub.constants", "download")

    return Path(constants.HF_HUB_CACHE)


# ---- the pieces medret's other downloads (MedRAG embeddings: medret.corpus.embeddings; models:
# medret.encoders.download) share with this one: the hub, partial files, the download record, progress bars


def require_hub() -> Any:
    """huggingface_hub (with its ``utils``), or CorpusError saying to install the ``download`` extra."""
    try:
        hub = optional.hub()
        optional.load("huggingface_hub.utils", "download")  # a lazy attribute of the package: load it for .utils
        return hub
    except ImportError:
        raise CorpusError("huggingface_hub is not installed: downloading MedRAG's corpora needs it; "
                          "run `pip install 'medret[download]'`") from None


def disk_free(path: Path) -> int:
    """Free bytes on the file system that holds ``path`` (or its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


# --------------------------------------------------------------------------------------------------------------------
# Remote listing and local state


@dataclass(frozen=True)
class RemoteFile:
    """One chunk file of a hub dataset."""

    path: str  # path in the repository, e.g. "chunk/pubmed23n0001.jsonl"
    size: int
    sha256: str | None = None  # LFS files
    blob_id: str | None = None  # git blob id (sha1 of "blob <size>\\0" + content), checks plain files

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


@dataclass
class FileState:
    remote: RemoteFile
    local: Path
    status: str  # "ok" | "missing" | "partial" | "pointer" | "size" | "checksum"
    partial_bytes: int = 0

    @property
    def needs_fetch(self) -> bool:
        return self.status != "ok"

    @property
    def bytes_to_fetch(self) -> int:
        return 0 if self.status == "ok" else max(self.remote.size - self.partial_bytes, 0)


@dataclass
class SourcePlan:
    """What a download of one source will do."""

    source: str
    repo_id: str
    revision: str
    dest: Path  # DB_DIR/<source>
    files: list[FileState] = field(default_factory=list)
    extra_local: list[str] = field(default_factory=list)  # local chunk files the hub does not have

    @property
    def total_bytes(self) -> int:
        return sum(f.remote.size for f in self.files)

    @property
    def bytes_to_fetch(self) -> int:
        return sum(f.bytes_to_fetch for f in self.files)

    @property
    def to_fetch(self) -> list[FileState]:
        return [f for f in self.files if f.needs_fetch]


def list_remote_files(repo_id: str, revision: str | None = None, *, token: str | bool | None = None,
                      endpoint: str | None = None) -> tuple[str, list[RemoteFile]]:
    """The commit ``revision`` resolves to and the ``chunk/*.jsonl`` files at that commit."""
    hub = require_hub()
    api = hub.HfApi(endpoint=endpoint or hf_endpoint(), token=token)
    try:
        info = api.dataset_info(repo_id, revision=revision)
        commit = info.sha or revision or "main"
        entries = list(api.list_repo_tree(repo_id, path_in_repo=CHUNK_DIR, recursive=True, repo_type="dataset",
                                          revision=commit))
    except Exception as e:  # huggingface_hub raises its own HTTP/offline errors; say what to do
        raise CorpusError(_hub_error_text(repo_id, e)) from e
    files = []
    for entry in entries:
        if not hasattr(entry, "size") or not str(entry.path).endswith(".jsonl"):
            continue
        if "/" in entry.path[len(CHUNK_DIR) + 1:]:
            continue  # MedRAG's layout is flat: chunk/<file>.jsonl
        files.append(remote_file(entry))
    if not files:
        raise CorpusError(f"{repo_id} at revision {commit} has no {CHUNK_DIR}/*.jsonl files on {api.endpoint}: "
                          "check HF_ENDPOINT and the revision")
    files.sort(key=lambda f: f.path)
    return commit, files


def remote_file(entry: Any) -> RemoteFile:
    """A file entry of ``HfApi.list_repo_tree`` as a RemoteFile: size, LFS sha256 or git blob id."""
    lfs = getattr(entry, "lfs", None)
    return RemoteFile(path=entry.path, size=int(entry.size), sha256=getattr(lfs, "sha256", None) if lfs else None,
                      blob_id=None if lfs else getattr(entry, "blob_id", None))


def _hub_error_text(repo_id: str, e: Exception) -> str:
    kind = type(e).__name__
    fix = ("check the network (or set HF_ENDPOINT to a reachable mirror), and HF_TOKEN if the repository needs it; "
           "on a node without internet download on a login node into the same --db-dir, or set HF_HUB_OFFLINE=1 "
           "to use files already in the Hugging Face cache")
    return f"cannot list dataset {repo_id} on {hf_endpoint()} ({kind}: {e}); {fix}"


def changed_since_download(src: Any) -> str | None:
    """What differs from what ``medret corpus download`` recorded for ``src`` (a file missing, or of another
    size), or None (also when it was not downloaded by medret)."""
    path = src.root / MANIFEST
    if not path.is_file():
        return None
    try:
        files = json.loads(path.read_text()).get("files", {})
    except (OSError, ValueError):
        return None
    by_name = {p.name: p for p in src.chunk_files}
    bad = []
    for name, entry in files.items():
        p = by_name.get(name)
        if p is None:
            bad.append(f"{name} is missing")
        elif p.stat().st_size != entry.get("size"):
            bad.append(f"{name} has {p.stat().st_size} bytes, the hub's file {entry.get('size')}")
    return "; ".join(bad[:5]) + (f" (and {len(bad) - 5} more)" if len(bad) > 5 else "") if bad else None


def is_lfs_pointer(path: Path) -> bool:
    """True when ``path`` holds a git-lfs pointer (a clone without ``git lfs pull``), not the data."""
    try:
        with open(path, "rb") as f:
            return f.read(len(LFS_MAGIC)) == LFS_MAGIC
    except OSError:
        return False


def git_blob_id(path: Path) -> str:
    h = hashlib.sha1()
    h.update(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_HASH_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def sha256_file(path: Path, limit: int | None = None) -> "hashlib._Hash":
    h = hashlib.sha256()
    left = limit
    with open(path, "rb") as f:
        while left is None or left > 0:
            block = f.read(_HASH_BLOCK if left is None else min(_HASH_BLOCK, left))
            if not block:
                break
            h.update(block)
            if left is not None:
                left -= len(block)
    return h


def _checksum_matches(path: Path, rf: RemoteFile) -> bool | None:
    """True/False when the hub gave a checksum to compare with; None when it gave none."""
    if rf.sha256:
        return sha256_file(path).hexdigest() == rf.sha256
    if rf.blob_id:
        return git_blob_id(path) == rf.blob_id
    return None


def partial_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.part")


def _read_manifest(dest: Path) -> dict:
    try:
        return json.loads((dest / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}


def _write_manifest(dest: Path, manifest: dict) -> None:
    atomic_write_text(dest / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))


def _stat_key(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def inspect_local(rf: RemoteFile, local: Path, manifest_files: dict) -> FileState:
    """Compare a local chunk file with the hub's record of it."""
    if not local.exists():
        part = partial_path(local)
        n = part.stat().st_size if part.exists() else 0
        if 0 < n <= rf.size:
            return FileState(rf, local, "partial", partial_bytes=n)
        return FileState(rf, local, "missing")
    if is_lfs_pointer(local):
        return FileState(rf, local, "pointer")
    if local.stat().st_size != rf.size:
        return FileState(rf, local, "size")
    known = manifest_files.get(rf.name)
    if known and known.get("stat") == _stat_key(local) and known.get("sha256") == rf.sha256 \
            and known.get("blob_id") == rf.blob_id:
        return FileState(rf, local, "ok")  # verified by an earlier run and untouched since
    ok = _checksum_matches(local, rf)
    if ok is False:
        return FileState(rf, local, "checksum")
    manifest_files[rf.name] = manifest_entry(local, rf)
    return FileState(rf, local, "ok")


def manifest_entry(local: Path, rf: RemoteFile) -> dict:
    return {"stat": _stat_key(local), "sha256": rf.sha256, "blob_id": rf.blob_id, "size": rf.size}


def plan_source(source: str, db_dir: str | os.PathLike[str], *, revision: str | None = None,
                token: str | bool | None = None, endpoint: str | None = None) -> SourcePlan:
    """List the hub's files for ``source`` and compare them with what ``db_dir`` already holds."""
    if source not in HUB_REPOS:
        raise ConfigError(f"source={source!r} is not on the hub: hub sources are {', '.join(HUB_REPOS)}; "
                          "StatPearls is built from NCBI's archive")
    repo_id = HUB_REPOS[source]
    if hf_offline():
        raise CorpusError(f"HF_HUB_OFFLINE is set, so the file list of {repo_id} cannot be fetched: unset it to list "
                          "or check files against the hub; without --list the download copies from the local "
                          "Hugging Face cache when the files are there")
    commit, files = list_remote_files(repo_id, revision, token=token, endpoint=endpoint)
    dest = Path(db_dir).expanduser() / source
    manifest = _read_manifest(dest)
    mfiles = manifest.get("files", {}) if manifest.get("repo_id") == repo_id else {}
    plan = SourcePlan(source, repo_id, commit, dest)
    chunk = dest / CHUNK_DIR
    for rf in files:
        plan.files.append(inspect_local(rf, chunk / rf.name, mfiles))
    if chunk.is_dir():
        remote_names = {rf.name for rf in files}
        plan.extra_local = sorted(p.name for p in chunk.glob("*.jsonl") if p.name not in remote_names)
    if mfiles:
        _write_manifest(dest, {"repo_id": repo_id, "revision": commit, "files": mfiles})
    return plan


def check_disk(plans: list[Any], extra_bytes: int = 0, free_fn: Callable[[Path], int] | None = None,
               flag: str = "--db-dir") -> tuple[int, int]:
    """Raise CorpusError when the target file system lacks room; return (needed, free) otherwise. ``plans`` are
    SourcePlans or anything else with ``dest`` and ``bytes_to_fetch``; ``flag`` is the option that moves them."""
    free_fn = free_fn or disk_free
    by_fs: dict[Path, int] = {}
    for p in plans:
        by_fs.setdefault(p.dest, 0)
        by_fs[p.dest] += p.bytes_to_fetch
    needed = sum(p.bytes_to_fetch for p in plans) + extra_bytes
    if not plans:
        return needed, 0
    free = min(free_fn(d) for d in by_fs)
    if free < needed:
        where = plans[0].dest.parent
        raise CorpusError(f"not enough disk space in {where}: the download needs {human_bytes(needed)} but only "
                          f"{human_bytes(free)} is free; free {human_bytes(needed - free)} there or choose another "
                          f"{flag}")
    return needed, free


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


# --------------------------------------------------------------------------------------------------------------------
# Transfer


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[Any]:
    """Open ``path`` for appending under an exclusive lock, so two downloads never write the same partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "ab")
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - not POSIX
            pass
        except OSError:
            raise CorpusError(f"{path} is being written by another download (lock held); wait for it to finish "
                              "or stop it") from None
        yield f
    finally:
        f.close()


def fetch_url(url: str, final: Path, *, expected_size: int | None, headers: dict[str, str] | None = None,
              sha256: str | None = None, blob_id: str | None = None, max_retries: int = 5,
              file_bar: Any = None, overall_bar: Any = None, session: Any = None) -> Path:
    """Stream ``url`` into ``final`` via ``.<name>.part`` with Range resume; verify; rename. Returns ``final``.

    A partial file left by an earlier run is resumed. A dropped connection is resumed up to ``max_retries`` times in a
    row without progress. Size is always checked when known; ``sha256`` or ``blob_id`` when given. On a mismatch the
    partial file is deleted and CorpusError raised, leaving ``final`` as it was.
    """
    if session is None:
        require_hub()
        session = compat.hub_session()
    errors = compat.http_transport_errors(session)
    part = partial_path(final)
    base_headers = dict(headers or {})
    base_headers["Accept-Encoding"] = "identity"
    with _locked(part) as out:
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
        retries = max_retries
        while total is None or have < total:
            req = dict(base_headers)
            if have:
                req["Range"] = f"bytes={have}-"
            got = 0
            try:
                with compat.http_stream(session, url, req) as resp:
                    if resp.status_code == 416 and total is not None and have >= total:
                        break
                    if resp.status_code >= 400:
                        raise CorpusError(f"GET {url} answered HTTP {resp.status_code}"
                                          + (" (access denied: set HF_TOKEN or run `hf auth login`)"
                                             if resp.status_code in (401, 403) else "")
                                          + "; check the URL / HF_ENDPOINT and retry")
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
                        if total is not None and file_bar is not None:
                            file_bar.total = total
                            file_bar.refresh()
                    for block in resp.iter_bytes():
                        if not block:
                            continue
                        out.write(block)
                        digest.update(block)
                        if sha1 is not None:
                            sha1.update(block)
                        have += len(block)
                        got += len(block)
                        if file_bar is not None:
                            file_bar.update(len(block))
                        if overall_bar is not None:
                            overall_bar.update(len(block))
                        if total is not None and have > total:
                            break
                out.flush()
                if total is None:
                    total = have
                if have < total:
                    raise ConnectionError(f"connection closed after {have} of {total} bytes")
            except errors as e:
                out.flush()
                retries = max_retries if got else retries - 1
                if retries < 0:
                    raise CorpusError(f"download of {url} keeps failing ({type(e).__name__}: {e}); {have} bytes are "
                                      f"kept in {part}: run the same command again to resume") from e
                logger.warning("%s: %s after %d bytes; resuming", final.name, type(e).__name__, have)
                time.sleep(0.2 if got else 1.0)
                continue
        out.flush()
        os.fsync(out.fileno())
        size = out.tell()
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


def _length_from(headers: Any, have: int) -> int | None:
    if headers.get("Content-Encoding", "identity").lower() != "identity":
        return None
    cr = headers.get("Content-Range")
    if cr and "/" in cr and cr.rsplit("/", 1)[-1].strip().isdigit():
        return int(cr.rsplit("/", 1)[-1])
    cl = headers.get("Content-Length")
    if cl and cl.isdigit():
        return int(cl) + have
    return None


def total_bar(progress: bool, total: int, desc: str) -> Any:
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, disable=not progress,
                position=0, dynamic_ncols=True)


def file_bar(progress: bool, rf_size: int | None, name: str) -> Any:
    return tqdm(total=rf_size, unit="B", unit_scale=True, unit_divisor=1024, desc=name, disable=not progress,
                position=1, leave=False, dynamic_ncols=True)


@dataclass
class DownloadResult:
    source: str
    dest: Path
    fetched: list[str] = field(default_factory=list)
    already_ok: list[str] = field(default_factory=list)
    replaced_pointers: list[str] = field(default_factory=list)
    bytes_fetched: int = 0
    revision: str | None = None
    snippets: int | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["dest"] = str(self.dest)
        return d


def download_plans(plans: list[SourcePlan], *, token: str | bool | None = None, progress: bool = True,
                   max_retries: int = 5, endpoint: str | None = None) -> list[DownloadResult]:
    """Fetch every file the plans mark as needed. Call :func:`check_disk` first."""
    hub = require_hub()
    endpoint = endpoint or hf_endpoint()
    headers = hub.utils.build_hf_headers(token=token, library_name="medret")
    session = compat.hub_session()
    results = []
    total = sum(p.bytes_to_fetch for p in plans)
    with total_bar(progress, total, "total") as overall:
        for plan in plans:
            res = DownloadResult(plan.source, plan.dest, revision=plan.revision)
            manifest = _read_manifest(plan.dest)
            mfiles = manifest.get("files", {}) if manifest.get("repo_id") == plan.repo_id else {}
            (plan.dest / CHUNK_DIR).mkdir(parents=True, exist_ok=True)
            for st in plan.files:
                if not st.needs_fetch:
                    res.already_ok.append(st.remote.name)
                    continue
                if st.status == "pointer":
                    logger.warning("%s is a git-lfs pointer file; replacing it with the data", st.local)
                    res.replaced_pointers.append(st.remote.name)
                elif st.status in ("size", "checksum"):
                    logger.warning("%s differs from the hub (%s); downloading it again", st.local, st.status)
                url = hub.hf_hub_url(plan.repo_id, st.remote.path, repo_type="dataset", revision=plan.revision,
                                     endpoint=endpoint)
                with file_bar(progress, st.remote.size, st.remote.name) as fbar:
                    fetch_url(url, st.local, expected_size=st.remote.size, headers=headers, sha256=st.remote.sha256,
                              blob_id=st.remote.blob_id, max_retries=max_retries, file_bar=fbar,
                              overall_bar=overall, session=session)
                res.fetched.append(st.remote.name)
                res.bytes_fetched += st.bytes_to_fetch
                mfiles[st.remote.name] = manifest_entry(st.local, st.remote)
                _write_manifest(plan.dest, {"repo_id": plan.repo_id, "revision": plan.revision, "files": mfiles})
            logger.info("%s: %d files fetched, %d already complete", plan.source, len(res.fetched),
                        len(res.already_ok))
            results.append(res)
    return results


# --------------------------------------------------------------------------------------------------------------------
# Offline: take the files from the Hugging Face cache


def copy_from_hf_cache(source: str, db_dir: str | os.PathLike[str], *, revision: str | None = None) -> DownloadResult:
    """Offline mode: copy ``chunk/*.jsonl`` of ``source`` out of the local Hugging Face cache, or say what to do."""
    hub = require_hub()
    repo_id = HUB_REPOS[source]
    cache = hf_cache_dir()
    try:
        snap = Path(hub.snapshot_download(repo_id, repo_type="dataset", revision=revision, cache_dir=str(cache),
                                          allow_patterns=[f"{CHUNK_DIR}/*.jsonl"], local_files_only=True))
    except Exception as e:  # noqa: BLE001 - the hub library raises many types for "not in the cache"; named below
        raise CorpusError(f"HF_HUB_OFFLINE is set and {repo_id} is not in the Hugging Face cache {cache} "
                          f"({type(e).__name__}); unset HF_HUB_OFFLINE where the hub is reachable (e.g. a login node) "
                          "and download into the same --db-dir, or point HF_HOME/HF_HUB_CACHE at a cache that has it") \
            from None
    files = sorted((snap / CHUNK_DIR).glob("*.jsonl")) if (snap / CHUNK_DIR).is_dir() else []
    if not files:
        raise CorpusError(f"HF_HUB_OFFLINE is set and the cached snapshot {snap} holds no {CHUNK_DIR}/*.jsonl; "
                          f"download {repo_id} with the hub reachable first")
    dest = Path(db_dir).expanduser() / source
    chunk = dest / CHUNK_DIR
    chunk.mkdir(parents=True, exist_ok=True)
    res = DownloadResult(source, dest, revision=snap.name)
    for src in files:
        real = src.resolve()
        if is_lfs_pointer(real):
            raise CorpusError(f"cached file {real} is a git-lfs pointer; delete it from the cache and download again")
        final = chunk / src.name
        if final.exists() and not is_lfs_pointer(final) and final.stat().st_size == real.stat().st_size:
            res.already_ok.append(src.name)
            continue
        if final.exists() and is_lfs_pointer(final):
            res.replaced_pointers.append(src.name)
        part = partial_path(final)
        shutil.copyfile(real, part)
        os.replace(part, final)
        res.fetched.append(src.name)
        res.bytes_fetched += final.stat().st_size
    return res


# --------------------------------------------------------------------------------------------------------------------
# StatPearls


def download_statpearls(db_dir: str | os.PathLike[str], *, from_file: str | os.PathLike[str] | None = None,
                        url: str | None = None, progress: bool = True, force: bool = False, max_retries: int = 5,
                        free_fn: Callable[[Path], int] | None = None) -> DownloadResult:
    """Fetch NCBI's StatPearls archive (or use ``from_file``) and chunk it into ``DB_DIR/statpearls/chunk``."""
    dest = Path(db_dir).expanduser() / "statpearls"
    res = DownloadResult("statpearls", dest)
    if from_file is not None:
        archive = Path(from_file).expanduser()
        if not archive.is_file():
            raise ConfigError(f"--from={str(archive)!r} is not a file: give the path of {STATPEARLS_ARCHIVE} "
                              f"downloaded from {STATPEARLS_URL}")
    else:
        archive = dest / STATPEARLS_ARCHIVE
        url = statpearls_url(url)
        if force or not archive.is_file():
            require_hub()
            session = compat.hub_session()
            size = remote_size(session, url)
            if size is not None:
                part = partial_path(archive)
                have = part.stat().st_size if part.exists() else 0
                need = 3 * size - have  # the archive plus its chunks (about twice its size)
                free = (free_fn or disk_free)(dest)
                if free < need:
                    raise CorpusError(f"not enough disk space in {dest.parent}: StatPearls needs about "
                                      f"{human_bytes(need)} but only {human_bytes(free)} is free; free space or "
                                      "choose another --db-dir")
            with file_bar(progress, size, STATPEARLS_ARCHIVE) as fbar:
                fetch_url(url, archive, expected_size=size, max_retries=max_retries, file_bar=fbar, session=session)
            res.fetched.append(STATPEARLS_ARCHIVE)
            res.bytes_fetched = archive.stat().st_size
        else:
            res.already_ok.append(STATPEARLS_ARCHIVE)
    done = _read_manifest(dest)
    chunk = dest / CHUNK_DIR
    if (not force and not res.fetched and done.get("archive_size") == archive.stat().st_size
            and done.get("archive_sha256") and chunk.is_dir()
            and len(list(chunk.glob("*.jsonl"))) == done.get("chunk_files")
            and done.get("archive_sha256") == sha256_file(archive).hexdigest()):
        logger.info("StatPearls: %s is already chunked into %s", archive, chunk)
        res.snippets = done.get("snippets")
        return res
    stats = chunk_archive(archive, chunk, progress=progress)
    res.snippets = stats.snippets
    atomic_write_text(dest / MANIFEST, json.dumps({"archive": str(archive), "archive_size": archive.stat().st_size,
                                                   "archive_sha256": sha256_file(archive).hexdigest(),
                                                   "articles": stats.articles, "chunk_files": stats.files,
                                                   "snippets": stats.snippets, "skipped": stats.skipped},
                                                  indent=1, sort_keys=True))
    return res


_STATPEARLS_FIX = f"download {STATPEARLS_ARCHIVE} where the internet is reachable and pass it with --from FILE"


def statpearls_url(url: str | None = None) -> str:
    """Where StatPearls' archive is fetched from: ``url`` (``--statpearls-url``), else ``MEDRET_STATPEARLS_URL``,
    else NCBI's."""
    return url or os.environ.get("MEDRET_STATPEARLS_URL") or STATPEARLS_URL


def remote_size(session: Any, url: str, fix: str = _STATPEARLS_FIX) -> int | None:
    """The size a server gives for ``url`` (after redirects), None when it gives none; CorpusError (with ``fix``)
    when it cannot be reached or refuses."""
    try:
        status, headers = compat.http_head(session, url, {"Accept-Encoding": "identity"})
    except Exception as e:  # noqa: BLE001 - any transport failure gets the same advice
        raise CorpusError(f"cannot reach {url} ({type(e).__name__}: {e}); {fix}") from None
    if status >= 400:
        raise CorpusError(f"HEAD {url} answered HTTP {status}; {fix}")
    cl = headers.get("Content-Length")
    return int(cl) if cl and cl.isdigit() else None


# --------------------------------------------------------------------------------------------------------------------
# Everything at once


def download(names: list[str], db_dir: str | os.PathLike[str], *, revision: str | None = None,
             token: str | bool | None = None, from_file: str | os.PathLike[str] | None = None,
             statpearls_url: str | None = None, progress: bool = True, max_retries: int = 5,
             free_fn: Callable[[Path], int] | None = None, force: bool = False) -> list[DownloadResult]:
    """Download (or complete, or repair) the named corpora into ``db_dir``; see the module docstring."""
    sources = resolve_sources(names)
    if db_dir is None:
        raise ConfigError("--db-dir is missing: give the folder that will hold the corpora (MedRAG's DB_DIR)")
    if from_file is not None and "statpearls" not in sources:
        raise ConfigError(f"--from={str(from_file)!r} only applies to StatPearls, which is not among {names}")
    hub_sources = [s for s in sources if s in HUB_REPOS]
    results: list[DownloadResult] = []
    if hub_sources and hf_offline():
        results += [copy_from_hf_cache(s, db_dir, revision=revision) for s in hub_sources]
    elif hub_sources:
        plans = [plan_source(s, db_dir, revision=revision, token=token) for s in hub_sources]
        check_disk(plans, free_fn=free_fn)
        results += download_plans(plans, token=token, progress=progress, max_retries=max_retries)
    if "statpearls" in sources:
        results.append(download_statpearls(db_dir, from_file=from_file, url=statpearls_url, progress=progress,
                                           max_retries=max_retries, free_fn=free_fn, force=force))
    return results
