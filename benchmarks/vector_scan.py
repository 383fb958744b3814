"""What the one-time scan of stored vectors costs (issue 24 item 10), side by side with sha256 of the same file.

One ``.npy`` of ``--rows`` x ``--dim`` fp16 (MedCorp's files are 10,000 x 768; a bigger one measures throughput),
memory-mapped as the index opens it: the median-norm reference (4,096 sampled rows), the full scan
(:func:`medret.storage.vectors.scan`: finite, non-zero, norm within 100x), sha256 of the file, and the ``stat`` a
verified file costs at later opens. Best of ``--runs``, page cache warm.

    python benchmarks/vector_scan.py --workdir /tmp/medret-bench-scan --rows 200000 --dim 768
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import numpy as np
from timing import best_of  # benchmarks/timing.py (a script's folder is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="/tmp/medret-bench-scan")
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()

    from medret.storage.checksums import sha256_file
    from medret.storage.vectors import reference_norm, scan

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"emb_{args.rows}x{args.dim}.npy"
    if not path.is_file():
        rng = np.random.default_rng(0)
        np.save(path, rng.standard_normal((args.rows, args.dim)).astype(np.float16))
    arr = np.load(path, mmap_mode="r")
    mib = path.stat().st_size / 2**20
    ref = reference_norm([arr])
    assert scan(arr, path.name, ref) is None
    t_ref = best_of(lambda: reference_norm([arr]), args.runs)
    t_scan = best_of(lambda: scan(arr, path.name, ref), args.runs)
    t_sha = best_of(lambda: sha256_file(path), args.runs)
    t_stat = best_of(lambda: os.stat(path), args.runs)
    print(f"machine: {platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, numpy "
          f"{np.__version__}; {args.rows:,} x {args.dim} fp16 = {mib:.0f} MiB; best of {args.runs}")
    print("| step | time | MiB/s | ratio to sha256 |")
    print("|---|---:|---:|---:|")
    for what, t in (("median-norm reference (4,096 rows)", t_ref), ("full scan", t_scan), ("sha256 of the file", t_sha),
                    ("stat (a verified file at later opens)", t_stat)):
        rate = f"{mib / t:.0f}" if what in ("full scan", "sha256 of the file") else ""
        print(f"| {what} | {t * 1e3:.4g} ms | {rate} | {t / t_sha:.3g} |")


if __name__ == "__main__":
    main()
