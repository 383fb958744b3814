"""Recall of HNSW and IVF-PQ against the exact flat index, side by side in one run, with their memory and speed.

    python benchmarks/ann_recall.py --n 100000 --dim 768 --queries 512 [--metric ip|l2] [--out RESULTS.md]

``ivfpq+rerank`` is the ``ivfpq`` index (built once, same build time) with medret's exact re-rank: faiss returns
``k · rerank`` candidates (default 10) and they are re-scored from the vectors stored as fp16 ``.npy``,
memory-mapped as in a built index; its size column is the faiss index alone (the fp16 file is on disk, read
``k · rerank`` rows per query). Plain ``ivfpq`` runs with ``rerank=0``.

Data: clustered Gaussian vectors (``--clusters`` centres, unit-normalised for ``ip`` as e5 does; MedCPT's raw
inner product is closer to ``l2`` on unnormalised vectors), queries drawn near the same centres. Index parameters
are medret's defaults for the size (``medret.index.faiss_ops.factory_string`` / ``default_search_params``).
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medret.index.dense import DEFAULT_RERANK, DenseIndex


def data(n: int, dim: int, nq: int, clusters: int, metric: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32) * 3
    x = centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, dim)).astype(np.float32)
    q = centres[rng.integers(0, clusters, nq)] + rng.standard_normal((nq, dim)).astype(np.float32)
    if metric == "ip":
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
    return x, q


def recall(rows: np.ndarray, ref: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(rows, ref)]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--queries", type=int, default=512)
    ap.add_argument("--clusters", type=int, default=256)
    ap.add_argument("--metric", choices=["ip", "l2"], default="ip")
    ap.add_argument("--types", default="flat,hnsw,ivfpq,ivfpq+rerank")
    ap.add_argument("--rerank", type=int, default=DEFAULT_RERANK, help="candidate factor of the +rerank rows")
    ap.add_argument("--out", default=None, help="append a markdown section to this file")
    a = ap.parse_args(argv)
    x, q = data(a.n, a.dim, a.queries, a.clusters, a.metric)
    rows_out = []
    ref = None
    built: dict[str, tuple[DenseIndex, float]] = {}
    tmp = tempfile.TemporaryDirectory(prefix="ann_recall_")
    for t in a.types.split(","):
        base = t.removesuffix("+rerank")
        if base not in built:
            t0 = time.perf_counter()
            built[base] = (DenseIndex.build(x, metric=a.metric, index_type=base, keep_vectors=False),
                           time.perf_counter() - t0)
        ix, build_s = built[base]
        if t.endswith("+rerank"):
            if ix.faiss_index is None or not ix.lossy:
                print(f"skipping {t}: {base} is not a lossy faiss index, re-rank does not apply", flush=True)
                continue
            emb = Path(tmp.name) / "emb_000000.npy"
            if not emb.exists():
                np.save(emb, x.astype(np.float16))
            ix = DenseIndex(metric=ix.metric, dim=ix.dim, index_type=t, faiss_index=ix.faiss_index,
                            search_params={**ix.search_params, "rerank": a.rerank},
                            rerank_vectors=[np.load(emb, mmap_mode="r")])
        elif ix.faiss_index is not None:
            ix.set_search_params(rerank=0)
        ix.search(q[:8], 10)  # warm-up
        t0 = time.perf_counter()
        _, rows = ix.search(q, 10)
        search_ms = (time.perf_counter() - t0) * 1e3
        if ref is None:
            ref = rows
        if ix.faiss_index is not None:
            import faiss

            mem = faiss.serialize_index(ix.faiss_index).size  # what the index occupies, graph / codes included
        else:
            mem = ix.memory_bytes()
        rows_out.append({"type": t, "build_s": build_s, "search_ms": search_ms, "mem_mb": mem / 2**20,
                         "r5": recall(rows, ref, 5), "r10": recall(rows, ref, 10)})
        print(rows_out[-1], flush=True)
    lines = [f"\n### ANN recall against flat ({time.strftime('%Y-%m-%d')}, issue 7)\n",
             f"- machine: {platform.machine()} {platform.processor() or ''}, 2 cores (this project's CPU machine), "
             "no GPU",
             f"- command: `python benchmarks/ann_recall.py {' '.join(argv or sys.argv[1:])}`",
             f"- data: {a.n:,} x {a.dim} clustered vectors ({a.clusters} centres), {a.queries} queries, metric "
             f"{a.metric}"
             + (" (unit-normalised)" if a.metric == "ip" else ""), "",
             f"| index | build (s) | search {a.queries} queries (ms) | size (MiB) | recall@5 vs flat "
             "| recall@10 vs flat |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows_out:
        lines.append(f"| {r['type']} | {r['build_s']:.1f} | {r['search_ms']:.0f} | {r['mem_mb']:.0f} | {r['r5']:.3f} | "
                     f"{r['r10']:.3f} |")
    if any(r["type"].endswith("+rerank") for r in rows_out):
        lines += ["", f"`+rerank`: the same faiss index, {a.rerank}·k candidates re-scored exactly from the fp16 "
                  f"vectors ({a.n * a.dim * 2 / 2**20:.0f} MiB on disk, memory-mapped; {10 * a.rerank} rows of "
                  f"{a.dim * 2} bytes read per query at k=10)."]
    text = "\n".join(lines) + "\n"
    tmp.cleanup()
    print(text)
    if a.out:
        with open(a.out, "a") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
