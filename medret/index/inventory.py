"""`medret corpus info`: sizes, which indexes exist, and what each takes in memory.

The dense indexes listed are those :func:`medret.index.locate.dense_indexes` finds, by the rule the searchers use
(medret's own, and MedRAG's precomputed embeddings or faiss index), so this report and a search never disagree."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from medret.corpus.registry import KNOWN_ROWS, resolve_corpus
from medret.index.locate import Location, dense_indexes
from medret.index.manifest import read_manifest
from medret.index.medrag import FAISS_NAME, embedding_files, has_medrag_embeddings, has_medrag_faiss


def _du(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def _describe(ix: Location, source_root: Path) -> dict[str, Any]:
    if ix.kind != "medrag":
        m = read_manifest(ix.folder) or {}
        doc = (m.get("encoder") or {}).get("doc_model") or {}  # medret.index.identity's record
        return {"kind": "medret-dense", "name": ix.folder.name, "path": str(ix.folder),
                "disk_bytes": _du(ix.folder), "rows": m.get("count"), "dim": m.get("dim"),
                "dtype": m.get("dtype"), "index_type": m.get("index_type"),
                "model": doc.get("location") or m.get("doc_model"), "revision": doc.get("revision")}
    forms = (["embeddings"] if has_medrag_embeddings(ix.folder) else []) + (
        ["faiss"] if has_medrag_faiss(ix.folder) else [])
    files = embedding_files(ix.folder) if "embeddings" in forms else []
    faiss_bytes = (ix.folder / FAISS_NAME).stat().st_size if "faiss" in forms else 0
    return {"kind": "medrag-" + "+".join(forms), "name": str(ix.folder.relative_to(source_root / "index")),
            "path": str(ix.folder), "disk_bytes": sum(f.stat().st_size for f in files) + faiss_bytes,
            "embedding_files": len(files), "retrievers": ix.detail}


def corpus_info(name: str, db_dir: str | None, cache_dir: str | None = None) -> dict[str, Any]:
    corpus = resolve_corpus(name, db_dir, cache_dir)
    sources = []
    for s in corpus.sources:
        manifest = s.store_dir / "manifest.json"
        rows = orjson.loads(manifest.read_bytes())["rows"] if manifest.exists() else None
        indexes = [_describe(ix, s.root) for ix in dense_indexes(s)]
        sources.append({
            "name": s.name, "root": str(s.root), "chunk_files": len(s.chunk_files),
            "chunk_bytes": sum(p.stat().st_size for p in s.chunk_files), "rows": rows,
            "expected_rows": KNOWN_ROWS.get(s.name), "store_bytes": _du(s.store_dir) if rows is not None else None,
            "indexes": indexes})
    bm25 = corpus.bm25_dir
    rows = [s["rows"] or s["expected_rows"] for s in sources]
    n = sum(r for r in rows if r) if all(rows) else None
    return {
        "corpus": corpus.display_name, "sources": sources, "rows": n,
        "bm25": {"path": str(bm25), "built": (bm25 / "manifest.json").exists(), "disk_bytes": _du(bm25)},
        # flat dense index of a 768-d encoder (MedCPT, Contriever, SPECTER, e5-base): rows × 768 × bytes
        "flat_768_bytes": {"fp32": n * 768 * 4, "fp16": n * 768 * 2} if n else None,
    }


def human(size: float | None) -> str:
    if size is None:
        return "?"
    n = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def format_info(info: dict[str, Any]) -> str:
    lines = [f"corpus {info['corpus']}: {info['rows'] if info['rows'] is not None else '?'} snippets"]
    for s in info["sources"]:
        rows = s["rows"] if s["rows"] is not None else f"store not built (MedRAG lists {s['expected_rows'] or '?'})"
        lines.append(f"  source {s['name']}: {s['chunk_files']} chunk files, {human(s['chunk_bytes'])}, rows: {rows}"
                     + (f", store {human(s['store_bytes'])} on disk (read by row, not loaded)"
                        if s["store_bytes"] else ""))
        for ix in s["indexes"]:
            model = f", model {ix['model']}" if ix.get("model") else ""
            serves = f", serves {ix['retrievers']}" if ix.get("retrievers") else ""
            lines.append(f"    index {ix['kind']} {ix['name']}: {human(ix['disk_bytes'])}{model}{serves} "
                         f"({ix['path']})")
    b = info["bm25"]
    lines.append(f"  BM25 over the whole corpus: {'built, ' + human(b['disk_bytes']) if b['built'] else 'not built'}"
                 f" ({b['path']}; memory-mapped when served)")
    if info["flat_768_bytes"]:
        f = info["flat_768_bytes"]
        lines.append(f"  a flat 768-d dense index takes {human(f['fp32'])} in fp32, {human(f['fp16'])} in fp16 "
                     f"(GPU or RAM); see `medret plan` for HNSW / IVF-PQ")
    return "\n".join(lines)
