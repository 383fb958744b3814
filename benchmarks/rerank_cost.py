"""Cost of the rerank stage per batch: medret's cross-encoder over each query's own candidates, beside the first
stage alone and Search-R1's rerank server (``search_r1/search/rerank_server.py``) on the same model and candidates.

    python benchmarks/make_random_bert.py /tmp/ce-base --corpus-file CHUNK.jsonl --cross-encoder   # BERT-base shape
    python benchmarks/rerank_cost.py --model /tmp/ce-base [--corpus sample] [--searchr1 /tmp/Search-R1 \\
        --searchr1-path /tmp/sr1pkgs] [--depths 10,20,50] [--batches 1,64,512] [--measure-pairs 100] [--cross-batch 4]

Per depth d and batch b (b queries, d first-stage candidates each, top 3 returned):

* ``first stage``: medret's BM25 alone, ``retrieve(batch, topk=d)`` (median of 3 runs);
* ``medret rerank``: ``get_retriever(corpus, "BM25", reranker=MODEL, rerank_depth=d).retrieve(batch, topk=3)``,
  first stage included: b·d pairs, each query with its own candidates. Cells of more than ``--measure-pairs`` pairs
  are *projected* (first stage + b·d × the seconds per pair measured at that depth), marked ``~``: a CPU scores a
  BERT-base pair in about a second on a small shared machine, so batch 512 at depth 50 (25,600 pairs) would take
  hours. (What the issue asked for as "fewer repetitions of batch 512" is here: none measured, all projected.)
* ``Search-R1``: its rerank server, unmodified but for host and port, given the same candidates (medret's first stage)
  in its ``/rerank`` request (it answers each document as the text it scored). It pairs every query with every
  query's candidates (``for document in documents``): b²·d pairs. Measured at batch 1 (where that is b·d) and at
  ``--cross-batch``; larger batches are projected from its seconds per pair. medret runs with
  ``reranker_format="searchr1"`` here, so both score the same strings
  (``(Title: "<title>") <text>``) with the same weights; at batch 1 their top-3 ids must agree (checked).

Search-R1's code is not part of medret: pass a checkout with ``--searchr1`` and a folder holding sentence-transformers
and fastapi (e.g. ``pip install --target /tmp/sr1pkgs --no-deps sentence-transformers fastapi==0.140.0``) with
``--searchr1-path``. Ratios are of wall seconds measured in one run on one machine.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vs_reference import cpu_s, free_port, load1, queries_for, stop

TOPK = 3


def timed(fn, *args, runs: int = 1, cpu=time.process_time) -> tuple[float, float, object]:
    """(median wall seconds of ``runs`` calls of ``fn(*args)``, their median CPU seconds as ``cpu()`` counts them,
    the last answer). CPU seconds (user + system of the process that does the work, all its threads) are less
    sensitive than wall time to other jobs on a shared machine."""
    wall, used, answer = [], [], None
    for _ in range(runs):
        c, t = cpu(), time.perf_counter()
        answer = fn(*args)
        wall.append(time.perf_counter() - t)
        used.append(cpu() - c)
    return float(np.median(wall)), float(np.median(used)), answer


def as_searchr1(item: dict) -> str:
    """The text Search-R1's rerank server answers for a scored item: its '(Title: <first line>) <rest>'."""
    title, _, text = item["document"]["contents"].partition("\n")
    return f"(Title: {title}) {text}"


def start_searchr1(checkout: str, pkgs: str, model: str, work: Path) -> tuple[subprocess.Popen, str]:
    src = (Path(checkout) / "search_r1" / "search" / "rerank_server.py").read_text()
    old = 'uvicorn.run(app, host="0.0.0.0", port=6980)'
    if old not in src:
        raise SystemExit(f"Search-R1's rerank_server.py has no {old!r}: the patch needs updating")
    port = free_port()
    (work / "rerank_server.py").write_text(src.replace(old, f'uvicorn.run(app, host="127.0.0.1", port={port})'))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (pkgs, os.environ.get("PYTHONPATH")) if p),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, str(work / "rerank_server.py"), "--rerank_model_name_or_path", model],
                            cwd=work, env=env, stdout=open(work / "searchr1.log", "wb"), stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}/rerank"


def searchr1_call(url: str, queries: list[str], candidates: list[list[dict]]) -> dict:
    import requests

    r = requests.post(url, json={"queries": queries, "documents": candidates, "rerank_topk": TOPK,
                                 "return_scores": True}, timeout=24 * 3600)
    r.raise_for_status()
    return r.json()


def wait_searchr1(url: str, proc: subprocess.Popen, probe: list[dict], timeout: float = 600) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"Search-R1's rerank server exited with {proc.returncode} (see its log)")
        try:
            searchr1_call(url, ["probe"], [probe])
            return
        except Exception:  # noqa: BLE001 - still starting
            time.sleep(0.5)
    raise SystemExit(f"Search-R1's rerank server did not answer within {timeout}s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a cross-encoder folder (benchmarks/make_random_bert.py "
                    "--cross-encoder)")
    ap.add_argument("--corpus", default="sample")
    ap.add_argument("--depths", default="10,20,50")
    ap.add_argument("--batches", default="1,64,512")
    ap.add_argument("--measure-pairs", type=int, default=100, help="measure cells of at most this many pairs; "
                    "project the others from the measured seconds per pair")
    ap.add_argument("--cross-batch", type=int, default=4, help="the batch at which Search-R1's cross-pairing is "
                    "measured (b*b*d pairs), at the smallest depth")
    ap.add_argument("--searchr1", default=None, help="a Search-R1 checkout")
    ap.add_argument("--searchr1-path", default=None, help="folder with sentence-transformers and fastapi")
    a = ap.parse_args(argv)
    depths = [int(x) for x in a.depths.split(",")]
    batches = sorted({int(x) for x in a.batches.split(",")} | ({a.cross_batch} if a.searchr1 else set()))

    from medret import clear_cache, get_retriever

    pool = queries_for(a.corpus, max(batches) + 8)
    first = get_retriever(a.corpus, "BM25")
    first.retrieve(pool[:8], max(depths))  # warm
    rows = []
    s_pair: dict[int, float] = {}
    c_pair: dict[int, float] = {}
    sr1 = sr1_url = None
    work = Path(tempfile.mkdtemp(prefix="rerank-cost-"))
    if a.searchr1:
        sr1, sr1_url = start_searchr1(a.searchr1, a.searchr1_path or "", a.model, work)
    try:
        if sr1 is not None:
            wait_searchr1(sr1_url, sr1, first.retrieve(pool[:1], 1)["result"][0])
        sr1_pair: dict[int, float] = {}
        sr1_cpu_pair: dict[int, float] = {}
        sr1_overhead: dict[int, float] = {}
        for d in depths:
            rr = get_retriever(a.corpus, "BM25", reranker=a.model, rerank_depth=d, reranker_format="searchr1")
            rr.retrieve(pool[-2:], TOPK)  # load and warm
            for b in batches:
                qs = pool[:b]
                t_first, c_first, _ = timed(first.retrieve, qs, d, runs=3)
                pairs = b * d
                row = {"depth": d, "batch": b, "pairs": pairs, "first": t_first, "first_cpu": c_first}
                if pairs <= a.measure_pairs:
                    row["medret"], row["medret_cpu"], got = timed(rr.retrieve, qs, TOPK)
                    row["measured"] = True
                    s_pair[d] = max(1e-9, (row["medret"] - t_first) / pairs)
                    c_pair[d] = max(1e-9, (row["medret_cpu"] - c_first) / pairs)
                else:
                    row["medret"] = t_first + pairs * s_pair[d]
                    row["medret_cpu"] = c_first + pairs * c_pair[d]
                    row["measured"] = False
                if sr1 is not None:
                    cands = [[h for h in r] for r in first.retrieve(qs, d)["result"]]
                    sr_pairs = b * b * d
                    row["sr1_pairs"] = sr_pairs
                    if b == 1 or (b == a.cross_batch and d == min(depths)):
                        t_sr1, c_sr1, out = timed(searchr1_call, sr1_url, qs, cands, cpu=lambda: cpu_s(sr1.pid))
                        row["sr1"] = t_first + t_sr1
                        row["sr1_cpu"] = c_first + c_sr1
                        row["sr1_measured"] = True
                        if b == 1:
                            sr1_pair[d] = (row["sr1"] - t_first) / pairs
                            sr1_cpu_pair[d] = c_sr1 / pairs
                            sr1_overhead[d] = (row["sr1"] - t_first) - (row["medret"] - t_first)
                            if row["measured"]:
                                same = [[x["document"] for x in r] for r in out["result"]] == \
                                    [[as_searchr1(x) for x in r] for r in got["result"]]
                                row["same_top3"] = same
                        else:
                            own = [{as_searchr1(c) for c in cs} for cs in cands]
                            row["foreign"] = sum(any(x["document"] not in own[i] for x in r)
                                                 for i, r in enumerate(out["result"]))
                    else:
                        row["sr1"] = t_first + sr_pairs * sr1_pair[d]
                        row["sr1_cpu"] = c_first + sr_pairs * sr1_cpu_pair[d]
                        row["sr1_measured"] = False
                rows.append(row)
                print(row, f"load1={load1()}", flush=True)
            rr.close()
            clear_cache()
            first = get_retriever(a.corpus, "BM25")
    finally:
        if sr1 is not None:
            stop(sr1)
    print(f"\n{platform.node()}, {os.cpu_count()} CPUs, load average {load1()}, model {a.model}, corpus {a.corpus}")
    print("wall s (CPU s): ~ = projected from the seconds per pair measured at that depth")
    print("| depth | batch | pairs (medret / Search-R1) | first stage | medret first+rerank | ratio to first stage "
          "| Search-R1 first+rerank | Search-R1 / medret |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        m = "" if r["measured"] else "~"
        line = (f"| {r['depth']} | {r['batch']} | {r['pairs']:,} / {r.get('sr1_pairs', 0):,} | "
                f"{r['first']:.4f} ({r['first_cpu']:.4f}) | {m}{r['medret']:.1f} ({m}{r['medret_cpu']:.1f}) | "
                f"{m}{r['medret'] / r['first']:.0f}x |")
        if "sr1" in r:
            s = "" if r["sr1_measured"] else "~"
            extra = ", same top-3" if r.get("same_top3") else ""
            extra += f", {r['foreign']} of {r['batch']} queries got another query's document" if "foreign" in r \
                else ""
            line += (f" {s}{r['sr1']:.1f} ({s}{r['sr1_cpu']:.1f}{extra}) | {s}{r['sr1'] / r['medret']:.2f}x "
                     f"({s}{r['sr1_cpu'] / r['medret_cpu']:.2f}x) |")
        else:
            line += " - | - |"
        print(line)
    if sr1_overhead:
        print("Search-R1 at batch 1 (same pairs as medret): extra seconds per request " +
              ", ".join(f"depth {d}: {v:+.2f}" for d, v in sr1_overhead.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
