"""Scale run: a synthetic MedRAG-layout corpus of N snippets (default 5M): start-up to first answer and RSS.

    python benchmarks/scale_5m.py --n 5000000 --work /path/with/15GB --model TINY_BERT_DIR [--out DIR]

Steps (each timed): write the synthetic chunk files (30,000 lines each, like MedRAG's PubMed); build the
memory-mapped document store; build a flat dense index for the model (see below); then, in fresh child processes:

* ``store``: open the store and look up 100,000 random rows; RSS before/after, split into anonymous memory
  (``RssAnon``: what the process allocated) and file-backed pages (``RssFile``: mapped pages of docs.bin that the
  kernel can drop at any time), plus peak RSS;
* ``first answer``: ``Retriever`` construction + one query end to end (query encoder, exact search over the
  memory-mapped embeddings, store lookup, Search-R1 JSON), measured from process start.

The document vectors of the index are **random placeholders** written through the normal index builder
(``build_dense_index`` with an encoder that returns seeded random vectors): encoding 5M snippets with a real model
takes hours on 2 CPU cores, and neither start-up nor memory depends on the vectors' values. Queries are encoded
by the real (random-weight) model.

With ``--bm25``: build the BM25 index in a child process (medret's streaming builder; wall time and the child's
peak RSS), then in fresh processes the first BM25 answer from process start, and the latency of batches of 512
distinct window queries (top-5) in one process.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))


STORE_PROBE = r"""
import json, resource, sys, time
import numpy as np
def status():
    out = {}
    for line in open('/proc/self/status'):
        k, _, v = line.partition(':')
        if k in ('VmRSS', 'RssAnon', 'RssFile', 'VmHWM'):
            out[k] = int(v.split()[0]) * 1024
    return out
from medret.corpus.registry import resolve_corpus
from medret.corpus.store import open_corpus_store
before = status()
t = time.perf_counter()
store = open_corpus_store(resolve_corpus(sys.argv[1], None), build=False)
open_s = time.perf_counter() - t
opened = status()
rng = np.random.default_rng(0)
rows = rng.integers(0, len(store), int(sys.argv[2]))
t = time.perf_counter()
n = 0
for s in range(0, len(rows), 1000):
    n += len(store.get(rows[s:s + 1000]))
lookup_s = time.perf_counter() - t
after = status()
print(json.dumps({"rows": len(store), "open_s": open_s, "lookups": n, "lookup_s": lookup_s,
                  "before": before, "opened": opened, "after": after}))
"""


BM25_BUILD = r"""
import sys, time
from medret.corpus.registry import resolve_corpus
from medret.corpus.store import open_corpus_store
from medret.index.bm25 import build_bm25
corpus = resolve_corpus(sys.argv[1], None)
store = open_corpus_store(corpus, build=False)
t = time.perf_counter()
build_bm25(store, corpus.artifact_dir / "bm25")
print(time.perf_counter() - t)
for line in open('/proc/self/status'):
    if line.startswith('VmHWM:'):
        print(int(line.split()[1]) * 1024)
"""

BM25_BATCHES = r"""
import json, statistics, sys, time
from medret import get_retriever
from medret.bench.harness import queries_from_corpus
folder, runs = sys.argv[1], int(sys.argv[2])
pool = queries_from_corpus(folder, None, 512 * (runs + 1), seed=5)
r = get_retriever(corpus_name=folder, retriever_name="BM25", auto_build=False)
r.retrieve(pool[:512], 5)  # warm-up batch
lat = []
for i in range(1, runs + 1):
    t = time.perf_counter()
    r.retrieve(pool[512 * i:512 * (i + 1)], 5)
    lat.append(time.perf_counter() - t)
scorer = r.transport.engine.searchers[0].index._scorer
print(json.dumps({"latencies_s": lat, "p50_s": statistics.median(lat), "paths": scorer.paths}))
"""


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5_000_000)
    ap.add_argument("--work", required=True, help="folder for the corpus, store and index (~3 KB per snippet)")
    ap.add_argument("--model", required=True, help="a local BERT folder (e.g. from benchmarks/make_random_bert.py)")
    ap.add_argument("--lookups", type=int, default=100_000)
    ap.add_argument("--fp16", action="store_true", help="store the placeholder vectors in fp16")
    ap.add_argument("--bm25", action="store_true", help="also build and time BM25 over the corpus")
    ap.add_argument("--bm25-runs", type=int, default=5, help="timed batches of 512 queries")
    ap.add_argument("--out", default=os.environ.get("OUT", "scale-out"))
    a = ap.parse_args(argv)

    from placeholder_index import build_placeholder_index

    from medret.bench.synth import write_synthetic_corpus
    from medret.corpus.registry import resolve_corpus
    from medret.corpus.store import open_corpus_store

    folder = Path(a.work) / f"synthetic-{a.n}"
    res: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "n": a.n, "cpus": os.cpu_count()}
    t = time.perf_counter()
    write_synthetic_corpus(folder, a.n, progress=True)
    res["generate_s"] = time.perf_counter() - t
    res["chunk_bytes"] = sum(p.stat().st_size for p in (folder / "chunk").glob("*.jsonl"))
    corpus = resolve_corpus(str(folder), None)
    t = time.perf_counter()
    store = open_corpus_store(corpus, build=True, progress=True)
    res["store_build_or_open_s"] = time.perf_counter() - t
    res["store_bytes"] = sum(p.stat().st_size for p in corpus.sources[0].store_dir.iterdir())
    store.close()
    t = time.perf_counter()
    out_dir = build_placeholder_index(str(folder), a.model, "cls", a.fp16)
    res["index_build_s"] = time.perf_counter() - t
    res["index_bytes"] = sum(p.stat().st_size for p in out_dir.iterdir())

    p = subprocess.run([sys.executable, "-c", STORE_PROBE, str(folder), str(a.lookups)], capture_output=True,
                       text=True, env=child_env())
    if p.returncode:
        raise SystemExit(p.stderr)
    res["store_probe"] = json.loads(p.stdout.strip().splitlines()[-1])

    kwargs = {"corpus_name": str(folder), "retriever_name": a.model, "pooling": "cls", "auto_build": False,
              "device": "cpu"}
    runs = []
    for _ in range(3):
        t0 = time.time()
        p = subprocess.run([sys.executable, "-m", "medret.bench.probe", json.dumps(kwargs),
                            "sepsis mortality in elderly patients", "5"], capture_output=True, text=True,
                           env=child_env())
        if p.returncode:
            raise SystemExit(p.stderr)
        r = json.loads(p.stdout.strip().splitlines()[-1])
        r["startup_s"] = r.pop("answered_at") - t0
        runs.append(r)
    res["first_answer"] = runs
    if a.bm25:
        res["bm25"] = bm25_steps(folder, a.bm25_runs)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale.json").write_text(json.dumps(res, indent=2))
    sp = res["store_probe"]
    mb = 2**20
    print(json.dumps(res, indent=2))
    print(f"\nN={a.n:,}: store open {sp['open_s']:.3f}s; {sp['lookups']:,} random lookups {sp['lookup_s']:.2f}s; "
          f"RSS growth {(sp['after']['VmRSS'] - sp['before']['VmRSS']) / mb:.0f} MiB (anon "
          f"{(sp['after']['RssAnon'] - sp['before']['RssAnon']) / mb:.0f} MiB, file-backed "
          f"{(sp['after']['RssFile'] - sp['before']['RssFile']) / mb:.0f} MiB); first answer from process start "
          f"{min(r['startup_s'] for r in runs):.2f}-{max(r['startup_s'] for r in runs):.2f}s, peak RSS "
          f"{max(r['peak_rss_bytes'] for r in runs) / mb:.0f} MiB")
    if a.bm25:
        b = res["bm25"]
        print(f"BM25: build {b['build_s']:.0f}s (peak RSS {b['build_peak_rss_bytes'] / mb:.0f} MiB, index "
              f"{b['index_bytes'] / mb:.0f} MiB); first answer from process start "
              f"{min(r['startup_s'] for r in b['first_answer']):.2f}-"
              f"{max(r['startup_s'] for r in b['first_answer']):.2f}s; batch 512 p50 {b['batches']['p50_s']:.2f}s "
              f"({512 / b['batches']['p50_s']:.0f} queries/s); ways {b['batches']['paths']}")
    return 0


def _run_json(args: list[str]) -> dict:
    p = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=child_env())
    if p.returncode:
        raise SystemExit(p.stderr)
    return json.loads(p.stdout.strip().splitlines()[-1])


def bm25_steps(folder: Path, runs: int) -> dict:
    from medret.corpus.registry import resolve_corpus

    out: dict = {}
    index_dir = resolve_corpus(str(folder), None).artifact_dir / "bm25"
    if not (index_dir / "manifest.json").exists():
        p = subprocess.run([sys.executable, "-c", BM25_BUILD, str(folder)], capture_output=True, text=True,
                           env=child_env())
        if p.returncode:
            raise SystemExit(p.stderr)
        build_s, peak = p.stdout.strip().splitlines()[-2:]
        out["build_s"], out["build_peak_rss_bytes"] = float(build_s), int(peak)
    else:
        out["build_s"], out["build_peak_rss_bytes"] = float("nan"), 0
    out["index_bytes"] = sum(f.stat().st_size for f in index_dir.iterdir())
    kwargs = {"corpus_name": str(folder), "retriever_name": "BM25", "auto_build": False}
    first = []
    for _ in range(3):
        t0 = time.time()
        r = _run_json(["-m", "medret.bench.probe", json.dumps(kwargs), "sepsis mortality in elderly patients", "5"])
        r["startup_s"] = r.pop("answered_at") - t0
        first.append(r)
    out["first_answer"] = first
    out["batches"] = _run_json(["-c", BM25_BATCHES, str(folder), str(runs)])
    return out


if __name__ == "__main__":
    sys.exit(main())
