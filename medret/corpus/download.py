"""Download MedRAG's corpora from the Hugging Face hub into MedRAG's layout, ``DB_DIR/<source>/chunk/*.jsonl``.

No git and no git-lfs: the file list (sizes, LFS sha256, git blob ids) comes from the hub's API
(:func:`medret.fetch.hub.list_repo_files`, through huggingface_hub's HTTP session); each file is streamed into
``chunk/.<file>.part`` with HTTP ``Range`` resume (within a run after a dropped connection, and across runs from
the partial file), verified (size, then sha256 for LFS files or the git blob id for plain files) and renamed onto
its final name only when it is complete and correct.

The hub's usual environment is honoured: ``HF_ENDPOINT`` (read when the download runs), ``HF_TOKEN`` and the token
file under ``HF_HOME``, ``HF_HUB_CACHE``/``HF_HOME`` and ``HF_HUB_OFFLINE`` (offline, files are taken from the
Hugging Face cache when they are there, otherwise a clear error says what to do).

StatPearls is not on the hub: :func:`download_statpearls` fetches NCBI's archive (or takes a local copy) and
chunks it with :mod:`medret.corpus.statpearls`.

The toolkit under all of medret's downloads (listing, bounded and resumable transfer, archives, the hub's
environment) is :mod:`medret.fetch`; every network step is bounded by :class:`medret.fetch.settings.FetchOptions`.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from medret import compat
from medret.corpus.registry import DISPLAY, SOURCES
from medret.corpus.statpearls import MAX_ARTICLE_BYTES, chunk_archive
from medret.errors import ConfigError, CorpusError
from medret.fetch.archive import ArchiveError
from medret.fetch.env import hf_cache_dir, hf_endpoint, hf_offline, require_hub
from medret.fetch.files import (
    FileState,
    RemoteFile,
    check_disk,
    disk_free,
    file_bar,
    human_bytes,
    inspect_local,
    is_lfs_pointer,
    manifest_entry,
    partial_path,
    sha256_file,
    total_bar,
)
from medret.fetch.hub import HUB_FIX, list_repo_files
from medret.fetch.settings import FetchOptions
from medret.fetch.transfer import fetch_url, remote_size
from medret.storage.atomic import atomic_write_text

logger = logging.getLogger(__name__)

#: Hub dataset of each source MedRAG distributes there (StatPearls is built locally from NCBI's archive).
HUB_REPOS: dict[str, str] = {"pubmed": "MedRAG/pubmed", "textbooks": "MedRAG/textbooks",
                             "wikipedia": "MedRAG/wikipedia"}
STATPEARLS_URL = "https://ftp.ncbi.nlm.nih.gov/pub/litarch/3d/12/statpearls_NBK430685.tar.gz"
STATPEARLS_ARCHIVE = "statpearls_NBK430685.tar.gz"
CHUNK_DIR = "chunk"
MANIFEST = Path("medret") / "download.json"


# --------------------------------------------------------------------------------------------------------------------
# Names


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


# --------------------------------------------------------------------------------------------------------------------
# Remote listing and local state


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
                      endpoint: str | None = None,
                      options: FetchOptions | None = None) -> tuple[str, list[RemoteFile]]:
    """The commit ``revision`` resolves to and the ``chunk/*.jsonl`` files at that commit (MedRAG's layout is
    flat: nothing in sub-folders)."""
    endpoint = endpoint or hf_endpoint()
    commit, files = list_repo_files(
        "dataset", repo_id, revision, path=CHUNK_DIR, token=token, endpoint=endpoint, options=options,
        fix=HUB_FIX.replace("the same folder", "the same --db-dir"),
        keep=lambda p: p.endswith(".jsonl") and "/" not in p[len(CHUNK_DIR) + 1:])
    if not files:
        raise CorpusError(f"{repo_id} at revision {commit} has no {CHUNK_DIR}/*.jsonl files on {endpoint}: "
                          "check HF_ENDPOINT and the revision")
    return commit, files


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


def _read_manifest(dest: Path) -> dict:
    try:
        return json.loads((dest / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}


def _write_manifest(dest: Path, manifest: dict) -> None:
    atomic_write_text(dest / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))


def plan_source(source: str, db_dir: str | os.PathLike[str], *, revision: str | None = None,
                token: str | bool | None = None, endpoint: str | None = None,
                options: FetchOptions | None = None) -> SourcePlan:
    """List the hub's files for ``source`` and compare them with what ``db_dir`` already holds."""
    if source not in HUB_REPOS:
        raise ConfigError(f"source={source!r} is not on the hub: hub sources are {', '.join(HUB_REPOS)}; "
                          "StatPearls is built from NCBI's archive")
    repo_id = HUB_REPOS[source]
    if hf_offline():
        raise CorpusError(f"HF_HUB_OFFLINE is set, so the file list of {repo_id} cannot be fetched: unset it to list "
                          "or check files against the hub; without --list the download copies from the local "
                          "Hugging Face cache when the files are there")
    commit, files = list_remote_files(repo_id, revision, token=token, endpoint=endpoint, options=options)
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
                   max_retries: int = 5, endpoint: str | None = None,
                   options: FetchOptions | None = None) -> list[DownloadResult]:
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
                              overall_bar=overall, session=session, options=options, fix=HUB_FIX)
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
                        free_fn: Callable[[Path], int] | None = None,
                        options: FetchOptions | None = None) -> DownloadResult:
    """Fetch NCBI's StatPearls archive (or use ``from_file``) and chunk it into ``DB_DIR/statpearls/chunk``.

    The archive is checked whole while it is chunked (:func:`medret.fetch.archive.tar_members`); a damaged one
    that medret downloaded is deleted (the next run fetches it again), one given with ``--from`` is left alone."""
    opts = options or FetchOptions()
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
            size = remote_size(session, url, _STATPEARLS_FIX, opts)
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
                fetch_url(url, archive, expected_size=size, max_retries=max_retries, file_bar=fbar, session=session,
                          options=opts, fix=_STATPEARLS_FIX)
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
    try:
        stats = chunk_archive(archive, chunk, progress=progress,
                              max_member_bytes=min(opts.max_member_bytes, MAX_ARTICLE_BYTES))
    except ArchiveError as e:
        if from_file is not None:
            raise CorpusError(f"{e}; nothing was chunked: give an undamaged copy of {STATPEARLS_ARCHIVE} with "
                              f"--from (from {STATPEARLS_URL})") from None
        archive.unlink(missing_ok=True)
        raise CorpusError(f"{e}; nothing was chunked and the archive was deleted: run the same command again to "
                          "download it again") from None
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


# --------------------------------------------------------------------------------------------------------------------
# Everything at once


def download(names: list[str], db_dir: str | os.PathLike[str], *, revision: str | None = None,
             token: str | bool | None = None, from_file: str | os.PathLike[str] | None = None,
             statpearls_url: str | None = None, progress: bool = True, max_retries: int = 5,
             free_fn: Callable[[Path], int] | None = None, force: bool = False,
             options: FetchOptions | None = None) -> list[DownloadResult]:
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
        plans = [plan_source(s, db_dir, revision=revision, token=token, options=options) for s in hub_sources]
        check_disk(plans, free_fn=free_fn)
        results += download_plans(plans, token=token, progress=progress, max_retries=max_retries, options=options)
    if "statpearls" in sources:
        results.append(download_statpearls(db_dir, from_file=from_file, url=statpearls_url, progress=progress,
                                           max_retries=max_retries, free_fn=free_fn, force=force,
                                           options=options))
    return results
