"""medret against Search-R1's ``retrieval_server.py`` and MedRAG's ``RetrievalSystem``, same corpus, same weights.

Neither project's code is part of medret: pass the paths of checkouts you obtained yourself. Search-R1's server is
copied to a temporary folder and patched there only as far as needed to run on CPU (``model.cuda()``,
``v.cuda()`` and fp16 off); MedRAG's code runs unmodified. Extra packages they need (``datasets`` for Search-R1,
``sentence-transformers`` and, for BM25, ``pyserini`` (+ Java) for MedRAG) can live in separate folders given with
``--ref-site A:B`` (added to their PYTHONPATH only).

    # Search-R1's HTTP server vs medret's, PubMedQA's 3,358 snippets, BERT-base weights, batch 512, top-5
    python benchmarks/vs_reference.py searchr1 --searchr1 /work/_ref/Search-R1 --corpus CORPUS_FOLDER \
        --model BERT_DIR --ref-site /work/_ref/site --out DIR

    # MedRAG's RetrievalSystem (MedCPT slot, loop over questions) vs medret (batch), on DB_DIR/pubmed/chunk
    python benchmarks/vs_reference.py medrag --medrag /work/_ref/MedRAG --db-dir DB_DIR --model BERT_DIR \
        --ref-site /work/_ref/site --out DIR

Both systems search the *same* vectors: for Search-R1 a faiss IndexFlatIP written from medret's index of the
corpus; for MedRAG its own layout (``DB_DIR/pubmed/index/ncbi/MedCPT-Article-Encoder/{faiss.index,
metadatas.jsonl}``), which medret reads directly. The model folder is reached by MedRAG under the hub name
``ncbi/MedCPT-Query-Encoder`` through a symlink in the working directory (a relative path wins over the hub).
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
        except Exception:
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


def measure_server(url: str, batches: list[list[str]], topk: int) -> dict:
    lat = []
    for b in batches:
        dt, res = post(url, b, topk)
        assert len(res["result"]) == len(b)
        lat.append(dt)
    n = sum(len(b) for b in batches)
    return {"batch": len(batches[0]), "runs": len(lat), "latencies_s": lat, "qps": n / sum(lat)}


# ---------------------------------------------------------------------------------------------- Search-R1


def run_searchr1(a) -> dict:
    import faiss

    from medret.corpus.registry import resolve_corpus
    from medret.corpus.store import open_corpus_store
    from medret.encoders.specs import resolve_spec

    work = Path(tempfile.mkdtemp(prefix="vs-searchr1-"))
    src = (Path(a.searchr1) / "search_r1" / "search" / "retrieval_server.py").read_text()
    for old, new in CPU_PATCHES:
        if old not in src:
            raise SystemExit(f"Search-R1's retrieval_server.py has no {old!r}: the patch list needs updating")
        src = src.replace(old, new)
    (work / "retrieval_server.py").write_text(src)
    corpus = resolve_corpus(a.corpus, None)
    store = open_corpus_store(corpus)
    spec = resolve_spec(a.model, pooling=a.pooling)
    emb_dir = corpus.sources[0].index_dir(spec.slug)
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
    qs = queries_for(a.corpus, a.batch * a.runs + 8)
    batches = [qs[i * a.batch:(i + 1) * a.batch] for i in range(a.runs)]
    out: dict = {"corpus": a.corpus, "rows": len(emb), "model": a.model, "batch": a.batch, "topk": a.topk}

    port = free_port()
    src = (work / "retrieval_server.py").read_text().replace("port=8000", f"port={port}")
    (work / "retrieval_server.py").write_text(src)
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, str(work / "retrieval_server.py"), "--index_path", str(work / "flat.index"),
                             "--corpus_path", str(work / "corpus.jsonl"), "--topk", str(a.topk), "--retriever_name",
                             "bert", "--retriever_model", a.model], cwd=work, env=env_with(a.ref_site),
                            stdout=open(work / "searchr1.log", "w"), stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/retrieve"
        wait_http(url, proc, 600, qs[-1:])
        out["searchr1_startup_s"] = time.time() - t0
        post(url, qs[-8:], a.topk)
        out["searchr1"] = measure_server(url, batches, a.topk)
    finally:
        stop(proc)

    addr = work / "medret.addr"
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "medret.cli", "serve", "--corpus", a.corpus, "--retriever", a.model,
                             "--pooling", a.pooling, "--address-file", str(addr), "--log-level", "warning"],
                            env=env_with(str(ROOT)), stdout=open(work / "medret.log", "w"), stderr=subprocess.STDOUT)
    try:
        while not addr.exists():
            if proc.poll() is not None:
                raise RuntimeError((work / "medret.log").read_text()[-2000:])
            time.sleep(0.05)
        url = f"http://{addr.read_text().strip()}/retrieve"
        wait_http(url, proc, 600, qs[-1:])
        out["medret_startup_s"] = time.time() - t0
        post(url, qs[-8:], a.topk)
        out["medret_http"] = measure_server(url, batches, a.topk)
    finally:
        stop(proc)
    from medret import get_retriever

    r = get_retriever(a.corpus, a.model, pooling=a.pooling)
    r.retrieve(qs[-8:], topk=a.topk)
    lat = []
    for b in batches:
        t = time.perf_counter()
        r.retrieve(b, topk=a.topk)
        lat.append(time.perf_counter() - t)
    out["medret_local"] = {"batch": a.batch, "runs": len(lat), "latencies_s": lat,
                           "qps": a.batch * len(lat) / sum(lat)}
    out["ratio_http"] = out["medret_http"]["qps"] / out["searchr1"]["qps"]
    out["ratio_local"] = out["medret_local"]["qps"] / out["searchr1"]["qps"]
    shutil.rmtree(work, ignore_errors=True)
    return out


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
lat, hits = [], []
for q in qs[1:]:
    t = time.perf_counter()
    texts, scores = rs.retrieve(q, k=int(sys.argv[5]))
    lat.append(time.perf_counter() - t)
    hits.append(len(texts))
print(json.dumps({"startup_s": startup, "n": len(lat), "latencies_s": lat, "qps": len(lat) / sum(lat),
                  "hits_per_query_min": min(hits), "hits_per_query_mean": sum(hits) / len(hits)}))
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
    qs = queries_for(str(db / "pubmed"), max(a.medrag_queries + 1, a.batch * a.runs + 8))
    (work / "q.json").write_text(json.dumps(qs[: a.medrag_queries + 1]))
    out: dict = {"db_dir": str(db), "model": a.model, "topk": a.topk, "batch": a.batch}
    from medret import get_retriever

    for name in names:
        key = name.lower()
        if key == "medcpt":
            emb_dir = build_placeholder_index(str(db / "pubmed"), a.model, a.pooling)
            write_medrag_index(db, emb_dir)
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-c", MEDRAG_LOOP, str(Path(a.medrag) / "src"), str(db),
                            str(work / "q.json"), name, str(a.topk)], cwd=work, env=env_with(a.ref_site),
                           capture_output=True, text=True)
        if p.returncode:
            raise SystemExit(f"MedRAG {name} failed: {p.stderr[-3000:]}")
        out[f"medrag_{key}"] = json.loads(p.stdout.strip().splitlines()[-1])
        out[f"medrag_{key}"]["process_s"] = time.perf_counter() - t
        t = time.perf_counter()
        kwargs = {"query_model": a.model} if key == "medcpt" else {}
        r = get_retriever("PubMed", "MedCPT" if key == "medcpt" else "BM25", db_dir=str(db), **kwargs)
        r.retrieve(qs[-2:], topk=a.topk)
        out[f"medret_{key}_startup_s"] = time.perf_counter() - t  # includes building medret's BM25 index if absent
        batches = [qs[i * a.batch:(i + 1) * a.batch] for i in range(a.runs)]
        lat = []
        for b in batches:
            t = time.perf_counter()
            r.retrieve(b, topk=a.topk)
            lat.append(time.perf_counter() - t)
        out[f"medret_{key}"] = {"batch": a.batch, "runs": len(lat), "latencies_s": lat,
                                "qps": a.batch * len(lat) / sum(lat)}
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
    ap.add_argument("--ref-site", default=None, help="folder with the reference projects' extra packages")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--topk", type=int, default=5)
    ap.add_argument("--medrag-queries", type=int, default=20)
    ap.add_argument("--retrievers", default="MedCPT,BM25", help="MedRAG retriever names to compare (MedCPT, BM25)")
    ap.add_argument("--tag", default="", help="suffix of the output file name")
    ap.add_argument("--out", default=os.environ.get("OUT", "vs-reference-out"))
    a = ap.parse_args(argv)
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
