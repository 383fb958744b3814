"""Data and index checks: the corpus's chunk files, the document store, each index (as the searchers would open
it: :mod:`medret.index.locate`), and the memory they take."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from medret import optional
from medret.corpus.download import changed_since_download
from medret.corpus.embeddings import fetch_hint
from medret.corpus.reader import count_lines
from medret.corpus.registry import DISPLAY, KNOWN_ROWS, SOURCES, resolve_corpus
from medret.corpus.store import DocStore, UnionStore, stored_rows
from medret.device import resolve_device
from medret.doctor.checks import FAIL, OK, WARN, Check, Need, gb
from medret.encoders.specs import like_choices, spec_for
from medret.errors import MedretError
from medret.fetch.files import is_lfs_pointer
from medret.index.dense_build import load_dense_index
from medret.index.hints import build_command
from medret.index.identity import encoder_identity
from medret.index.locate import legacy_message, locate_bm25, locate_dense
from medret.index.medrag import open_medrag_index
from medret.retrievers import retriever_choices, retriever_parts

# Counting lines of bigger chunk folders takes minutes (PubMed is 70 GB); their row count comes from the store.
COUNT_LINES_MAX_BYTES = 2 * 1024**3
MEMORY_WARN_FRACTION = 0.8


def corpus_of(config: Any) -> tuple[Any, Check | None]:
    """The configured corpus, or the fail line saying why there is none."""
    try:
        return resolve_corpus(config.corpus_name, config.db_dir, config.cache_dir), None
    except MedretError as e:
        return None, Check("corpus", FAIL, f"corpus {config.corpus_name!r} not found", str(e),
                           _download_fix(config.corpus_name, config.db_dir))


def _download_fix(name: str, db_dir: str | None) -> str:
    key = str(name).lower()
    if key in SOURCES:
        return f"medret corpus download {DISPLAY[key]} --db-dir {db_dir or 'DIR'}"
    return "give --corpus one of PubMed, StatPearls, Textbooks, Wikipedia, MedText, MedCorp, sample, or a folder"


def check_corpus(config: Any) -> list[Check]:
    corpus, err = corpus_of(config)
    if err is not None:
        return [err]
    checks = []
    fix = _download_fix(config.corpus_name, config.db_dir)
    for src in corpus.sources:
        files = list(src.chunk_files)
        pointers = [p for p in files if is_lfs_pointer(p)]
        size = sum(p.stat().st_size for p in files)
        where = files[0].parent if files else src.name
        if pointers:
            checks.append(Check(
                "corpus", FAIL, f"corpus {src.name}: {len(pointers)} of {len(files)} chunk files are git-lfs pointers",
                f"e.g. {pointers[0]} holds a pointer, not data (cloned with git, never `git lfs pull`ed)", fix))
            continue
        bad = _first_bad_line(files)
        if bad:
            checks.append(Check("corpus", FAIL, f"corpus {src.name}: chunk file is not MedRAG JSON lines", bad, fix))
            continue
        mismatch = changed_since_download(src)
        if mismatch:
            checks.append(Check("corpus", FAIL, f"corpus {src.name}: files differ from what was downloaded",
                                mismatch, fix))
            continue
        rows = stored_rows(src)
        if rows is None and size <= COUNT_LINES_MAX_BYTES:
            rows = sum(count_lines(p) for p in files)
        expected = KNOWN_ROWS.get(src.name)
        title = f"corpus {src.name}: {len(files)} chunk files, {gb(size)}, " + (
            f"{rows:,} snippets" if rows is not None else "snippets not counted yet (build the store)")
        if rows is not None and expected and rows != expected:
            checks.append(Check("corpus", WARN, title, f"MedRAG's {src.name} has {expected:,} snippets; this copy "
                                f"has {rows:,} (incomplete download, or another version) in {where}", fix))
        else:
            checks.append(Check("corpus", OK, title, str(where)))
    return checks


def _first_bad_line(files: list[Path]) -> str | None:
    """The first chunk file whose first line is not a JSON object with content(s)."""
    for p in files:
        with open(p, "rb") as f:
            line = f.readline().strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            return f"{p}: first line is not JSON ({e})"
        if not isinstance(obj, dict) or not ({"content", "contents"} & set(obj)):
            return f'{p}: first line has no "content"/"contents" field'
    return None


def check_store_and_indexes(config: Any) -> tuple[list[Check], list[Need], bool]:
    """Store and index lines, the memory each piece takes, and whether a test query can run without building."""
    corpus, err = corpus_of(config)
    if err is not None:
        return [], [], False
    checks: list[Check] = []
    needs_: list[Need] = []
    ready = True
    build = build_command(config)
    stores: list[DocStore] = []
    for src in corpus.sources:
        try:
            opened = DocStore.open(src, build=False)
        except MedretError as e:
            missing = not (src.store_dir / "manifest.json").exists()
            if missing and config.auto_build:
                checks.append(Check("store", WARN, f"document store of {src.name} not built yet",
                                    f"it will be built at {src.store_dir} on first use", build))
            else:
                checks.append(Check("store", FAIL, f"document store of {src.name} is "
                                    + ("missing" if missing else "stale or damaged"), str(e),
                                    build + ("" if missing else " --rebuild")))
            ready = False
            continue
        stores.append(opened)
        disk = sum(p.stat().st_size for p in src.store_dir.iterdir() if p.is_file())
        needs_.append(Need(f"document store {src.name}", disk, "host"))
        rows = ("each row checked against its checksum when read" if opened.checks_rows else
                "rows are not checked when read (built by an older medret: `--rebuild` adds per-row checksums; "
                "`medret doctor --deep` hashes docs.bin whole)")
        checks.append(Check("store", OK, f"document store of {src.name}: {len(opened):,} rows, matches the chunk files",
                            f"{src.store_dir} ({gb(disk)} on disk, read by row; {rows})"))
    if not ready:
        for s in stores:
            s.close()
        return checks, needs_, False
    store: DocStore | UnionStore = stores[0] if len(stores) == 1 else UnionStore(stores)
    try:
        parts = retriever_parts(config.retriever_name)
    except MedretError as e:
        checks.append(Check("index", FAIL, f"retriever {config.retriever_name!r} is unknown", str(e),
                            f"give --retriever {retriever_choices()} or a model folder"))
        store.close()
        return checks, needs_, False
    device = device_or_none(config)
    for part in parts:
        if part == "bm25":
            c, n, ok = _bm25_check(corpus, store, config, build)
        else:
            c, n, ok = _dense_checks(corpus, stores, part, config, build, device)
        checks += c
        needs_ += n
        ready = ready and ok
    store.close()
    return checks, needs_, ready


def device_or_none(config: Any) -> str | None:
    try:
        return resolve_device(config.device, config.gpu_id, config.allow_cpu_fallback)
    except MedretError:
        return None


def _bm25_check(corpus: Any, store: Any, config: Any, build: str) -> tuple[list[Check], list[Need], bool]:
    """The BM25 index as :func:`medret.index.locate.locate_bm25` (and so the searcher) sees it."""
    kind, folder, detail = locate_bm25(corpus, store, config.auto_build)
    name = corpus.display_name
    if kind == "build":
        return [Check("index", WARN, f"BM25 index of {name} not built yet",
                      f"it will be built at {folder} on first use", build)], [], False
    if kind == "missing":
        return [Check("index", FAIL, f"BM25 index of {name} is missing", str(folder), build)], [], False
    if kind == "damaged":
        return [Check("index", FAIL, f"BM25 index of {name} is damaged", detail, build + " --rebuild")], [], False
    if kind == "stale":
        return [Check("index", FAIL, f"BM25 index of {name} is stale: the corpus changed since it was built",
                      detail, build + " --rebuild")], [], False
    disk = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    return ([Check("index", OK, f"BM25 index of {name}: {len(store):,} rows, matches the corpus",
                   f"{folder} ({gb(disk)}, memory-mapped)")], [Need(f"BM25 {name}", disk, "host")], True)


def _dense_checks(corpus: Any, stores: list[Any], part: str, config: Any, build: str,
                  device: str | None) -> tuple[list[Check], list[Need], bool]:
    """Each source's dense index as :func:`medret.index.locate.locate_dense` finds it, opened (and so checked)
    by :func:`medret.index.dense_build.load_dense_index`, as the searcher opens it."""
    try:
        spec = spec_for(part, config)
        identity = encoder_identity(spec, config.doc_model, config.query_model, config.models_dir)
    except MedretError as e:
        return [Check("index", FAIL, f"dense retriever {part!r} cannot be configured", str(e),
                      f"give --like {like_choices()} or --pooling cls|mean for a local model folder")], \
            [], False
    except OSError as e:
        return [Check("index", FAIL, f"the model files of {part!r} cannot be read", str(e),
                      "check the model folder's path and permissions")], [], False
    checks, needs_, ready = [], [], True
    where = device or "cpu"
    for src, store in zip(corpus.sources, stores):
        kind, folder, _ = locate_dense(src, len(store), spec, identity, config)
        if kind in ("own", "copy"):
            try:
                ix = load_dense_index(folder, store, spec, mmap=True, corpus_name=corpus.display_name,
                                      identity=identity)
            except MedretError as e:
                checks.append(Check("index", FAIL, f"{spec.name} index of {src.name} does not match the corpus/model",
                                    str(e), build + " --rebuild"))
                ready = False
                continue
            nbytes = ix.memory_bytes()
            needs_.append(Need(f"{spec.name} index {src.name}", nbytes, where))
            checks.append(Check("index", OK, f"{spec.name} index of {src.name}: {ix.ntotal:,} vectors x {ix.dim} "
                                f"({ix.index_type}), matches the corpus and the model",
                                f"{folder} ({gb(nbytes)}); model {identity.doc.describe()}"))
        elif kind == "medrag":
            try:  # opened as the searcher opens it: every vector of its embeddings checked once (storage.vectors)
                open_medrag_index(folder, store, metric=spec.metric, cache_dir=Path(src.artifact_dir) / "index")
            except MedretError as e:
                checks.append(Check("index", FAIL, f"{spec.name} MedRAG index of {src.name} cannot be served", str(e),
                                    build + " --rebuild"))
                ready = False
                continue
            nbytes = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.suffix in (".npy", ".index"))
            needs_.append(Need(f"{spec.name} MedRAG index {src.name}", nbytes, where))
            checks.append(Check("index", OK, f"{spec.name} index of {src.name}: MedRAG's precomputed index",
                                f"{folder} ({gb(nbytes)})"))
        elif kind in ("build", "build_legacy"):
            aside = " (an index of medret's first layout, which did not record its model, is left aside)" \
                if kind == "build_legacy" else ""
            checks.append(Check("index", WARN, f"{spec.name} index of {src.name} not built yet",
                                f"{len(store):,} rows: it will be encoded at {folder} on first use{aside}", build))
            ready = False
        elif kind == "legacy":
            checks.append(Check("index", FAIL, f"{spec.name} index of {src.name} is in medret's first layout",
                                legacy_message(folder, identity, corpus.display_name, config),
                                build + " --adopt-legacy (only if it was built with this model), else --rebuild"))
            ready = False
        else:
            fetch = fetch_hint(src.name, spec.doc_model, config.db_dir)
            checks.append(Check("index", FAIL, f"{spec.name} index of {src.name} is missing",
                                f"looked for {folder} (and MedRAG's precomputed index)", build + " --device cuda:0"
                                + (f"; or MedRAG's precomputed embeddings: {fetch}" if fetch else "")))
            ready = False
    return checks, needs_, ready


def _host_available() -> int | None:
    try:
        return int(optional.psutil().virtual_memory().available)
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(needs_: list[Need], gpu_free: Callable[[int], int] | None = None,
                 host_free: Callable[[], int | None] | None = None) -> list[Check]:
    """Memory each piece will take against what is free: GPU pieces must fit, host pieces are memory-mapped."""
    if not needs_:
        return []
    out = []
    by_where: dict[str, list[Need]] = {}
    for n in needs_:
        by_where.setdefault(n.where, []).append(n)
    for where, items in by_where.items():
        total = sum(n.nbytes for n in items)
        parts = ", ".join(f"{n.what} {gb(n.nbytes)}" for n in items)
        if where.startswith("cuda"):
            idx = int(where.split(":", 1)[1]) if ":" in where else 0
            try:
                free = gpu_free(idx) if gpu_free else _cuda_free(idx)
            except Exception as e:  # noqa: BLE001
                out.append(Check("memory", WARN, f"{where}: free memory unknown ({e})", parts))
                continue
            title = f"{where}: needs {gb(total)}, {gb(free)} free"
            if total > free:
                out.append(Check("memory", FAIL, title + ": will not fit", parts,
                                 "free the GPU (other processes: nvidia-smi), pick another with --gpu-id, or build a "
                                 "smaller index (`--index-type ivfpq` / hnsw, fp16)"))
            elif total > MEMORY_WARN_FRACTION * free:
                out.append(Check("memory", WARN, title + ": little room left for the model and batches", parts,
                                 "pick an emptier GPU or a smaller index"))
            else:
                out.append(Check("memory", OK, title, parts))
        else:
            host = host_free() if host_free else _host_available()
            title = f"host memory: {gb(total)} memory-mapped" + (f", {gb(host)} available" if host else "")
            if host is not None and total > host:
                out.append(Check("memory", WARN, title + ": pages will be read from disk", parts,
                                 "fine for BM25 and the store on fast disks; for speed use a node with more RAM"))
            else:
                out.append(Check("memory", OK, title, parts))
    return out


def _cuda_free(idx: int) -> int:
    return int(optional.torch().cuda.mem_get_info(idx)[0])
