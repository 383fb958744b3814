"""HTTP overhead of `medret serve` against the in-process retriever, side by side in one run.

Per-batch latency p50/p95 for batch sizes 1, 64, 512 and 2,560 at topk 5 on the same corpus and model:

* in-process: ``get_retriever(...).retrieve(batch, 5, True)`` (the full Search-R1 JSON, as a trainer gets it);
* http (medret client): ``get_retriever(..., url=...).retrieve(...)`` against a `medret serve` process;
* http (Search-R1 style): ``requests.post(url, json=payload).json()``, exactly how Search-R1's ``_batch_search``
  and veRL's ``call_search_api`` call it (stdlib json on the client side).

The server is a separate process (`python -m medret.cli serve --port 0 --address-file ...`), as in a real job.
Calls are interleaved (in-process, http, Search-R1 style, repeat) so drift hits every column alike.

    python benchmarks/http_overhead.py                        # PubMedQA corpus, BM25
    python benchmarks/http_overhead.py --dense-bert-base      # also a random-weight BERT-base encoder (slow on CPU)
    python benchmarks/http_overhead.py --results benchmarks/RESULTS.md   # append the table there
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PUBMEDQA = Path("/work/shared/datasets/pubmedqa/ori_pqal.json")


def unique_queries(questions: list[str], n: int, seed: int = 0) -> list[str]:
    """n distinct queries: the PubMedQA questions, then questions extended with words of another question."""
    rng = np.random.default_rng(seed)
    out = list(dict.fromkeys(questions))
    seen = set(out)
    while len(out) < n:
        a, b = rng.integers(0, len(questions), 2)
        words = questions[b].split()
        q = questions[a] + " " + " ".join(words[: rng.integers(1, max(2, len(words)))])
        if q not in seen:
            seen.add(q)
            out.append(q)
    return out[:n]


def pct(xs: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(xs), p))


def start_server(corpus: str, retriever: str, extra: list[str], workdir: Path) -> tuple[subprocess.Popen, str]:
    addr = workdir / f"server-{os.getpid()}-{time.time_ns()}.addr"
    log = open(workdir / "server.log", "ab")
    cmd = [sys.executable, "-m", "medret.cli", "serve", "--corpus", corpus, "--retriever", retriever, "--port", "0",
           "--address-file", str(addr), "--log-level", "warning", "--max-batch-queries", "8192", *extra]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO),
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 1800
    while not addr.exists():
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}; see {workdir / 'server.log'}")
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("the server did not become ready in 30 min")
        time.sleep(0.05)
    return proc, "http://" + addr.read_text().strip()


def bench_one(name: str, corpus: str, retriever: str, extra: list[str], options: dict, queries: list[str],
              batch_sizes: list[int], repeats: dict[int, int], topk: int, workdir: Path) -> list[dict]:
    from medret import get_retriever

    print(f"[{name}] loading in-process retriever ...", flush=True)
    t0 = time.perf_counter()
    local = get_retriever(corpus, retriever, **options)
    local.retrieve(queries[:8], topk)
    print(f"[{name}] in-process ready in {time.perf_counter() - t0:.1f}s; starting `medret serve` ...", flush=True)
    proc, base = start_server(corpus, retriever, extra, workdir)
    url = base + "/retrieve"
    remote = get_retriever(corpus, retriever, url=url, timeout=600.0, **options)
    rows = []
    try:
        # warm-up: every path, every size once
        for bs in batch_sizes:
            b = queries[:bs]
            local.retrieve(b, topk)
            remote.retrieve(b, topk)
            requests.post(url, json={"queries": b, "topk": topk, "return_scores": True}).json()
        rng = np.random.default_rng(1)
        for bs in batch_sizes:
            t_local, t_http, t_sr1 = [], [], []
            for _ in range(repeats[bs]):
                start = int(rng.integers(0, len(queries) - bs + 1))
                b = queries[start:start + bs]
                t = time.perf_counter()
                ref = local.retrieve(b, topk, True)
                t_local.append(time.perf_counter() - t)
                t = time.perf_counter()
                got = remote.retrieve(b, topk, True)
                t_http.append(time.perf_counter() - t)
                t = time.perf_counter()
                sr1 = requests.post(url, json={"queries": b, "topk": topk, "return_scores": True}).json()
                t_sr1.append(time.perf_counter() - t)
                assert got == ref and sr1 == ref, "http and in-process answers differ"
            row = {"retriever": name, "batch": bs, "n": repeats[bs],
                   "local_p50": pct(t_local, 50) * 1e3, "local_p95": pct(t_local, 95) * 1e3,
                   "http_p50": pct(t_http, 50) * 1e3, "http_p95": pct(t_http, 95) * 1e3,
                   "sr1_p50": pct(t_sr1, 50) * 1e3, "sr1_p95": pct(t_sr1, 95) * 1e3}
            rows.append(row)
            print(fmt_row(row), flush=True)
        stats = requests.get(base + "/stats").json()
        print(f"[{name}] server /stats: requests {stats['requests_served']}, batches {stats['batches_run']}, "
              f"latency p50 {stats['latency_ms']['p50']} ms", flush=True)
    finally:
        proc.terminate()
        proc.wait(60)
    return rows


HEADER = ("| retriever | batch | runs | in-process p50 / p95 (ms) | HTTP medret client p50 / p95 (ms) | overhead p50 "
          "| HTTP Search-R1-style client p50 / p95 (ms) | overhead p50 |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|")


def fmt_row(r: dict) -> str:
    over = r["http_p50"] - r["local_p50"]
    over_sr1 = r["sr1_p50"] - r["local_p50"]
    return (f"| {r['retriever']} | {r['batch']} | {r['n']} | {r['local_p50']:.2f} / {r['local_p95']:.2f} "
            f"| {r['http_p50']:.2f} / {r['http_p95']:.2f} | {r['http_p50'] / r['local_p50']:.2f}x (+{over:.2f} ms) "
            f"| {r['sr1_p50']:.2f} / {r['sr1_p95']:.2f} | {r['sr1_p50'] / r['local_p50']:.2f}x "
            f"(+{over_sr1:.2f} ms) |")


def machine() -> str:
    try:
        import psutil

        mem = f", {psutil.virtual_memory().total / 2**30:.0f} GiB RAM"
    except ImportError:
        mem = ""
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()}-core CPU ({cpu}){mem}, no GPU, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pubmedqa", default=str(PUBMEDQA), help="ori_pqal.json (its contexts are the corpus)")
    ap.add_argument("--workdir", default="/tmp/medret-bench-http", help="corpus, models and logs go here")
    ap.add_argument("--batch-sizes", default="1,64,512,2560")
    ap.add_argument("--topk", type=int, default=5)
    ap.add_argument("--repeats", default="50,20,10,6", help="runs per batch size (same order as --batch-sizes)")
    ap.add_argument("--no-bm25", action="store_true")
    ap.add_argument("--dense-bert-base", action="store_true", help="also a random-weight BERT-base encoder")
    ap.add_argument("--dense-repeats", default="20,8,4,3")
    ap.add_argument("--results", default=None, help="append a markdown section to this file")
    a = ap.parse_args(argv)

    from medret.eval import pubmedqa

    workdir = Path(a.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MEDRET_CACHE", str(workdir / "cache"))
    data = pubmedqa.load(a.pubmedqa)
    corpus = workdir / "pubmedqa"
    if not (corpus / "chunk" / "pubmedqa.jsonl").exists():
        pubmedqa.write_corpus(data, corpus)
    questions, _ = pubmedqa.queries_and_qrels(data)
    sizes = [int(x) for x in a.batch_sizes.split(",")]
    queries = unique_queries(questions, max(sizes) + 200)
    rows: list[dict] = []
    load_before = os.getloadavg()
    if not a.no_bm25:
        reps = dict(zip(sizes, (int(x) for x in a.repeats.split(","))))
        rows += bench_one("BM25", str(corpus), "BM25", [], {}, queries, sizes, reps, a.topk, workdir)
    if a.dense_bert_base:
        model = workdir / "bert-base-random"
        if not (model / "config.json").exists():
            subprocess.run([sys.executable, str(REPO / "benchmarks" / "make_random_bert.py"), str(model),
                            "--corpus-file", str(corpus / "chunk" / "pubmedqa.jsonl"), "--size", "base"], check=True)
        reps = dict(zip(sizes, (int(x) for x in a.dense_repeats.split(","))))
        rows += bench_one("BERT-base (random, cls, flat IP)", str(corpus), str(model), ["--pooling", "cls"],
                          {"pooling": "cls"}, queries, sizes, reps, a.topk, workdir)
    table = HEADER + "\n" + "\n".join(fmt_row(r) for r in rows)
    print("\n" + table)
    if a.results:
        cmd = "python benchmarks/http_overhead.py " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:]))
        section = (f"\n## HTTP overhead: `medret serve` vs in-process ({datetime.date.today().isoformat()})\n\n"
                   f"- machine: {machine()}\n- command: `{cmd}`\n"
                   f"- corpus: PubMedQA PQA-L contexts ({sum(1 for _ in open(corpus / 'chunk' / 'pubmedqa.jsonl'))} "
                   f"snippets); queries: PubMedQA questions (extended to distinct queries beyond 1,000); topk "
                   f"{a.topk}; return_scores true; server in its own process on 127.0.0.1, same machine\n"
                   f"- overhead = HTTP p50 / in-process p50 (and the difference); every HTTP answer was checked "
                   f"equal to the in-process one\n- 1-min load average before / after: {load_before[0]:.2f} / "
                   f"{os.getloadavg()[0]:.2f} (other jobs on the machine add noise; compare columns within a row)"
                   f"\n\n{table}\n")
        with open(a.results, "a", encoding="utf-8") as f:
            f.write(section)
        print(f"appended to {a.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
