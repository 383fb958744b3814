"""Corpus names → sources on disk.

MedRAG keeps each source in ``DB_DIR/<source>/chunk/*.jsonl`` with lower-case source names; composite corpora
are lists of sources. medret resolves the same names (case-insensitive) plus the shipped ``sample`` corpus and
any custom folder or jsonl file.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from medret.encoders.specs import EncoderSpec
from medret.errors import CorpusError
from medret.fetch.env import default_cache_dir

SOURCES: dict[str, tuple[str, ...]] = {
    "pubmed": ("pubmed",),
    "textbooks": ("textbooks",),
    "statpearls": ("statpearls",),
    "wikipedia": ("wikipedia",),
    "medtext": ("textbooks", "statpearls"),
    "medcorp": ("pubmed", "textbooks", "statpearls", "wikipedia"),
}
DISPLAY = {"pubmed": "PubMed", "textbooks": "Textbooks", "statpearls": "StatPearls", "wikipedia": "Wikipedia",
           "medtext": "MedText", "medcorp": "MedCorp", "sample": "sample"}
# Snippet counts of MedRAG's corpora (MedRAG paper, Table 1); used for planning before anything is downloaded.
KNOWN_ROWS = {"pubmed": 23_898_701, "statpearls": 301_202, "textbooks": 125_847, "wikipedia": 29_913_202}
SAMPLE_DIR = Path(__file__).resolve().parent.parent / "data" / "sample"
WHERE_FROM = ("MedRAG's corpora come from the Hugging Face hub (datasets MedRAG/pubmed, MedRAG/textbooks, "
              "MedRAG/wikipedia; StatPearls is chunked locally): run `medret corpus download NAME --db-dir DIR`")


@dataclass(frozen=True)
class Source:
    """One folder of chunk files (or one jsonl file) and where medret keeps its artifacts for it."""

    name: str
    chunk_files: tuple[Path, ...]
    artifact_dir: Path

    @property
    def root(self) -> Path:
        """The source folder (the one holding chunk/, and MedRAG's index/ if any)."""
        folder = self.chunk_files[0].parent
        return folder.parent if folder.name == "chunk" else folder

    @property
    def store_dir(self) -> Path:
        return self.artifact_dir / "store"



@dataclass(frozen=True)
class Corpus:
    """A named corpus: one or more sources, searched as one collection."""

    name: str
    sources: tuple[Source, ...]
    artifact_dir: Path  # where corpus-level artifacts (BM25 over the union) live

    @property
    def display_name(self) -> str:
        return DISPLAY.get(self.name.lower(), self.name)

    @property
    def bm25_dir(self) -> Path:
        """Where the corpus's BM25 index (one over the union of its sources) lives."""
        return self.artifact_dir / "bm25"


def medrag_index_dir(source_dir: str | os.PathLike[str], doc_model: str | EncoderSpec) -> Path:
    """Where MedRAG keeps a source's precomputed index: ``<source_dir>/index/<doc model id>`` (e.g.
    ``.../pubmed/index/ncbi/MedCPT-Article-Encoder``)."""
    model = doc_model.doc_model if isinstance(doc_model, EncoderSpec) else doc_model
    return Path(source_dir) / "index" / model


def artifacts_in(cache: str | os.PathLike[str] | None, name: str, origin: Path, default: Path) -> Path:
    """Where the stores and indexes of ``origin`` (a source folder, a jsonl file, or a db_dir for corpus-level
    artifacts) live: ``default`` (beside the data), or with ``cache_dir`` set, ``<cache_dir>/<name>-<hash of the
    origin's absolute path>``, so that one cache folder serves several db_dirs without mixing them."""
    if cache is None:
        return default
    key = hashlib.sha256(os.path.abspath(os.path.expanduser(origin)).encode()).hexdigest()[:10]
    return Path(cache).expanduser() / f"{name.lower()}-{key}"


def valid_names() -> list[str]:
    return [DISPLAY[n] for n in SOURCES] + ["sample"]


def resolve_corpus(name: str, db_dir: str | os.PathLike[str] | None,
                   cache_dir: str | os.PathLike[str] | None = None) -> Corpus:
    """Resolve a corpus name (or path) to its sources; raise CorpusError naming what is wrong and how to fix it.

    ``cache_dir``: build and look for stores and indexes there instead of beside the chunk files (a read-only
    db_dir); see :func:`artifacts_in`.
    """
    cache = cache_dir  # the setting (this function's argument), not the module's default_cache_dir()
    if not isinstance(name, str) or not name.strip():
        raise CorpusError(f"corpus_name={name!r} is invalid: give one of {', '.join(valid_names())} or a folder path")
    key = name.strip().lower()
    if key == "sample":
        # keyed by this installation's sample folder even in the default cache: two installs (a venv per trainer)
        # sharing ~/.cache/medret would otherwise take turns finding the other's chunk files' inodes in the store
        art = artifacts_in(default_cache_dir() if cache is None else cache, "sample", SAMPLE_DIR, SAMPLE_DIR)
        return Corpus("sample", (_source("sample", SAMPLE_DIR, art),), art)
    if key in SOURCES:
        if db_dir is None:
            raise CorpusError(f"db_dir=None: corpus {DISPLAY[key]!r} needs db_dir, the folder that holds MedRAG's "
                              f"corpora ({'/'.join(SOURCES[key])}/chunk/*.jsonl). {WHERE_FROM}")
        root = Path(db_dir).expanduser()
        if not root.is_dir():
            raise CorpusError(f"db_dir={str(root)!r} does not exist. {WHERE_FROM}")
        sources = tuple(_source(s, root / s, artifacts_in(cache, s, root / s, root / s / "medret"))
                        for s in SOURCES[key])
        art = sources[0].artifact_dir if len(sources) == 1 else artifacts_in(cache, key, root, root / key / "medret")
        return Corpus(DISPLAY[key], sources, art)
    # A custom corpus: a folder under db_dir, or a path to a folder or a jsonl file.
    candidates = []
    if db_dir is not None:
        candidates.append(Path(db_dir).expanduser() / name)
    candidates.append(Path(name).expanduser())
    for path in candidates:
        if path.is_file() and path.suffix == ".jsonl":
            art = artifacts_in(cache, path.stem, path, path.with_name(path.name + ".medret"))
            src = Source(path.stem, (path.resolve(),), art)
            return Corpus(path.stem, (src,), art)
        if path.is_dir():
            art = artifacts_in(cache, path.name, path, path / "medret")
            return Corpus(path.name, (_source(path.name, path, art),), art)
    raise CorpusError(f"corpus_name={name!r} is unknown: valid names are {', '.join(valid_names())}, "
                      f"or a folder with chunk/*.jsonl, or a .jsonl file"
                      + (f" (looked in db_dir={str(db_dir)!r})" if db_dir is not None else ""))


def _source(name: str, root: Path, artifact_dir: Path) -> Source:
    chunk = root / "chunk"
    folder = chunk if chunk.is_dir() else root
    if not root.is_dir():
        raise CorpusError(f"corpus source {name!r}: folder {str(root)!r} does not exist. {WHERE_FROM}")
    files = tuple(sorted(p for p in folder.iterdir() if p.suffix == ".jsonl" and p.is_file()))
    if not files:
        raise CorpusError(f"corpus source {name!r}: no *.jsonl chunk files in {str(folder)!r}. {WHERE_FROM}")
    return Source(name, files, artifact_dir)
