"""Exact GPU search: plain chunked matmul + topk vs block-max selection vs faiss-GPU, fp16, at several corpus sizes.

Run on a GPU machine (one prepared run, ~5 minutes on an H200 for 1M/10M/54M):

    python benchmarks/gpu_search.py --sizes 1M,10M,54M --batches 1,512 --out "$OUT"

For each size N the (N × 768) fp16 matrix is generated on the device in chunks from per-chunk seeds (clustered
Gaussian vectors, like sentence embeddings: 4,096 centres + noise); queries are noisy copies of random rows.
Each method is timed with CUDA synchronisation (median of --repeats after --warmup runs):

* ``matmul only``: the chunked fp16 matmuls with no selection (a floor for any matmul-based method);
* ``dense.exact_search``: medret.index.exact.exact_search (chunked matmul + torch.topk per chunk + merge);
* ``plain topk``: the same with torch.topk straight on fp16 scores, as the issue's 255 ms baseline;
* ``gpu_topk blockmax``: medret.index.gpu_topk.exact_topk (block maxima → top blocks → exact top-k, fp32 rescoring);
* ``faiss GpuIndexFlatIP fp16``: when faiss has GPU support and the matrix fits twice.

Recall@k of every method is measured against a float32 exact reference over the *float32* vectors (regenerated
from the same seeds, so the fp32 matrix never has to fit), on --ref-queries queries. Writes gpu_search.json and
gpu_search.md to --out (default $OUT, else ./gpu-search-out). Also runs on CPU with small sizes (--device cpu).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medret.index.gpu_topk import exact_topk  # noqa: E402

GEN_CHUNK = 1 << 20
CENTRES = 4096


def parse_n(text: str) -> int:
    t = text.strip().upper()
    mult = {"K": 1_000, "M": 1_000_000, "G": 1_000_000_000}.get(t[-1:], 1)
    return int(float(t[:-1] if t[-1:] in "KMG" else t) * mult)


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def centres(d: int, dev: torch.device) -> torch.Tensor:
    g = torch.Generator(device=dev).manual_seed(12345)
    return torch.randn(CENTRES, d, generator=g, device=dev)


def gen_chunk(i: int, rows: int, d: int, c: torch.Tensor, dev: torch.device) -> torch.Tensor:
    """float32 rows of chunk i (deterministic)."""
    g = torch.Generator(device=dev).manual_seed(1_000_003 * (i + 1))
    which = torch.randint(0, CENTRES, (rows,), generator=g, device=dev)
    return c[which] + 0.6 * torch.randn(rows, d, generator=g, device=dev)


def make_matrix(n: int, d: int, dev: torch.device) -> torch.Tensor:
    c = centres(d, dev)
    emb = torch.empty((n, d), dtype=torch.float16, device=dev)
    for i, s in enumerate(range(0, n, GEN_CHUNK)):
        e = min(n, s + GEN_CHUNK)
        emb[s:e] = gen_chunk(i, e - s, d, c, dev).half()
    return emb


def make_queries(n: int, count: int, d: int, dev: torch.device) -> torch.Tensor:
    c = centres(d, dev)
    g = torch.Generator(device=dev).manual_seed(777)
    rows = torch.randint(0, n, (count,), generator=g, device=dev)
    out = torch.empty((count, d), device=dev)
    rl = rows.tolist()
    for ci in sorted({r // GEN_CHUNK for r in rl}):
        block = gen_chunk(ci, min(GEN_CHUNK, n - ci * GEN_CHUNK), d, c, dev)
        for j, r in enumerate(rl):
            if r // GEN_CHUNK == ci:
                out[j] = block[r - ci * GEN_CHUNK]
    return out + 0.8 * torch.randn(count, d, generator=g, device=dev)


def fp32_reference(n: int, d: int, q: torch.Tensor, k: int, dev: torch.device) -> np.ndarray:
    """Exact top-k rows over the float32 vectors, regenerated chunk by chunk (ties: lowest row)."""
    c = centres(d, dev)
    best_s = torch.full((q.shape[0], k), -math.inf, device=dev)
    best_r = torch.full((q.shape[0], k), -1, dtype=torch.int64, device=dev)
    for i, s in enumerate(range(0, n, GEN_CHUNK)):
        e = min(n, s + GEN_CHUNK)
        sc = q.float() @ gen_chunk(i, e - s, d, c, dev).T
        ts, ti = torch.topk(sc, min(k, e - s), dim=1)
        cs, cr = torch.cat([best_s, ts], 1), torch.cat([best_r, ti + s], 1)
        best_s, pos = torch.topk(cs, k, dim=1)
        best_r = torch.gather(cr, 1, pos)
    return best_r.cpu().numpy()


def recall(rows: np.ndarray, ref: np.ndarray) -> float:
    k = ref.shape[1]
    return float(np.mean([len(set(a[:k]) & set(b)) / k for a, b in zip(rows, ref)]))


def matmul_only(emb: torch.Tensor, q: torch.Tensor, chunk: int) -> None:
    qc = q.to(emb.dtype)
    for s in range(0, emb.shape[0], chunk):
        _ = qc @ emb[s:s + chunk].T


def plain_topk(emb: torch.Tensor, q: torch.Tensor, k: int, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The straightforward baseline: fp16 matmul + torch.topk on every score, merged across chunks."""
    qc = q.to(emb.dtype)
    bs = torch.full((q.shape[0], k), -math.inf, device=emb.device)
    br = torch.full((q.shape[0], k), -1, dtype=torch.int64, device=emb.device)
    for s in range(0, emb.shape[0], chunk):
        ts, ti = torch.topk(qc @ emb[s:s + chunk].T, k, dim=1)
        cs, cr = torch.cat([bs, ts.float()], 1), torch.cat([br, ti + s], 1)
        bs, pos = torch.topk(cs, k, dim=1)
        br = torch.gather(cr, 1, pos)
    return bs, br


def timed(fn, dev: torch.device, warmup: int, repeats: int, budget_s: float) -> tuple[float, list[float], object]:
    out = None
    for _ in range(warmup):
        out = fn()
    sync(dev)
    times = []
    t_all = time.perf_counter()
    while len(times) < repeats and (not times or time.perf_counter() - t_all < budget_s):
        t = time.perf_counter()
        out = fn()
        sync(dev)
        times.append(time.perf_counter() - t)
    return float(np.median(times)), times, out


def faiss_gpu_index(emb: torch.Tensor, dev: torch.device):
    try:
        import faiss
    except ImportError:
        return None, "faiss not installed"
    if dev.type != "cuda" or not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
        return None, "faiss has no GPU support here (faiss-cpu)"
    free, _ = torch.cuda.mem_get_info(dev)
    if free < emb.numel() * 2 * 1.2:
        return None, "the matrix does not fit twice on the GPU (faiss keeps its own copy)"
    res = faiss.StandardGpuResources()
    cfg = faiss.GpuIndexFlatConfig()
    cfg.device = dev.index or 0
    cfg.useFloat16 = True
    index = faiss.GpuIndexFlatIP(res, emb.shape[1], cfg)
    for s in range(0, emb.shape[0], GEN_CHUNK):
        index.add(emb[s:s + GEN_CHUNK].float().cpu().numpy())
    return (index, res), ""


def run(args) -> dict:
    dev = torch.device(args.device)
    out = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "device": _device_name(dev), "torch": torch.__version__,
           "dim": args.dim, "k": args.k, "fp16": True, "rows": []}
    for n in [parse_n(s) for s in args.sizes.split(",")]:
        need = n * args.dim * 2
        if dev.type == "cuda":
            free, _ = torch.cuda.mem_get_info(dev)
            if need + (4 << 30) > free:
                out["rows"].append({"N": n, "skipped": f"needs {need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"})
                continue
        t = time.perf_counter()
        emb = make_matrix(n, args.dim, dev)
        sync(dev)
        gen_s = time.perf_counter() - t
        qref = make_queries(n, args.ref_queries, args.dim, dev)
        ref = fp32_reference(n, args.dim, qref, args.k, dev)
        faiss_index, faiss_why = (None, "disabled") if args.no_faiss else faiss_gpu_index(emb, dev)
        for b in [int(x) for x in args.batches.split(",")]:
            q = make_queries(n, b, args.dim, dev)
            if b >= args.ref_queries:
                q[: args.ref_queries] = qref
            qr = qref[: min(b, args.ref_queries)] if b < args.ref_queries else qref
            chunk = args.chunk_rows
            methods = _methods(emb, q, qr, args.k, chunk, args.block_rows, faiss_index)
            for name, (fn, rfn) in methods.items():
                if name in args.skip:
                    continue
                try:
                    med, times, _ = timed(fn, dev, args.warmup, args.repeats, args.budget_s)
                    rec = None
                    if rfn is not None:
                        res = rfn()
                        rows = res[1]
                        rows = rows.cpu().numpy() if isinstance(rows, torch.Tensor) else np.asarray(rows)
                        rec = recall(rows[: len(ref) if b >= args.ref_queries else b],
                                     ref[: len(ref) if b >= args.ref_queries else b])
                    row = {"N": n, "batch": b, "method": name, "median_ms": 1000 * med,
                           "min_ms": 1000 * min(times), "runs": len(times), "recall_at_k_vs_fp32": rec,
                           "gen_s": round(gen_s, 2)}
                except torch.cuda.OutOfMemoryError as e:  # type: ignore[attr-defined]
                    row = {"N": n, "batch": b, "method": name, "error": f"out of memory: {str(e)[:200]}"}
                    torch.cuda.empty_cache()
                out["rows"].append(row)
                print(json.dumps(row), flush=True)
            if faiss_index is None:
                out["rows"].append({"N": n, "batch": b, "method": "faiss GpuIndexFlatIP fp16", "skipped": faiss_why})
        del emb, faiss_index
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return out


def _methods(emb, q, qr, k, chunk, block_rows, faiss_index):
    """name -> (timed call, recall call on the reference queries or None)."""
    methods = {
        "matmul only": (lambda: matmul_only(emb, q, chunk), None),
        "plain topk (fp16)": (lambda: plain_topk(emb, q, k, chunk), lambda: plain_topk(emb, qr, k, chunk)),
        "dense.exact_search": (lambda: _dense(emb, q, k), lambda: _dense(emb, qr, k)),
        "gpu_topk blockmax": (lambda: exact_topk(emb, q, k, block_rows=block_rows),
                              lambda: exact_topk(emb, qr, k, block_rows=block_rows)),
    }
    if faiss_index is not None:
        idx = faiss_index[0]
        methods["faiss GpuIndexFlatIP fp16"] = (lambda: idx.search(q.cpu().numpy(), k),
                                                lambda: idx.search(qr.cpu().numpy(), k))
    return methods


def _dense(emb, q, k):
    from medret.index.exact import exact_search

    return exact_search(emb, q.float().cpu().numpy(), k, device=str(emb.device))


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"


def to_markdown(res: dict) -> str:
    lines = [f"gpu_search — {res['device']}, {res['date']}, dim {res['dim']}, top-{res['k']}, fp16 storage", "",
             "| N | batch | method | median ms | min ms | runs | recall@k vs fp32 |", "|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        if "median_ms" in r:
            rec = "-" if r["recall_at_k_vs_fp32"] is None else f"{r['recall_at_k_vs_fp32']:.4f}"
            lines.append(f"| {r['N']:,} | {r['batch']} | {r['method']} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | "
                         f"{r['runs']} | {rec} |")
        else:
            lines.append(f"| {r['N']:,} | {r.get('batch', '')} | {r.get('method', '')} | "
                         f"{r.get('skipped') or r.get('error')} | | | |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1M,10M,54M")
    ap.add_argument("--batches", default="1,512")
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--chunk-rows", type=int, default=1 << 20, help="rows per matmul in the plain baselines")
    ap.add_argument("--block-rows", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--budget-s", type=float, default=15.0, help="stop repeating one measurement after this long")
    ap.add_argument("--ref-queries", type=int, default=64)
    ap.add_argument("--no-faiss", action="store_true")
    ap.add_argument("--skip", default="", help="comma-separated method names to skip")
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu-search-out"))
    args = ap.parse_args(argv)
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    res = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_search.json").write_text(json.dumps(res, indent=2))
    (out / "gpu_search.md").write_text(to_markdown(res) + "\n")
    print(to_markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
