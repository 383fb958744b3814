"""What checking each row read against its checksum costs (issue 24 item 17), side by side in one run.

For each store: ``DocStore.get`` of random rows in batches of ``--batch`` (512 queries x top-5 = 2,560 rows, what
one Search-R1 step looks up), with the per-row checksums (``row_sums.npy``, one 8-byte BLAKE2b per row read) and
without them (the same store object with its checksums detached), alternated, best of ``--runs``; then a read of
every row both ways. Stores: the shipped sample corpus, PubMedQA's 3,358 context snippets (``--pubmedqa``) and a
synthetic corpus of ``--snippets`` rows (``medret.bench.synth``).

    python benchmarks/store_row_checks.py --workdir /tmp/medret-bench-rows \
        --pubmedqa shared/datasets/pubmedqa/ori_pqal.json --snippets 200000
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


def measure(name: str, folder: Path, batch: int, runs: int) -> list[str]:
    from medret.corpus.registry import resolve_corpus
    from medret.corpus.store import DocStore

    source = resolve_corpus(str(folder), None).sources[0]
    store = DocStore.open(source, build=True)
    n = len(store)
    sums = store._sums
    assert sums is not None, "the store has no row checksums (built by an older medret?)"
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, n, batch) for _ in range(20)]

    def lookups():
        for rows in batches:
            store.get(rows)

    def everything():
        for s in range(0, n, 4096):
            store.get(np.arange(s, min(n, s + 4096)))

    out = []
    for what, fn, count in (("random batches", lookups, batch * len(batches)), ("every row", everything, n)):
        checked = unchecked = float("inf")
        for _ in range(runs):  # alternated, so that both see the same load
            store._sums = sums
            checked = min(checked, best_of(fn, 1))
            store._sums = None
            unchecked = min(unchecked, best_of(fn, 1))
        store._sums = sums
        per = (unchecked / count * 1e6, checked / count * 1e6)
        out.append(f"| {name} ({n:,} rows) | {what} | {per[0]:.2f} µs | {per[1]:.2f} µs | {checked / unchecked:.2f} |")
    store.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="/tmp/medret-bench-rows")
    ap.add_argument("--pubmedqa", default=None, help="PubMedQA's ori_pqal.json (its contexts become a store)")
    ap.add_argument("--snippets", type=int, default=0, help="also a synthetic corpus of this many snippets")
    ap.add_argument("--batch", type=int, default=2560)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()

    from medret.corpus.registry import resolve_corpus

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MEDRET_CACHE", str(work / "cache"))
    stores = [("sample", Path(resolve_corpus("sample", None).sources[0].chunk_files[0]).parents[1])]
    if args.pubmedqa:
        from medret.eval import pubmedqa

        folder = work / "pubmedqa"
        if not (folder / "chunk").is_dir():
            pubmedqa.write_corpus(pubmedqa.load(args.pubmedqa), folder)
        stores.append(("PubMedQA", folder))
    if args.snippets:
        from medret.bench.synth import write_synthetic_corpus

        folder = work / "synthetic"
        if not (folder / "chunk").is_dir():
            write_synthetic_corpus(folder, args.snippets, lines_per_file=2_000)
        stores.append(("synthetic", folder))
    print(f"machine: {platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
          f"best of {args.runs}, batches of {args.batch} rows, page cache warm")
    print("| store | reads | per row, unchecked | per row, checked | ratio |")
    print("|---|---|---:|---:|---:|")
    for name, folder in stores:
        for line in measure(name, folder, args.batch, args.runs):
            print(line)


if __name__ == "__main__":
    main()
