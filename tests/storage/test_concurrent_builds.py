"""Issue 13 item 7: several processes building the same new store / BM25 / dense index at once.

The break reproduced: three processes auto-building the same dense index; two died with FileNotFoundError on
``.<name>.partial/emb_000000.npy`` and left the partial folder. With a lock per artifact, the others wait for the
first build and then open its result.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import write_chunks

N_PROCS = 3
QUERIES = ["sepsis mortality in elderly patients", "renal failure creatinine", "stroke anticoagulation"]
WORDS = ("sepsis mortality elderly patients renal failure creatinine stroke anticoagulation delirium pneumonia "
         "insulin potassium fluids pressure heart lung kidney infection risk treatment").split()

# Each process: the document store, the BM25 index and a dense index (real tiny BERT, 100-row chunks so the
# build is a sequence of writes another process can collide with), as the engine builds them, then a search.
RACE = r"""
import json, sys, time
from pathlib import Path
corpus, model, barrier, n, me = sys.argv[1:6]
import torch, transformers  # the slow imports happen before the start line
from medret import get_retriever
from medret.corpus.registry import resolve_corpus
from medret.corpus.store import open_corpus_store
from medret.config import EngineOptions
from medret.encoders.specs import resolve_spec
from medret.index.dense_build import build_dense_index
Path(barrier, "ready-" + me).touch()
while len(list(Path(barrier).glob("ready-*"))) < int(n):
    time.sleep(0.002)
c = resolve_corpus(corpus, None)
store = open_corpus_store(c)
spec = resolve_spec(model, pooling="cls")
build_dense_index(store, c.sources[0].artifact_dir / "index" / spec.slug,
                  EngineOptions(retriever_name=model, pooling="cls", device="cpu", batch_size=16), chunk_rows=100,
                  progress=False)
get_retriever(corpus_name=corpus, retriever_name="BM25").search(["sepsis"], 1)
r = get_retriever(corpus_name=corpus, retriever_name="BM25+" + model, pooling="cls", device="cpu")
print(json.dumps(r.retrieve(json.loads(sys.argv[6]), topk=5, return_scores=True), sort_keys=True))
"""


def corpus_of(folder: Path, files: int = 3, per_file: int = 1000) -> Path:
    chunks = {}
    for f in range(files):
        docs = []
        for i in range(per_file):
            words = [WORDS[(i * 7 + f * 3 + j * j) % len(WORDS)] for j in range(12)]
            docs.append((f"Topic {f}-{i}", " ".join(words) + f" case {f}-{i}."))
        chunks[f"part_{f}"] = docs
    return write_chunks(folder, chunks)


def leftovers(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*") if ".tmp-" in p.name or ".old-" in p.name or p.name.endswith(
        ".partial") or p.name.endswith(".sha256")]


def test_processes_searching_a_new_corpus_at_once_all_succeed_with_one_build(tmp_path, tiny_bert_dir):
    corpus = corpus_of(tmp_path / "race", files=3, per_file=500)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    procs = [subprocess.Popen([sys.executable, "-c", RACE, str(corpus), str(tiny_bert_dir), str(barrier),
                               str(N_PROCS), str(i), json.dumps(QUERIES)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for i in range(N_PROCS)]
    results = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]
    answers = [json.loads(out) for out, _ in results]
    assert all(a == answers[0] for a in answers[1:])
    assert [len(row) for row in answers[0]["result"]] == [5, 5, 5]
    assert leftovers(corpus / "medret") == []
    # one of each artifact, and what they hold is what a fresh single process computes
    assert (corpus / "medret" / "store" / "manifest.json").is_file()
    assert (corpus / "medret" / "bm25" / "manifest.json").is_file()
    [dense] = [p for p in (corpus / "medret" / "index").iterdir() if p.is_dir()]
    assert json.loads((dense / "manifest.json").read_text())["count"] == 1500
    from medret import clear_cache, get_retriever

    again = get_retriever(corpus_name=str(corpus), retriever_name=f"BM25+{tiny_bert_dir}", pooling="cls",
                          device="cpu").retrieve(QUERIES, topk=5, return_scores=True)
    clear_cache()
    assert json.loads(json.dumps(again, sort_keys=True)) == answers[0]


def test_concurrent_index_build_commands(tmp_path):
    corpus = corpus_of(tmp_path / "cli", files=2, per_file=2000)
    cmd = [sys.executable, "-m", "medret", "index", "build", "--corpus", str(corpus), "--retriever", "BM25"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        assert "document store: cli, 4000 snippets" in out and "BM25 index:" in out
    assert leftovers(corpus / "medret") == []
    out = subprocess.run([sys.executable, "-m", "medret", "search", "renal failure", "--corpus", str(corpus),
                          "--json"], capture_output=True, text=True)
    assert out.returncode == 0 and len(json.loads(out.stdout)["result"][0]) == 3
