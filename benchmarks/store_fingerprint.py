"""What the content fingerprints cost (issue 13 items 3 and 4), side by side in one run.

* store build (which now hashes every chunk file as it reads it) against hashing the same files alone: the share of
  the build spent in sha256;
* the check at every open: one ``stat`` per chunk file (now) against the former head/tail fingerprint (128 KiB read
  per file) and against hashing every file (what a copied corpus costs once);
* writing one 10,000 x 768 fp16 embedding chunk with its sha256 computed on the way against plain ``np.save``.

    python benchmarks/store_fingerprint.py --workdir /tmp/medret-bench-fp --snippets 200000 --out benchmarks/RESULTS.md
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from timing import best_of  # benchmarks/timing.py (a script's folder is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="/tmp/medret-bench-fp")
    ap.add_argument("--snippets", type=int, default=200_000)
    ap.add_argument("--lines-per-file", type=int, default=2_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", default=None, help="append the result section to this markdown file")
    args = ap.parse_args()

    from medret.bench.synth import write_synthetic_corpus
    from medret.corpus import fingerprint as fp
    from medret.corpus.registry import resolve_corpus
    from medret.corpus.store import DocStore, build_store
    from medret.storage.checksums import HashingWriter

    work = Path(args.workdir)
    folder = work / "corpus"
    if not (folder / "chunk").is_dir():
        write_synthetic_corpus(folder, args.snippets, lines_per_file=args.lines_per_file)
    source = resolve_corpus(str(folder), None).sources[0]
    files = list(source.chunk_files)
    total = sum(p.stat().st_size for p in files)

    build_s = best_of(lambda: build_store(source), args.runs)  # includes hashing every chunk file as it is read
    hash_s = best_of(lambda: fp.hash_records(files), args.runs)
    DocStore.open(source).close()
    open_s = best_of(lambda: DocStore.open(source).close(), args.runs * 3)
    stat_s = best_of(lambda: [fp.stat_record(p) for p in files], args.runs * 3)
    legacy_s = best_of(lambda: fp.legacy_fingerprint(files), args.runs * 3)

    arr = np.random.default_rng(0).standard_normal((10_000, 768)).astype(np.float16)
    tmp = work / "emb.npy"

    def plain():
        with open(tmp, "wb") as f:
            np.save(f, arr, allow_pickle=False)

    def hashed():
        with open(tmp, "wb") as f:
            np.save(HashingWriter(f), arr, allow_pickle=False)

    plain_s = statistics.median(best_of(plain, 1) for _ in range(args.runs * 3))
    hashed_s = statistics.median(best_of(hashed, 1) for _ in range(args.runs * 3))
    tmp.unlink()

    load = os.getloadavg()[0]
    mib = total / 2**20
    lines = [
        "\n## Content fingerprints: cost of hashing chunk files and embeddings "
        f"({time.strftime('%Y-%m-%d')}, issue 13)\n",
        f"- machine: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), Python "
        f"{platform.python_version()}; 1-min load average at the end: {load:.2f}",
        f"- command: `python benchmarks/store_fingerprint.py --workdir {args.workdir} --snippets {args.snippets} "
        f"--lines-per-file {args.lines_per_file} --runs {args.runs}`",
        f"- corpus: {args.snippets:,} synthetic snippets (medret.bench.synth) in {len(files)} chunk files, "
        f"{mib:,.1f} MiB; best of {args.runs} runs (opens: of {args.runs * 3}); page cache warm\n",
        "| what | time | per MiB / per file | ratio |",
        "|---|---:|---:|---:|",
        f"| store build (parse, write, hash each chunk file while reading it) | {build_s:.2f} s | "
        f"{build_s / mib * 1e3:.2f} ms/MiB | 1 |",
        f"| sha256 of the same chunk files alone | {hash_s:.2f} s | {hash_s / mib * 1e3:.2f} ms/MiB | "
        f"{hash_s / build_s:.2f} of the build |",
        f"| open: `DocStore.open` (stat check of every chunk file + rows 0 and n-1) | {open_s * 1e3:.2f} ms | "
        f"{open_s / len(files) * 1e6:.1f} µs/file | 1 |",
        f"| stat of every chunk file alone | {stat_s * 1e3:.2f} ms | {stat_s / len(files) * 1e6:.1f} µs/file | "
        f"{stat_s / open_s:.2f} |",
        f"| former head/tail fingerprint (128 KiB read per file) | {legacy_s * 1e3:.2f} ms | "
        f"{legacy_s / len(files) * 1e6:.1f} µs/file | {legacy_s / open_s:.2f} |",
        f"| hash every chunk file (a copied corpus, once) | {hash_s * 1e3:.0f} ms | | {hash_s / open_s:.0f} |",
        f"| np.save of a 10,000 x 768 fp16 chunk | {plain_s * 1e3:.1f} ms | | 1 |",
        f"| the same, hashing it on the way (HashingWriter) | {hashed_s * 1e3:.1f} ms | | "
        f"{hashed_s / plain_s:.2f} |",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text)
    shutil.rmtree(source.artifact_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
