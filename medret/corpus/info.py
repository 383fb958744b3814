"""`medret corpus info`: sizes, which indexes exist, and what each takes in memory."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from medret.corpus.registry import KNOWN_ROWS, resolve_corpus


def _du(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def corpus_info(name: str, db_dir: str | None, cache_dir: str | None = None) -> dict[str, Any]:
    corpus = resolve_corpus(name, db_dir, cache_dir)
    sources = []
    for s in corpus.sources:
        manifest = s.store_dir / "manifest.json"
        rows = orjson.loads(manifest.read_bytes())["rows"] if manifest.exists() else None
        indexes = []
        for d in sorted((s.artifact_dir / "index").glob("*/manifest.json")):
            m = orjson.loads(d.read_bytes())
            doc = (m.get("encoder") or {}).get("doc_model") or {}  # medret.index.identity's record
            indexes.append({"kind": "medret-dense", "name": d.parent.name, "path": str(d.parent),
                            "disk_bytes": _du(d.parent), "rows": m.get("count"), "dim": m.get("dim"),
                            "dtype": m.get("dtype"), "index_type": m.get("index_type"),
                            "model": doc.get("location") or m.get("doc_model"), "revision": doc.get("revision")})
        for f in sorted((s.root / "index").rglob("faiss.index")) if (s.root / "index").is_dir() else []:
            indexes.append({"kind": "medrag-faiss", "name": str(f.parent.relative_to(s.root / "index")),
                            "path": str(f.parent), "disk_bytes": f.stat().st_size})
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
            lines.append(f"    index {ix['kind']} {ix['name']}: {human(ix['disk_bytes'])}{model} ({ix['path']})")
    b = info["bm25"]
    lines.append(f"  BM25 over the whole corpus: {'built, ' + human(b['disk_bytes']) if b['built'] else 'not built'}"
                 f" ({b['path']}; memory-mapped when served)")
    if info["flat_768_bytes"]:
        f = info["flat_768_bytes"]
        lines.append(f"  a flat 768-d dense index takes {human(f['fp32'])} in fp32, {human(f['fp16'])} in fp16 "
                     f"(GPU or RAM); see `medret plan` for HNSW / IVF-PQ")
    return "\n".join(lines)
