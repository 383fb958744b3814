import json
import subprocess
import sys

from medret.cli import main


def test_search_prints_topk_with_scores(toy_corpus, capsys):
    assert main(["search", "sepsis in elderly ICU patients", "--corpus", str(toy_corpus), "--topk", "2"]) == 0
    out = capsys.readouterr().out
    assert "query: sepsis in elderly ICU patients" in out
    assert "1. [" in out and "toy_a_0 | Sepsis" in out and "3. [" not in out


def test_search_json_is_searchr1_shape(toy_corpus, capsys):
    assert main(["search", "creatinine", "stroke", "--corpus", str(toy_corpus), "--topk", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [row[0]["document"]["id"] for row in out["result"]] == ["toy_a_4", "toy_b_0"]


def test_bad_input_exits_nonzero_with_the_message(toy_corpus, capsys):
    assert main(["search", "x", "--corpus", str(toy_corpus), "--topk", "0"]) == 1
    assert "topk=0 is out of range" in capsys.readouterr().err
    assert main(["search", "x", "--corpus", "Nope"]) == 1
    assert "corpus_name='Nope' is unknown" in capsys.readouterr().err


def test_corpus_info_reports_rows_and_indexes(toy_corpus, capsys):
    main(["search", "sepsis", "--corpus", str(toy_corpus)])
    capsys.readouterr()
    assert main(["corpus", "info", "--corpus", str(toy_corpus), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["rows"] == 8 and info["sources"][0]["chunk_files"] == 2 and info["bm25"]["built"]
    assert info["flat_768_bytes"] == {"fp32": 8 * 768 * 4, "fp16": 8 * 768 * 2}


def test_corpus_info_lists_medrag_precomputed_embeddings(toy_corpus, capsys):
    """MedRAG's embedding/*.npy (no faiss.index) is an index the searchers serve: `corpus info` lists it too; an
    e5 folder in MedRAG's layout is not one (MedRAG published none; e5 always gets medret's own index)."""
    import numpy as np

    medcpt = toy_corpus / "index" / "ncbi" / "MedCPT-Article-Encoder" / "embedding"
    medcpt.mkdir(parents=True)
    np.save(medcpt / "toy_a.npy", np.ones((5, 4), np.float32))
    np.save(medcpt / "toy_b.npy", np.ones((3, 4), np.float32))
    e5 = toy_corpus / "index" / "intfloat" / "e5-base-v2" / "embedding"
    e5.mkdir(parents=True)
    np.save(e5 / "toy_a.npy", np.ones((5, 4), np.float32))
    assert main(["corpus", "info", "--corpus", str(toy_corpus), "--json"]) == 0
    (ix,) = json.loads(capsys.readouterr().out)["sources"][0]["indexes"]
    assert ix == {"kind": "medrag-embeddings", "name": "ncbi/MedCPT-Article-Encoder", "path": str(medcpt.parent),
                  "disk_bytes": sum(p.stat().st_size for p in medcpt.iterdir()), "embedding_files": 2,
                  "retrievers": "MedCPT"}
    assert main(["corpus", "info", "--corpus", str(toy_corpus)]) == 0
    assert "index medrag-embeddings ncbi/MedCPT-Article-Encoder: " in capsys.readouterr().out


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "medret.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "search" in out.stdout and "index" in out.stdout


def test_index_build_builds_store_and_bm25_then_rebuilds(toy_corpus, capsys):
    assert main(["index", "build", "--corpus", str(toy_corpus), "--retriever", "BM25"]) == 0
    out = capsys.readouterr().out
    assert "document store: toy, 8 snippets" in out and "BM25 index:" in out
    manifest = toy_corpus / "medret" / "bm25" / "manifest.json"
    first = manifest.stat().st_mtime_ns
    assert main(["index", "build", "--corpus", str(toy_corpus), "--retriever", "BM25"]) == 0
    assert manifest.stat().st_mtime_ns == first  # nothing to do
    assert main(["index", "build", "--corpus", str(toy_corpus), "--retriever", "BM25", "--rebuild"]) == 0
    assert manifest.stat().st_mtime_ns != first


def test_index_build_dense_then_search(toy_corpus, tiny_bert_dir, capsys):
    args = ["--corpus", str(toy_corpus), "--retriever", str(tiny_bert_dir), "--pooling", "cls"]
    assert main(["index", "build", *args]) == 0
    assert "index (flat) for toy" in capsys.readouterr().out
    assert main(["search", "sepsis", *args, "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["result"][0]) == 3


def test_cli_logs_nothing_below_warning_by_default(toy_corpus, tmp_path):
    # bm25s sets its own logger to DEBUG; the CLI must still print only warnings and errors without -v
    env = dict(__import__("os").environ, MEDRET_CACHE=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, "-m", "medret", "search", "sepsis", "--corpus", str(toy_corpus)],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0 and "toy_a_0" in out.stdout
    assert "DEBUG" not in out.stderr and "INFO" not in out.stderr, out.stderr


def test_index_build_fp32_stores_float32(toy_corpus, tiny_bert_dir):
    import numpy as np

    args = ["--corpus", str(toy_corpus), "--retriever", str(tiny_bert_dir), "--pooling", "cls"]
    assert main(["index", "build", *args, "--fp32"]) == 0
    chunks = sorted((toy_corpus / "medret" / "index").rglob("emb_*.npy"))
    assert chunks and all(np.load(c).dtype == np.float32 for c in chunks)
