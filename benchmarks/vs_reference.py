"""medret against Search-R1's ``retrieval_server.py`` and MedRAG's ``RetrievalSystem``, same corpus, same weights.

Neither project's code is part of medret: pass the paths of checkouts you obtained yourself. Search-R1's server is
copied to a temporary folder and patched there only as far as needed to run on CPU (``model.cuda()``,
``v.cuda()`` and fp16 off); MedRAG's code runs unmodified. Extra packages they need (``datasets`` for Search-R1,
``sentence-transformers`` and, for BM25, ``pyserini`` (+ Java) for MedRAG) can live in separate folders given with
``--ref-site A:B`` (added to their PYTHONPATH only).

    # Search-R1's HTTP server vs medret's, PubMedQA's 3,358 snippets, BERT-base weights, batch 512, top-5,
    # PubMedQA's 1,000 questions as queries (--queries windows: 5-12-word windows of corpus snippets instead),
    # --dup-ratio 0.8: GRPO-like batches where groups of 5 share one query (medret.bench.harness.make_batch)
    python benchmarks/vs_reference.py searchr1 --searchr1 /work/_ref/Search-R1 --corpus CORPUS_FOLDER \
        --model BERT_DIR --ref-site /work/_ref/site --pubmedqa shared/datasets/pubmedqa [--dup-ratio 0.8] --out DIR \
        [--like e5 | --pooling mean]    # --like e5: Search-R1's default e5 setting on both sides (query: prefix)

    # MedRAG's RetrievalSystem (MedCPT slot, loop over questions) vs medret (batch), on DB_DIR/pubmed/chunk
    python benchmarks/vs_reference.py medrag --medrag /work/_ref/MedRAG --db-dir DB_DIR --model BERT_DIR \
        --ref-site /work/_ref/site --out DIR

Both systems search the *same* vectors: for Search-R1 a faiss IndexFlatIP written from medret's index of the
corpus; for MedRAG its own layout (``DB_DIR/pubmed/index/ncbi/MedCPT-Article-Encoder/{faiss.index,
metadatas.jsonl}``), which medret reads directly. The model folder is reached by MedRAG under the hub name
``ncbi/MedCPT-Query-Encoder`` through a symlink in the working directory (a relative path wins over the hub).

Search-R1 comparison: both servers (and medret's in-process retriever) are started first, then each run sends the
*same* query batch to Search-R1, to medret over HTTP and to medret in-process, one after the other, so load from
other jobs on the machine hits all of them alike; each run's wall times and CPU seconds (of the server process,
or of this process for the in-process retriever), the medians and the 1-minute load average before and after each
run are reported. Padding is reported too: the batch's real token count against what Search-R1's encoder computes
(every query padded to the batch's longest, in chunks of its 512-query encoder batch) and what medret's computes
(distinct queries only, sorted by length, padded per encoder batch). Search-R1's server always mean-pools: give
medret ``--pooling mean`` (and an index built for it) so both compute the same query vectors, or ``--like e5`` to run
both in Search-R1's default e5 setting (its ``--retriever_name e5`` adds ``query: `` and normalises; medret the
same recipe; index: ``placeholder_index.py CORPUS MODEL --like e5``); each run then
reports the fraction of queries whose top-k ids agree (``same_top_ids``). The query pool defaults to PubMedQA's
questions for ``searchr1`` and to corpus windows for ``medrag``; ``--queries`` and ``--dup-ratio`` apply to both.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CPU_PATCHES = [  # (old, new): the only changes made to Search-R1's server, in a temporary copy
    ("    model.cuda()\n", "    pass  # medret bench: CPU\n"),
    ("inputs = {k: v.cuda() for k, v in inputs.items()}", "inputs = {k: v for k, v in inputs.items()}"),
    ("retrieval_use_fp16=True,", "retrieval_use_fp16=False,"),
]


def env_with(*paths: str) -> dict:
    env = dict(os.environ)
    extra = [p for p in paths if p]
    env["PYTHONPATH"] = os.pathsep.join(extra + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")  # MedRAG shells out to `python`
    if "JAVA_HOME" not in env and shutil.which("java"):
        env["JAVA_HOME"] = str(Path(os.path.realpath(shutil.which("java"))).parents[1])
    env["HF_DATASETS_OFFLINE"] = "1"
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def queries_for(corpus: str, n: int) -> list[str]:
    from medret.bench.harness import queries_from_corpus

    return queries_from_corpus(corpus, None, n, seed=1)


def pubmedqa_questions(path: str) -> list[str]:
    """PubMedQA's questions (PQA-L: 1,000), distinct, in file order."""
    from medret.eval.pubmedqa import load, queries_and_qrels

    qs, _ = queries_and_qrels(load(path))
    return list(dict.fromkeys(qs))


def query_batches(pool: list[str], batch: int, runs: int, dup_ratio: float) -> list[list[str]]:
    """``runs`` batches as ``medret bench`` builds them: each moves on by its number of distinct queries."""
    import math

    from medret.bench.harness import make_batch

    step = max(1, math.ceil(batch * (1.0 - dup_ratio) - 1e-9))
    if step > len(pool):
        raise SystemExit(f"--batch {batch} with --dup-ratio {dup_ratio} needs {step} distinct queries per batch; "
                         f"the query pool has only {len(pool)}: lower --batch or raise --dup-ratio")
    return [make_batch(pool, batch, dup_ratio, start=i * step) for i in range(runs)]


def padding_stats(tokenizer, batch: list[str], ref_max_len: int, ref_batch: int, medret_max_len: int,
                  medret_batch: int, ref_prefix: str = "", medret_prefix: str = "") -> dict:
    """Token positions the two encoders compute for one request (attention cost aside), each query after its
    system's prefix."""
    def lengths(texts: list[str], max_len: int, prefix: str = "") -> list[int]:
        return [len(x) for x in tokenizer([prefix + t for t in texts], max_length=max_len,
                                          truncation=True)["input_ids"]]

    ref = lengths(batch, ref_max_len, ref_prefix)  # Search-R1: the batch as sent, padding=True per encoder batch
    ref_padded = sum(len(ref[i:i + ref_batch]) * max(ref[i:i + ref_batch]) for i in range(0, len(ref), ref_batch))
    from medret.encoders.hf import batches

    uniq = sorted(lengths(list(dict.fromkeys(batch)), medret_max_len, medret_prefix), reverse=True)  # dedupe, sort
    # medret's own batch rule (CPU: cut where padding would exceed its share)
    med_padded = sum((b.stop - b.start) * uniq[b.start] for b in batches(np.asarray(uniq), medret_batch, True))
    return {"queries": len(batch), "distinct": len(uniq), "tokens_sum": sum(ref), "tokens_mean": sum(ref) / len(ref),
            "tokens_max": max(ref), "searchr1_padded_tokens": ref_padded, "medret_padded_tokens": med_padded,
            "searchr1_padding_waste": 1 - sum(ref) / ref_padded, "padded_ratio": ref_padded / med_padded}


def same_ids(ref: list, med: list) -> float:
    """Fraction of queries whose top-k ids (as a set) agree: 1.0 only when both compute the same query vectors
    (Search-R1 always mean-pools, so run medret with ``--pooling mean`` for a meaningful check)."""
    ids = [[{h["document"]["id"] for h in hits} for hits in res] for res in (ref, med)]
    return sum(x == y for x, y in zip(*ids)) / max(1, len(ids[0]))


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (all its threads): less sensitive than wall time to
    other jobs on a shared machine."""
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def median(v: list[float]) -> float:
    return float(np.median(v))


def post(url: str, queries: list[str], topk: int, timeout: float = 3600) -> tuple[float, dict]:
    import requests

    t = time.perf_counter()
    r = requests.post(url, json={"queries": queries, "topk": topk, "return_scores": True}, timeout=timeout)
    r.raise_for_status()
    return time.perf_counter() - t, r.json()


def wait_http(url: str, proc: subprocess.Popen, timeout: float, probe: list[str]) -> float:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            post(url, probe, 1, timeout=60)
            return time.time() - t0
        except Exception:  # noqa: BLE001 - the server is still starting: any failure means "not yet"
            time.sleep(0.25)
    raise RuntimeError(f"no answer from {url} within {timeout}s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------------------------------- Search-R1


def run_searchr1(a) -> dict:
    import faiss
    from transformers import AutoTokenizer

    from medret.config import RetrieverConfig
    from medret.corpus.registry import resolve_corpus
    from medret.corpus.store import open_corpus_store
    from medret.encoders.specs import spec_for
    from medret.index.identity import encoder_identity, keyed_dir

    work = Path(tempfile.mkdtemp(prefix="vs-searchr1-"))
    src = (Path(a.searchr1) / "search_r1" / "search" / "retrieval_server.py").read_text()
    for old, new in CPU_PATCHES:
        if old not in src:
            raise SystemExit(f"Search-R1's retrieval_server.py has no {old!r}: the patch list needs updating")
        src = src.replace(old, new)
    corpus = resolve_corpus(a.corpus, None)
    store = open_corpus_store(corpus)
    # --like e5: both sides use Search-R1's default e5 setting (its server's `--retriever_name e5`: `query: `
    # prefix, normalised; medret `--like e5`); otherwise Search-R1's server as `bert` (no prefix) and medret with
    # --pooling (the earlier series)
    enc_opts = {"like": a.like} if a.like else {"pooling": a.pooling}
    spec = spec_for(a.model, RetrieverConfig(**enc_opts))
    emb_dir = keyed_dir(corpus.sources[0], encoder_identity(spec))
    files = json.loads((emb_dir / "dense.json").read_text())["embedding_files"]
    emb = np.concatenate([np.load(emb_dir / f) for f in files]).astype(np.float32)
    index = faiss.IndexFlatIP(emb.shape[1])
    index.add(emb)
    faiss.write_index(index, str(work / "flat.index"))
    with open(work / "corpus.jsonl", "w") as f:  # Search-R1's corpus format: {"id", "contents": '"title"\ntext'}
        for _, docs in store.iter_batches(10_000):
            for d in docs:
                f.write(json.dumps({"id": d["id"], "contents": f'"{d["title"]}"\n{d["content"]}'}) + "\n")
    store.close()
    queries = a.queries or "pubmedqa"
    if queries == "pubmedqa":
        if not a.pubmedqa:
            raise SystemExit("--queries pubmedqa needs --pubmedqa (folder or ori_pqal.json)")
        pool = pubmedqa_questions(a.pubmedqa)
    else:
        pool = queries_for(a.corpus, a.batch * a.runs + 8)
    batches = query_batches(pool, a.batch, a.runs, a.dup_ratio)
    warm = pool[-8:]
    ref_name = "e5" if a.like == "e5" else "bert"
    # Search-R1's encoder settings, as its __main__ sets them; medret's from its spec and config defaults
    ref_max_len = int(_main_setting(src, "retrieval_query_max_length", 256))
    ref_batch = int(_main_setting(src, "retrieval_batch_size", 512))
    if _main_setting(src, "retrieval_pooling_method", "mean") != spec.pooling:
        print(f"note: Search-R1's server mean-pools; medret runs with --pooling {a.pooling}, so the two compute "
              f"different query vectors (same cost) and their top-k ids will differ", file=sys.stderr)
    med_batch = RetrieverConfig.__dataclass_fields__["batch_size"].default
    tok = AutoTokenizer.from_pretrained(a.model)
    ref_prefix = "query: " if "e5" in ref_name.lower() else ""  # Search-R1's rule: by retriever name
    pads = [padding_stats(tok, b, ref_max_len, ref_batch, spec.query_max_len, med_batch, ref_prefix,
                          spec.query_prefix) for b in batches]
    out: dict = {"corpus": a.corpus, "rows": len(emb), "model": a.model, "batch": a.batch, "topk": a.topk,
                 "queries": queries, "query_pool": len(pool), "dup_ratio": a.dup_ratio,
                 "distinct_per_batch": [len(set(b)) for b in batches],
                 "searchr1_encoder": {"max_length": ref_max_len, "batch_size": ref_batch},
                 "medret_encoder": {"max_length": spec.query_max_len, "batch_size": med_batch}, "padding": pads}

    port = free_port()
    (work / "retrieval_server.py").write_text(src.replace("port=8000", f"port={port}"))
    procs: list[subprocess.Popen] = []
    try:
        t0 = time.time()
        ref = subprocess.Popen([sys.executable, str(work / "retrieval_server.py"), "--index_path",
                                str(work / "flat.index"), "--corpus_path", str(work / "corpus.jsonl"), "--topk",
                                str(a.topk), "--retriever_name", ref_name, "--retriever_model", a.model], cwd=work,
                               env=env_with(a.ref_site), stdout=open(work / "searchr1.log", "w"),
                               stderr=subprocess.STDOUT)
        procs.append(ref)
        ref_url = f"http://127.0.0.1:{port}/retrieve"
        try:
            wait_http(ref_url, ref, 600, warm[-1:])
        except RuntimeError as e:
            raise RuntimeError(f"{e}: {(work / 'searchr1.log').read_text()[-3000:]}") from None
        out["searchr1_startup_s"] = time.time() - t0

        addr = work / "medret.addr"
        t0 = time.time()
        flag = ["--like", a.like] if a.like else ["--pooling", a.pooling]
        med = subprocess.Popen([sys.executable, "-m", "medret.cli", "serve", "--corpus", a.corpus, "--retriever",
                                a.model, *flag, "--address-file", str(addr), "--log-level",
                                "warning"], env=env_with(str(ROOT)), stdout=open(work / "medret.log", "w"),
                               stderr=subprocess.STDOUT)
        procs.append(med)
        while not addr.exists():
            if med.poll() is not None:
                raise RuntimeError((work / "medret.log").read_text()[-2000:])
            time.sleep(0.05)
        med_url = f"http://{addr.read_text().strip()}/retrieve"
        wait_http(med_url, med, 600, warm[-1:])
        out["medret_startup_s"] = time.time() - t0

        from medret import get_retriever

        local = get_retriever(a.corpus, a.model, **enc_opts)
        post(ref_url, warm, a.topk)
        post(med_url, warm, a.topk)
        local.retrieve(warm, topk=a.topk)

        lat: dict[str, list[float]] = {"searchr1": [], "medret_http": [], "medret_local": []}
        runs = []
        for i, b in enumerate(batches):  # same batch for every system; systems interleaved within the run
            row = {"run": i + 1, "load1_before": load1()}
            c = cpu_s(ref.pid)
            dt, ref_res = post(ref_url, b, a.topk)
            assert len(ref_res["result"]) == len(b)
            row["searchr1_s"], row["searchr1_cpu_s"] = dt, cpu_s(ref.pid) - c
            c = cpu_s(med.pid)
            dt, res = post(med_url, b, a.topk)
            assert len(res["result"]) == len(b)
            row["medret_http_s"], row["medret_http_cpu_s"] = dt, cpu_s(med.pid) - c
            row["same_top_ids"] = same_ids(ref_res["result"], res["result"])
            c = cpu_s(os.getpid())
            t = time.perf_counter()
            res = local.retrieve(b, topk=a.topk)
            assert len(res["result"]) == len(b)
            row["medret_local_s"] = time.perf_counter() - t
            row["medret_local_cpu_s"] = cpu_s(os.getpid()) - c
            row["load1_after"] = load1()
            for k in lat:
                lat[k].append(row[f"{k}_s"])
            runs.append(row)
            print(json.dumps(row), flush=True)
        out["runs"] = runs
        local.close()
    finally:
        for p in reversed(procs):
            stop(p)
    for k, v in lat.items():
        cpu = [r[f"{k}_cpu_s"] for r in runs]
        out[k] = {"batch": a.batch, "runs": len(v), "latencies_s": v, "median_s": median(v),
                  "qps": a.batch / median(v), "qps_mean": a.batch * len(v) / sum(v), "cpu_s": cpu,
                  "median_cpu_s": median(cpu)}
    out["ratio_http"] = out["medret_http"]["qps"] / out["searchr1"]["qps"]
    out["ratio_local"] = out["medret_local"]["qps"] / out["searchr1"]["qps"]
    out["ratio_http_per_run"] = [r["searchr1_s"] / r["medret_http_s"] for r in runs]
    out["ratio_cpu_http"] = out["searchr1"]["median_cpu_s"] / out["medret_http"]["median_cpu_s"]
    out["ratio_cpu_local"] = out["searchr1"]["median_cpu_s"] / out["medret_local"]["median_cpu_s"]
    out["pooling"] = {"searchr1": _main_setting(src, "retrieval_pooling_method", "mean"), "medret": spec.pooling}
    out["encoders"] = {"searchr1_retriever_name": ref_name, "searchr1_query_prefix": ref_prefix,
                       "medret": enc_opts, "medret_query_prefix": spec.query_prefix, "normalize": spec.normalize}
    shutil.rmtree(work, ignore_errors=True)
    return out


def _main_setting(src: str, name: str, default):
    """The value Search-R1's ``__main__`` gives ``name=`` in its Config(...) call (its defaults otherwise)."""
    import re

    tail = src[src.index('if __name__ == "__main__":'):] if 'if __name__ == "__main__":' in src else src
    m = re.search(rf"{name}\s*=\s*(\d+|\"\w+\")", tail)
    return (m.group(1).strip('"') if m.group(1).startswith('"') else int(m.group(1))) if m else default


# ---------------------------------------------------------------------------------------------- MedRAG


MEDRAG_LOOP = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from utils import RetrievalSystem
qs = json.loads(open(sys.argv[3]).read())
t = time.perf_counter()
rs = RetrievalSystem(sys.argv[4], "PubMed", sys.argv[2])
startup = time.perf_counter() - t
rs.retrieve(qs[0], k=int(sys.argv[5]))
lat, hits, ids = [], [], []
for q in qs[1:]:
    t = time.perf_counter()
    texts, scores = rs.retrieve(q, k=int(sys.argv[5]))
    lat.append(time.perf_counter() - t)
    hits.append(len(texts))
    ids.append([d["id"] for d in texts])
print(json.dumps({"startup_s": startup, "n": len(lat), "latencies_s": lat, "qps": len(lat) / sum(lat),
                  "hits_per_query_min": min(hits), "hits_per_query_mean": sum(hits) / len(hits), "ids": ids}))
"""


def write_medrag_index(db: Path, emb_dir: Path) -> Path:
    """MedRAG's layout for the medret index's vectors: faiss.index + metadatas.jsonl ({index, source})."""
    import faiss

    from medret.corpus.registry import resolve_corpus
    from medret.corpus.store import open_corpus_store

    target = db / "pubmed" / "index" / "ncbi" / "MedCPT-Article-Encoder"
    if (target / "faiss.index").exists():
        return target
    store = open_corpus_store(resolve_corpus("PubMed", str(db)))
    files = json.loads((emb_dir / "dense.json").read_text())["embedding_files"]
    target.mkdir(parents=True, exist_ok=True)
    index = None
    for f in files:
        e = np.load(emb_dir / f).astype(np.float32)
        if index is None:
            index = faiss.IndexFlatIP(e.shape[1])
        index.add(e)
    with open(target / "metadatas.jsonl", "w") as out:
        for stem, n in store.files:
            out.write("".join(json.dumps({"index": i, "source": stem}) + "\n" for i in range(n)))
    faiss.write_index(index, str(target / "faiss.index"))
    store.close()
    return target


def run_medrag(a) -> dict:
    from placeholder_index import build_placeholder_index

    db = Path(a.db_dir)
    names = [n.strip() for n in a.retrievers.split(",") if n.strip()]
    work = Path(tempfile.mkdtemp(prefix="vs-medrag-"))
    (work / "ncbi").mkdir()
    os.symlink(os.path.abspath(a.model), work / "ncbi" / "MedCPT-Query-Encoder")
    if (a.queries or "windows") == "pubmedqa":
        if not a.pubmedqa:
            raise SystemExit("--queries pubmedqa needs --pubmedqa (folder or ori_pqal.json)")
        qs = pubmedqa_questions(a.pubmedqa)
    else:
        qs = queries_for(str(db / "pubmed"), max(a.medrag_queries + 1, a.batch * a.runs + 8))
    batches = query_batches(qs, a.batch, a.runs, a.dup_ratio)
    (work / "q.json").write_text(json.dumps(qs[: a.medrag_queries + 1]))
    out: dict = {"db_dir": str(db), "model": a.model, "topk": a.topk, "batch": a.batch,
                 "queries": a.queries or "windows", "dup_ratio": a.dup_ratio}
    from medret import get_retriever

    for name in names:
        key = name.lower()
        if key == "medcpt":
            emb_dir = build_placeholder_index(str(db / "pubmed"), a.model, a.pooling)
            write_medrag_index(db, emb_dir)
        out[f"medrag_{key}_load1_before"] = load1()
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-c", MEDRAG_LOOP, str(Path(a.medrag) / "src"), str(db),
                            str(work / "q.json"), name, str(a.topk)], cwd=work, env=env_with(a.ref_site),
                           capture_output=True, text=True)
        if p.returncode:
            raise SystemExit(f"MedRAG {name} failed: {p.stderr[-3000:]}")
        out[f"medrag_{key}"] = json.loads(p.stdout.strip().splitlines()[-1])
        out[f"medrag_{key}"]["process_s"] = time.perf_counter() - t
        out[f"medrag_{key}_load1_after"] = load1()
        ref_ids = out[f"medrag_{key}"].pop("ids")
        t = time.perf_counter()
        kwargs = {"query_model": a.model} if key == "medcpt" else {}
        r = get_retriever("PubMed", "MedCPT" if key == "medcpt" else "BM25", db_dir=str(db), **kwargs)
        r.retrieve(qs[-2:], topk=a.topk)
        out[f"medret_{key}_startup_s"] = time.perf_counter() - t  # includes building medret's BM25 index if absent
        out[f"medret_{key}_info"] = r.info()
        eng = getattr(getattr(r, "transport", None), "engine", None)  # which search path medret took (local only)
        if eng is not None:
            out[f"medret_{key}_indexes"] = [{"index_type": getattr(ix, "index_type", None),
                                             "backend": getattr(ix, "backend", None), "rows": len(ix.row_map)
                                             if getattr(ix, "row_map", None) is not None else None}
                                            for s in eng.searchers for _, ix in getattr(s, "indexes", [])]
        med = r.retrieve(qs[1: len(ref_ids) + 1], topk=a.topk)["result"]  # the questions MedRAG answered
        med_ids = [[h["document"]["id"] for h in hits] for hits in med]
        out[f"same_top_ids_{key}"] = sum(set(x) == set(y) for x, y in zip(ref_ids, med_ids)) / max(1, len(ref_ids))
        out[f"same_top_order_{key}"] = sum(x == y for x, y in zip(ref_ids, med_ids)) / max(1, len(ref_ids))
        lat, loads = [], []
        for b in batches:
            l0 = load1()
            t = time.perf_counter()
            r.retrieve(b, topk=a.topk)
            lat.append(time.perf_counter() - t)
            loads.append([l0, load1()])
            print(json.dumps({"medret": key, "run": len(lat), "s": lat[-1], "load1": loads[-1]}), flush=True)
        out[f"medret_{key}"] = {"batch": a.batch, "runs": len(lat), "latencies_s": lat, "load1_before_after": loads,
                                "qps": a.batch * len(lat) / sum(lat), "qps_median": a.batch / median(lat)}
        out[f"ratio_{key}"] = out[f"medret_{key}"]["qps"] / out[f"medrag_{key}"]["qps"]
        r.close()
    shutil.rmtree(work, ignore_errors=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("which", choices=["searchr1", "medrag"])
    ap.add_argument("--searchr1", help="Search-R1 checkout (holds search_r1/search/retrieval_server.py)")
    ap.add_argument("--medrag", help="MedRAG checkout (holds src/utils.py)")
    ap.add_argument("--corpus", help="corpus folder for the Search-R1 comparison (with a medret index of --model)")
    ap.add_argument("--db-dir", help="MedRAG-layout folder holding pubmed/chunk for the MedRAG comparison")
    ap.add_argument("--model", required=True, help="local BERT folder used by both systems")
    ap.add_argument("--pooling", default="cls")
    ap.add_argument("--like", default=None, choices=["e5"],
                    help="searchr1: both systems in Search-R1's default e5 setting (its server's --retriever_name e5, "
                    "medret --like e5) instead of `bert` / --pooling")
    ap.add_argument("--ref-site", default=None, help="folder with the reference projects' extra packages")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--topk", type=int, default=5)
    ap.add_argument("--queries", choices=["windows", "pubmedqa"], default=None,
                    help="query pool: PubMedQA's questions (default for searchr1; needs --pubmedqa) or 5-12-word "
                         "windows of corpus snippets (default for medrag)")
    ap.add_argument("--pubmedqa", default=None, help="PubMedQA folder or ori_pqal.json (for --queries pubmedqa)")
    ap.add_argument("--dup-ratio", type=float, default=0.0,
                    help="fraction of repeated queries per batch, in consecutive groups as medret bench builds "
                         "them (0.8: groups of 5 share a query, like GRPO rollouts)")
    ap.add_argument("--medrag-queries", type=int, default=20)
    ap.add_argument("--retrievers", default="MedCPT,BM25", help="MedRAG retriever names to compare (MedCPT, BM25)")
    ap.add_argument("--tag", default="", help="suffix of the output file name")
    ap.add_argument("--out", default=os.environ.get("OUT", "vs-reference-out"))
    a = ap.parse_args(argv)
    if not 0.0 <= a.dup_ratio < 1.0:
        ap.error(f"--dup-ratio {a.dup_ratio} is invalid: a fraction from 0 (all distinct) to below 1")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    res = run_searchr1(a) if a.which == "searchr1" else run_medrag(a)
    res["date"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"vs_{a.which}{a.tag}.json").write_text(json.dumps(res, indent=2))
    print(json.dumps({k: v for k, v in res.items()}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
