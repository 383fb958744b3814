"""MedRAG's precomputed document embeddings: download, check and unpack them into the layout medret reads.

MedRAG publishes, for PubMed, Textbooks and Wikipedia (not StatPearls, which NCBI updates), one zip archive per
document model (MedCPT's article encoder, Contriever, SPECTER) holding ``embedding/<chunk file stem>.npy``: one
float32 row per snippet of ``chunk/<stem>.jsonl`` (empty chunk files have none). MedRAG fetches it with ``wget`` and
``unzip``s it into ``DB_DIR/<source>/index/<doc model id>/``; :mod:`medret.index.medrag` reads that folder
directly (memory-mapped, exact search), so nobody re-embeds 54M snippets (~1.7 GPU-hours for MedCorp with
MedCPT in fp16).

Here, per source and model:

* the archive is streamed into ``index/<model>/.embedding.zip.part`` by medret's downloader
  (:func:`medret.fetch.transfer.fetch_url`): resumed with HTTP ``Range`` within a run and across runs, its size
  checked against the host's ``Content-Length`` / ``Content-Range`` (or capped by ``--max-download-bytes`` when it
  gives none), every request bounded by ``--timeout``, renamed to ``embedding.zip`` when complete;
* the host publishes no checksums, so integrity comes from the archive itself: before anything is unpacked every
  member must be stored or deflated, unencrypted and under ``--max-member-bytes``; the CRC-32 the zip stores for
  every member is checked while it is unpacked (a damaged archive is deleted and the error says to run again; one
  in a method Python cannot read, such as deflate64, is kept and the error says how to unpack it); then every
  ``.npy`` must parse as a 2-D float array of one width, and, where the chunk files are present, have exactly one row
  per snippet of its chunk file, with no non-empty chunk file left without embeddings;
* it is unpacked under a temporary name and renamed onto ``embedding/`` only when all of that holds; a record
  (``.medret-embeddings.json``) lists what was unpacked, so a re-run does nothing; the archive is then deleted
  (``keep_archive`` keeps it). An ``embedding/`` folder already there (MedRAG's own download) is checked the same
  way and kept when it passes.

``MEDRET_EMBEDDINGS_MIRROR`` (or ``mirror=``) replaces the hosts with ``<mirror>/<source>/<doc model id>/embedding.zip``
(a site mirror, or the tests' local server).
"""
from __future__ import annotations

import json
import logging
import os
import re
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from medret import compat
from medret.corpus.download import CHUNK_DIR
from medret.corpus.reader import count_lines
from medret.corpus.registry import DISPLAY, KNOWN_ROWS, medrag_index_dir
from medret.encoders.specs import get_spec
from medret.errors import ConfigError, CorpusError, MedretError
from medret.fetch.archive import ArchiveError, copy_zip_member, zip_member_problem
from medret.fetch.env import require_hub
from medret.fetch.files import disk_free, file_bar, human_bytes, partial_path
from medret.fetch.settings import FetchOptions
from medret.fetch.transfer import fetch_url, host_of, remote_size
from medret.retrievers import retriever_parts
from medret.storage.atomic import atomic_path, atomic_write_text
from medret.storage.vectors import verify_files

logger = logging.getLogger(__name__)

MIRROR_ENV = "MEDRET_EMBEDDINGS_MIRROR"
ARCHIVE = "embedding.zip"
EMBEDDING_DIR = "embedding"
RECORD = ".medret-embeddings.json"
_SHAREPOINT = "https://myuva-my.sharepoint.com/:u:/g/personal/hhu4zu_virginia_edu/{}?download=1"
#: MedRAG's published archives (MedRAG/src/utils.py, ``Retriever.__init__``), by source and document model
ARCHIVES: dict[tuple[str, str], str] = {
    ("textbooks", "allenai/specter"): _SHAREPOINT.format("EYRRpJbNDyBOmfzCOqfQzrsBwUX0_UT8-j_geDPcVXFnig"),
    ("textbooks", "facebook/contriever"): _SHAREPOINT.format("EQqzldVMCCVIpiFV4goC7qEBSkl8kj5lQHtNq8DvHJdAfw"),
    ("textbooks", "ncbi/MedCPT-Article-Encoder"): _SHAREPOINT.format("EQ8uXe4RiqJJm0Tmnx7fUUkBKKvTwhu9AqecPA3ULUxUqQ"),
    ("pubmed", "allenai/specter"): _SHAREPOINT.format("Ebz8ySXt815FotxC1KkDbuABNycudBCoirTWkKfl8SEswA"),
    ("pubmed", "facebook/contriever"): _SHAREPOINT.format("EWecRNfTxbRMnM0ByGMdiAsBJbGJOX_bpnUoyXY9Bj4_jQ"),
    ("pubmed", "ncbi/MedCPT-Article-Encoder"): _SHAREPOINT.format("EVCuryzOqy5Am5xzRu6KJz4B6dho7Tv7OuTeHSh3zyrOAw"),
    ("wikipedia", "allenai/specter"): _SHAREPOINT.format("Ed7zG3_ce-JOmGTbgof3IK0BdD40XcuZ7AGZRcV_5D2jkA"),
    ("wikipedia", "facebook/contriever"): _SHAREPOINT.format("ETKHGV9_KNBPmDM60MWjEdsBXR4P4c7zZk1HLLc0KVaTJw"),
    ("wikipedia", "ncbi/MedCPT-Article-Encoder"): _SHAREPOINT.format("EXoxEANb_xBFm6fa2VLRmAcBIfCuTL-5VH6vl4GxJ06oCQ"),
}
PUBLISHED_MODELS = ("ncbi/MedCPT-Article-Encoder", "facebook/contriever", "allenai/specter")
DIM = 768  # all three models
_NPY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*\.npy$")


def embedding_specs(names: list[str]) -> list:
    """The encoder specs whose MedRAG embeddings ``names`` ask for (MedCPT, Contriever, SPECTER; RRF-2/RRF-4 and
    'A+B' expand, BM25 needs none), each once."""
    out = []
    for name in names:
        for part in retriever_parts(name):
            if part == "bm25":
                continue
            spec = get_spec(part)
            if spec is None or spec.doc_model not in PUBLISHED_MODELS:
                raise ConfigError(f"--embeddings={name!r}: MedRAG publishes precomputed embeddings only for MedCPT, "
                                  "Contriever and SPECTER; build other indexes with `medret index build`")
            if spec not in out:
                out.append(spec)
    if not out:
        raise ConfigError(f"--embeddings={','.join(names)!r} names no dense retriever: give MedCPT, Contriever, "
                          "SPECTER, RRF-2 or RRF-4")
    return out


def archive_url(source: str, doc_model: str, mirror: str | None = None) -> str:
    mirror = mirror or os.environ.get(MIRROR_ENV)
    if mirror:
        return f"{mirror.rstrip('/')}/{source}/{doc_model}/{ARCHIVE}"
    return ARCHIVES[(source, doc_model)]


def fetch_hint(source: str, doc_model: str, db_dir: str | None) -> str | None:
    """The command that fetches MedRAG's embeddings of ``source`` for ``doc_model``, or None when none are published."""
    spec = get_spec(doc_model)
    if (source, doc_model) not in ARCHIVES or spec is None:
        return None
    return (f"medret corpus download {DISPLAY[source]} --db-dir {db_dir or 'DIR'} --embeddings {spec.name}")


def unpacked_bytes_estimate(source: str) -> int | None:
    """float32 x 768 per snippet of MedRAG's corpus (the archives hold about that; floats compress little)."""
    rows = KNOWN_ROWS.get(source)
    return None if rows is None else rows * DIM * 4


@dataclass
class EmbeddingResult:
    source: str
    doc_model: str
    dest: Path  # DB_DIR/<source>/index/<doc model>/embedding
    status: str  # "fetched" | "already" | "adopted" | "unavailable"
    files: int = 0
    rows: int = 0
    bytes_fetched: int = 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["dest"] = str(self.dest)
        return d


def chunk_rows(chunk_dir: Path) -> dict[str, int] | None:
    """Snippets per non-empty chunk file (MedRAG writes no embeddings for empty ones); None without chunk files."""
    if not chunk_dir.is_dir():
        return None
    out = {}
    for p in sorted(chunk_dir.glob("*.jsonl")):
        n = count_lines(p) if p.stat().st_size else 0
        if n:
            out[p.stem] = n
    return out


DAMAGED = "damaged vectors: "


def check_folder(folder: Path, rows: dict[str, int] | None) -> tuple[list[str], dict[str, list[int]]]:
    """(problems, {file: [bytes, rows]}) of a folder of MedRAG ``.npy`` embeddings against the chunk files' rows."""
    problems: list[str] = []
    files: dict[str, list[int]] = {}
    dim = None
    arrays = []
    for p in sorted(folder.glob("*.npy")):
        try:
            arr = np.load(p, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            problems.append(f"{p.name} is not a readable .npy file ({e})")
            continue
        if arr.ndim != 2 or arr.dtype.kind != "f":
            problems.append(f"{p.name} holds {arr.dtype} of shape {arr.shape}; expected float rows x dim")
            continue
        if dim is None:
            dim = int(arr.shape[1])
        elif arr.shape[1] != dim:
            problems.append(f"{p.name} has width {arr.shape[1]}, the others {dim}")
        if rows is not None:
            want = rows.get(p.stem)
            if want is None:
                problems.append(f"{p.name} has no chunk file {p.stem}.jsonl with snippets")
            elif want != arr.shape[0]:
                problems.append(f"{p.name} has {arr.shape[0]} rows but chunk/{p.stem}.jsonl has {want} snippets")
        files[p.name] = [p.stat().st_size, int(arr.shape[0])]
        arrays.append(arr)
    if not problems and arrays:  # every vector, once: a NaN, inf, zeroed or huge row is never served
        damage = verify_files(arrays, [folder / n for n in files])
        if damage is not None:
            problems.append(f"{DAMAGED}{damage}")
    del arrays
    if rows is not None:
        missing = sorted(set(rows) - {Path(n).stem for n in files})
        if missing:
            problems.append(f"{len(missing)} chunk files have no embeddings (e.g. {missing[0]}.jsonl)")
    if not files and not problems:
        problems.append("no .npy files")
    return problems, files


def _read_record(index_dir: Path) -> dict:
    try:
        return json.loads((index_dir / RECORD).read_text())
    except (OSError, ValueError):
        return {}


def _record_matches(target: Path, record: dict) -> bool:
    files = record.get("files")
    if not record.get("complete") or not isinstance(files, dict) or not target.is_dir():
        return False
    here = {p.name: p.stat().st_size for p in target.glob("*.npy")}
    return here == {n: v[0] for n, v in files.items()}


def _write_record(index_dir: Path, url: str, files: dict[str, list[int]]) -> None:
    atomic_write_text(index_dir / RECORD, json.dumps({"url": url, "complete": True, "files": files,
                                                      "rows": sum(v[1] for v in files.values())},
                                                     indent=1, sort_keys=True))


def unpack(archive: Path, target: Path, rows: dict[str, int] | None, chunk_dir: Path,
           free_fn: Callable[[Path], int] | None = None,
           options: FetchOptions | None = None) -> dict[str, list[int]]:
    """Unpack the ``.npy`` members of ``archive`` into ``target`` (temporary name, renamed when checked).

    A damaged archive (bad zip, damaged or encrypted member, one over ``max_member_bytes``) is deleted; one whose
    compression Python cannot read is kept, and the error says how to unpack it by hand."""
    opts = options or FetchOptions()
    try:
        with zipfile.ZipFile(archive) as z:
            members = [m for m in z.infolist() if not m.is_dir() and m.filename.endswith(".npy")
                       and not m.filename.startswith("__MACOSX/")]
            names = [m.filename.replace("\\", "/").rsplit("/", 1)[-1] for m in members]
            bad = [n for n in names if not _NPY_NAME.match(n)]
            if bad or len(set(names)) != len(names) or not members:
                raise CorpusError(f"{archive} is not one of MedRAG's embedding archives (expected "
                                  f"{EMBEDDING_DIR}/<chunk file>.npy members; "
                                  + (f"found {bad[0]!r})" if bad else "found none or duplicates)"))
            for m in members:
                problem = zip_member_problem(m, opts.max_member_bytes)
                if problem is not None:
                    raise problem
            need = sum(m.file_size for m in members)
            free = (free_fn or disk_free)(target.parent)
            if free < need:
                raise CorpusError(f"not enough disk space in {target.parent} to unpack {archive.name}: it needs "
                                  f"{human_bytes(need)}, {human_bytes(free)} is free; free space or choose "
                                  "another --db-dir")
            with atomic_path(target) as tmp:
                tmp.mkdir()
                for m, name in zip(members, names):
                    copy_zip_member(z, m, tmp / name)
                problems, files = check_folder(tmp, rows)
                damaged = [p for p in problems if p.startswith(DAMAGED)]
                if damaged:
                    archive.unlink(missing_ok=True)
                    raise CorpusError(f"MedRAG's embeddings in {archive} hold {damaged[0]}: they are never served, "
                                      "and the archive was deleted; build medret's own index instead (`medret index "
                                      "build --corpus NAME --retriever NAME`)")
                if problems:
                    raise CorpusError(f"the embeddings in {archive} do not fit the chunk files in "
                                      f"{chunk_dir}: " + "; ".join(problems[:3])
                                      + ". They belong to other chunk files: download the corpus again (`medret "
                                      "corpus download`), or build the index yourself (`medret index build`)")
    except ArchiveError as e:
        if not e.damaged:
            raise CorpusError(f"{archive}: {e}; it was kept: unpack it with Info-ZIP's unzip (`unzip -j {archive} "
                              f"'*.npy' -d {target}`), then run the same command again: the folder is checked and "
                              "used") from None
        archive.unlink(missing_ok=True)
        raise CorpusError(f"{archive}: {e}; it was deleted and nothing was unpacked: run the same command again to "
                          "download it again") from None
    except zipfile.BadZipFile as e:
        archive.unlink(missing_ok=True)
        raise CorpusError(f"{archive} is damaged ({e}); it was deleted: run the same command again to download it "
                          "again") from None
    return files


def download_one(source: str, spec, db_dir: str | os.PathLike[str], *, mirror: str | None = None,
                 progress: bool = True, max_retries: int = 5, keep_archive: bool = False,
                 free_fn: Callable[[Path], int] | None = None,
                 options: FetchOptions | None = None) -> EmbeddingResult:
    src_dir = Path(db_dir).expanduser() / source
    index_dir = medrag_index_dir(src_dir, spec.doc_model)
    target = index_dir / EMBEDDING_DIR
    res = EmbeddingResult(source, spec.doc_model, target, "already")
    if (source, spec.doc_model) not in ARCHIVES:
        res.status = "unavailable"
        return res
    url = archive_url(source, spec.doc_model, mirror)
    record = _read_record(index_dir)
    if _record_matches(target, record):
        res.files, res.rows = len(record["files"]), int(record.get("rows", 0))
        return res
    rows = chunk_rows(src_dir / CHUNK_DIR)
    if rows is None:
        logger.warning("%s has no chunk files: the embeddings cannot be checked against them", src_dir / CHUNK_DIR)
    if target.is_dir():  # e.g. MedRAG's own download: keep it if it is right
        problems, files = check_folder(target, rows)
        if not problems:
            _write_record(index_dir, url, files)
            res.status, res.files, res.rows = "adopted", len(files), sum(v[1] for v in files.values())
            return res
        logger.warning("%s does not fit the chunk files (%s); downloading MedRAG's archive again", target,
                       problems[0])
    archive = index_dir / ARCHIVE
    index_dir.mkdir(parents=True, exist_ok=True)
    if not archive.is_file():
        require_hub()
        session = compat.hub_session()
        size = remote_size(session, url, _fetch_fix(url, archive), options)
        part = partial_path(archive)
        have = part.stat().st_size if part.exists() else 0
        if size is not None:
            need = max(size - have, 0) + size  # what is left to fetch, and about as much again to unpack it
            free = (free_fn or disk_free)(index_dir)
            if free < need:
                raise CorpusError(f"not enough disk space in {index_dir}: MedRAG's {spec.name} embeddings of "
                                  f"{source} need about {human_bytes(need)} (archive and unpacked files), "
                                  f"{human_bytes(free)} is free; free space or choose another --db-dir")
        with file_bar(progress, size, f"{source} {spec.name} {ARCHIVE}") as bar:
            fetch_url(url, archive, expected_size=size, max_retries=max_retries, file_bar=bar, session=session,
                      options=options, fix=_fetch_fix(url, archive))
        res.bytes_fetched = archive.stat().st_size - have
    files = unpack(archive, target, rows, src_dir / CHUNK_DIR, free_fn=free_fn, options=options)
    _write_record(index_dir, url, files)
    if not keep_archive:
        archive.unlink()
    res.status, res.files, res.rows = "fetched", len(files), sum(v[1] for v in files.values())
    logger.info("%s: MedRAG's %s embeddings, %d files, %d rows -> %s", source, spec.name, res.files, res.rows, target)
    return res


def _fetch_fix(url: str, archive: Path) -> str:
    return (f"download {url} where it is reachable and put it at {archive}, or set {MIRROR_ENV} (or "
            "--embeddings-mirror) to a mirror; then run the same command again")


def plan_embeddings(sources: list[str], names: list[str], db_dir: str | os.PathLike[str],
                    mirror: str | None = None, options: FetchOptions | None = None) -> list[dict]:
    """What a download would do (for ``--list``): per source and model, the URL, whether it is here, and the disk
    it will take: the archive and about as much again unpacked, from the size the host gives for the archive (what
    the download itself checks), or, when the host does not answer or gives no size, estimated from MedRAG's
    snippet counts (``size_from``: "host" or "estimate")."""
    out = []
    session = None
    silent: set[str] = set()  # hosts that did not answer: not asked again for the next archive
    for source in sources:
        for spec in embedding_specs(names):
            index_dir = medrag_index_dir(Path(db_dir).expanduser() / source, spec.doc_model)
            item = {"source": source, "doc_model": spec.doc_model, "dest": str(index_dir / EMBEDDING_DIR),
                    "url": None, "status": "unavailable", "estimated_bytes": 0, "size_from": None}
            if (source, spec.doc_model) in ARCHIVES:
                url = archive_url(source, spec.doc_model, mirror)
                here = _record_matches(index_dir / EMBEDDING_DIR, _read_record(index_dir))
                item.update(url=url, status="here" if here else "to fetch")
                if not here:
                    size = None
                    try:
                        if host_of(url) in silent:
                            raise CorpusError(f"{host_of(url)} did not answer before")
                        require_hub()
                        session = session or compat.hub_session()
                        size = remote_size(session, url, _fetch_fix(url, index_dir / ARCHIVE), options)
                    except MedretError as e:
                        silent.add(host_of(url))
                        logger.info("%s: no size from the host (%s); estimating from MedRAG's snippet counts", url, e)
                    if size is not None:
                        item.update(estimated_bytes=2 * size, size_from="host")
                    else:
                        item.update(estimated_bytes=2 * (unpacked_bytes_estimate(source) or 0), size_from="estimate")
            out.append(item)
    return out


def download_embeddings(sources: list[str], names: list[str], db_dir: str | os.PathLike[str], *,
                        mirror: str | None = None, progress: bool = True, max_retries: int = 5,
                        keep_archive: bool = False, free_fn: Callable[[Path], int] | None = None,
                        options: FetchOptions | None = None) -> list[EmbeddingResult]:
    """MedRAG's embeddings of every (source, model) ``names`` asks for; StatPearls has none ('unavailable')."""
    specs = embedding_specs(names)
    return [download_one(s, spec, db_dir, mirror=mirror, progress=progress, max_retries=max_retries,
                         keep_archive=keep_archive, free_fn=free_fn, options=options)
            for s in sources for spec in specs]
