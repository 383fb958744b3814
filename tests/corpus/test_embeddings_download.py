"""`medret corpus download ... --embeddings MedCPT` against local stand-ins for the hub (chunk files) and for MedRAG's
archive host (a zip of ``embedding/<chunk file>.npy``, built here the way MedRAG's archives are laid out), then a
search over the unpacked embeddings compared with brute force."""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from medret import cli
from medret.corpus import embeddings as emb
from medret.errors import ConfigError
from medret.fetch.files import human_bytes
from medret.storage.vectors import RECORD as VERIFIED
from tests.conftest import install_downloaded
from tests.hubfake import DownServer, FakeHub, hub_env

DIM = 32  # the tiny BERT's width, so its query vectors meet these document vectors
STEMS = {"Anatomy_Gray": 7, "Biochemistry_Lippincott": 5, "Empty_Notes": 0, "Pharmacology_Katzung": 9}
MODEL = "ncbi/MedCPT-Article-Encoder"
ARCHIVE_PATH = f"textbooks/{MODEL}/embedding.zip"


def chunk_bytes(stem: str, n: int) -> bytes:
    words = ["sepsis", "mortality", "elderly", "icu", "patients", "heart", "failure", "delirium", "pneumonia"]
    lines = [json.dumps({"id": f"{stem}_{i}", "title": stem, "content": " ".join(words[i % 9:] + words[:i % 9]),
                         "contents": f"{stem}. text"}) for i in range(n)]
    return ("\n".join(lines) + "\n").encode() if n else b""


@pytest.fixture(scope="module")
def vectors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {stem: rng.standard_normal((n, DIM)).astype(np.float32) for stem, n in STEMS.items() if n}


def make_archive(vectors: dict[str, np.ndarray], compression=zipfile.ZIP_STORED) -> bytes:
    """MedRAG's archive layout: an ``embedding/`` folder of one ``<stem>.npy`` per non-empty chunk file."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as z:
        z.writestr("embedding/", b"")
        for stem, arr in sorted(vectors.items()):
            npy = io.BytesIO()
            np.save(npy, arr)
            z.writestr(f"embedding/{stem}.npy", npy.getvalue())
    return buf.getvalue()


@pytest.fixture
def hosts(vectors, monkeypatch, tmp_path):
    chunks = {f"chunk/{stem}.jsonl": chunk_bytes(stem, n) for stem, n in STEMS.items()}
    h = FakeHub({("dataset", "MedRAG/textbooks"): chunks}, static={ARCHIVE_PATH: make_archive(vectors)})
    hub_env(monkeypatch, h.endpoint, tmp_path / "hf_home")
    monkeypatch.setenv(emb.MIRROR_ENV, f"{h.endpoint}/mirror")
    yield h
    h.close()


def download(db: Path, *extra: str) -> int:
    return cli.main(["corpus", "download", "Textbooks", "--db-dir", str(db), "--embeddings", "MedCPT",
                     "--no-progress", *extra])


def target(db: Path) -> Path:
    return db / "textbooks" / "index" / MODEL / "embedding"


def assert_unpacked(db: Path, vectors) -> None:
    got = target(db)
    # none for the empty file; the record that every vector was checked once (medret.storage.vectors)
    assert sorted(p.name for p in got.iterdir()) == sorted([f"{s}.npy" for s in vectors] + [VERIFIED])
    for stem, arr in vectors.items():
        np.testing.assert_array_equal(np.load(got / f"{stem}.npy"), arr)
    assert not (got.parent / "embedding.zip").exists()
    assert [p.name for p in got.parent.iterdir() if p.name.startswith(".") and p.name != emb.RECORD] == []


def test_download_unpack_then_search_matches_brute_force(hosts, vectors, tiny_bert_dir, tmp_path, capsys):
    import torch
    from transformers import AutoModel, AutoTokenizer

    db = tmp_path / "db"
    assert download(db) == 0
    out = capsys.readouterr().out
    assert "ncbi/MedCPT-Article-Encoder embeddings fetched" in out and "3 files, 21 rows" in out
    assert_unpacked(db, vectors)
    query = "sepsis mortality in elderly icu patients"
    rc = cli.main(["search", query, "--corpus", "Textbooks", "--db-dir", str(db), "--retriever", "MedCPT",
                   "--query-model", str(tiny_bert_dir), "--device", "cpu", "--topk", "6", "--json"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)["result"][0]
    # brute force: the query's CLS vector against every row, rows in MedRAG's order (sorted file names)
    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    model = AutoModel.from_pretrained(tiny_bert_dir).eval()
    with torch.no_grad():
        q = model(**tok(query, return_tensors="pt", truncation=True, max_length=64)).last_hidden_state[0, 0].numpy()
    ids = [f"{stem}_{i}" for stem in sorted(vectors) for i in range(len(vectors[stem]))]
    scores = np.concatenate([vectors[s] for s in sorted(vectors)]).astype(np.float64) @ q.astype(np.float64)
    order = np.argsort(-scores, kind="stable")[:6]
    assert [h["document"]["id"] for h in result] == [ids[i] for i in order]
    np.testing.assert_allclose([h["score"] for h in result], scores[order], rtol=1e-4, atol=1e-4)
    # a second run finds everything in place and fetches nothing
    n = len(hosts.log)
    assert download(db) == 0
    assert "embeddings already here" in capsys.readouterr().out
    assert not [e for e in hosts.log[n:] if e["path"].startswith(("/mirror/", "/blob/"))]


def test_dropped_connection_and_earlier_partial_archive_resume(hosts, vectors, tmp_path):
    db = tmp_path / "db"
    data = hosts.static[ARCHIVE_PATH]
    part = db / "textbooks" / "index" / MODEL / ".embedding.zip.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:500])  # an earlier run was killed after 500 bytes
    hosts.drop_once[f"/blob/{ARCHIVE_PATH}"] = len(data) // 2  # and this one loses its connection half-way
    assert download(db) == 0
    assert [e["range"] for e in hosts.gets("/blob/")] == ["bytes=500-", f"bytes={len(data) // 2}-"]
    assert_unpacked(db, vectors)


def test_damaged_archive_is_deleted_and_nothing_is_unpacked(hosts, vectors, tmp_path, capsys):
    db = tmp_path / "db"
    data = hosts.static[ARCHIVE_PATH]
    hosts.flip[f"/blob/{ARCHIVE_PATH}"] = len(data) // 2  # inside a member's data: only its CRC-32 can tell
    assert download(db) == 1
    err = capsys.readouterr().err
    assert "damaged" in err and "CRC" in err and "run the same command again" in err
    index_dir = db / "textbooks" / "index" / MODEL
    assert not target(db).exists() and not (index_dir / "embedding.zip").exists()
    assert [p.name for p in index_dir.iterdir()] == []  # no temporary folder left behind
    hosts.flip.clear()
    assert download(db) == 0
    assert_unpacked(db, vectors)


def test_embeddings_of_other_chunk_files_are_refused(hosts, vectors, tmp_path, capsys):
    db = tmp_path / "db"
    wrong = dict(vectors, Anatomy_Gray=vectors["Anatomy_Gray"][:-1])  # one row short
    hosts.static[ARCHIVE_PATH] = make_archive(wrong, zipfile.ZIP_DEFLATED)
    assert download(db) == 1
    err = capsys.readouterr().err
    assert "Anatomy_Gray.npy has 6 rows but chunk/Anatomy_Gray.jsonl has 7 snippets" in err
    assert "medret index build" in err and not target(db).exists()
    missing = {k: v for k, v in vectors.items() if k != "Pharmacology_Katzung"}
    hosts.static[ARCHIVE_PATH] = make_archive(missing)
    (target(db).parent / "embedding.zip").unlink()
    assert download(db) == 1
    assert "1 chunk files have no embeddings (e.g. Pharmacology_Katzung.jsonl)" in capsys.readouterr().err


def test_archive_with_nan_rows_is_refused_and_deleted(hosts, vectors, tmp_path, capsys):
    """Issue 24 item 10: precomputed embeddings with NaN rows are never unpacked (their scores would sort first)."""
    db = tmp_path / "db"
    bad = {stem: arr.copy() for stem, arr in vectors.items()}
    bad["Pharmacology_Katzung"][2:5] = np.nan
    hosts.static[ARCHIVE_PATH] = make_archive(bad)
    assert download(db) == 1
    err = capsys.readouterr().err
    assert "Pharmacology_Katzung.npy rows 2..4: not finite (NaN or inf)" in err and "medret index build" in err
    assert not target(db).exists() and not (target(db).parent / "embedding.zip").exists()


def test_medrags_own_folder_with_nan_rows_is_refused_by_search_and_doctor(hosts, vectors, tiny_bert_dir, tmp_path,
                                                                          capsys):
    db = tmp_path / "db"
    assert cli.main(["corpus", "download", "Textbooks", "--db-dir", str(db), "--no-progress"]) == 0
    folder = target(db)
    folder.mkdir(parents=True)
    for stem, arr in vectors.items():
        arr = arr.copy()
        if stem == "Anatomy_Gray":
            arr[3] = np.nan
        np.save(folder / f"{stem}.npy", arr)
    common = ["--corpus", "Textbooks", "--db-dir", str(db), "--retriever", "MedCPT", "--query-model",
              str(tiny_bert_dir), "--device", "cpu"]
    capsys.readouterr()
    assert cli.main(["search", "sepsis", *common, "--topk", "3", "--json"]) == 1
    err = capsys.readouterr().err
    assert "MedRAG's embeddings" in err and "Anatomy_Gray.npy row 3: not finite" in err
    assert cli.main(["doctor", *common, "--no-search", "--json"]) == 1
    checks = json.loads(capsys.readouterr().out)["checks"]
    [bad] = [c for c in checks if c["key"] == "index" and c["status"] == "fail"]
    assert "Anatomy_Gray.npy row 3: not finite" in bad["detail"]


def test_medrags_own_folder_is_checked_and_kept(hosts, vectors, tmp_path, capsys):
    db = tmp_path / "db"
    assert cli.main(["corpus", "download", "Textbooks", "--db-dir", str(db), "--no-progress"]) == 0
    folder = target(db)
    folder.mkdir(parents=True)
    for stem, arr in vectors.items():
        np.save(folder / f"{stem}.npy", arr)
    assert download(db) == 0
    assert "already here (checked)" in capsys.readouterr().out
    assert hosts.gets("/mirror/") == []
    # a damaged one is replaced by the archive's
    np.save(folder / "Anatomy_Gray.npy", vectors["Anatomy_Gray"][:3])
    (folder.parent / emb.RECORD).unlink()
    assert download(db) == 0
    assert_unpacked(db, vectors)


def test_names_statpearls_and_listing(hosts, vectors, tmp_path, capsys):
    assert [s.name for s in emb.embedding_specs(["RRF-4"])] == ["Contriever", "SPECTER", "MedCPT"]
    assert [s.name for s in emb.embedding_specs(["medcpt", "RRF-2"])] == ["MedCPT"]
    for bad in (["e5"], ["BM25"], ["nope"]):
        with pytest.raises(ConfigError):
            emb.embedding_specs(bad)
    db = tmp_path / "db"
    assert cli.main(["corpus", "download", "Textbooks", "--db-dir", str(db), "--embeddings", "e5"]) == 1
    assert "MedCPT, Contriever and SPECTER" in capsys.readouterr().err and hosts.log == []
    [sp] = emb.download_embeddings(["statpearls"], ["MedCPT"], db)
    assert sp.status == "unavailable" and hosts.log == []
    assert emb.archive_url("pubmed", MODEL, mirror=None).startswith(f"{hosts.endpoint}/mirror/pubmed/{MODEL}/")
    assert download(db, "--list", "--json") == 0
    [item] = json.loads(capsys.readouterr().out)["embeddings"]
    assert item["status"] == "to fetch" and item["url"] == f"{hosts.endpoint}/mirror/{ARCHIVE_PATH}"
    # the size the host gives for the archive, and as much again unpacked: what the download itself checks
    assert item["size_from"] == "host" and item["estimated_bytes"] == 2 * len(make_archive(vectors))
    assert not (db / "textbooks" / "index").exists()


def test_listing_without_an_answer_from_the_host_estimates_from_medrags_counts(hosts, tmp_path, capsys, monkeypatch):
    down = DownServer()
    try:
        monkeypatch.setenv(emb.MIRROR_ENV, f"{down.endpoint}/mirror")
        assert download(tmp_path / "db", "--list") == 0
        out = capsys.readouterr().out
        assert f"about {human_bytes(2 * 125_847 * 768 * 4)} with the archive (estimated" in out  # Textbooks' rows
        assert down.paths == [f"/mirror/{ARCHIVE_PATH}"]
    finally:
        down.close()


def test_listing_names_the_statpearls_url_that_will_be_used(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MEDRET_STATPEARLS_URL", "http://127.0.0.1:9/sp.tar.gz")
    assert cli.main(["corpus", "download", "StatPearls", "--db-dir", str(tmp_path), "--list"]) == 0
    assert "StatPearls: http://127.0.0.1:9/sp.tar.gz (" in capsys.readouterr().out
    assert cli.main(["corpus", "download", "StatPearls", "--db-dir", str(tmp_path), "--list",
                     "--statpearls-url", "http://127.0.0.1:9/other.tar.gz"]) == 0
    assert "StatPearls: http://127.0.0.1:9/other.tar.gz (" in capsys.readouterr().out


def test_missing_index_errors_name_the_embeddings_download(hosts, tiny_bert_dir, tmp_path, capsys):
    assert emb.fetch_hint("pubmed", MODEL, "/d") == "medret corpus download PubMed --db-dir /d --embeddings MedCPT"
    assert emb.fetch_hint("statpearls", MODEL, "/d") is None
    assert emb.fetch_hint("wikipedia", "allenai/specter", None).endswith("--db-dir DIR --embeddings SPECTER")
    db = tmp_path / "db"
    assert cli.main(["corpus", "download", "Textbooks", "--db-dir", str(db), "--no-progress"]) == 0
    assert cli.main(["index", "build", "--corpus", "Textbooks", "--db-dir", str(db), "--retriever", "BM25"]) == 0
    from medret import get_retriever
    from medret.errors import IndexBuildError

    with pytest.raises(IndexBuildError) as e:
        get_retriever(corpus_name="Textbooks", retriever_name="MedCPT", db_dir=str(db), device="cpu",
                      query_model=str(tiny_bert_dir), auto_build=False)
    assert f"medret corpus download Textbooks --db-dir {db} --embeddings MedCPT" in str(e.value)


def test_index_build_uses_medrags_embeddings_and_encodes_nothing(hosts, vectors, tiny_bert_dir, tmp_path, capsys,
                                                                 monkeypatch):
    """`medret index build` after `--embeddings MedCPT`: MedRAG's vectors are the flat index, nothing is encoded (it
    encoded every source again, issue 14's walkthrough); another index type, or --rebuild, builds medret's own."""
    models = tmp_path / "models"
    for mid in (MODEL, "ncbi/MedCPT-Query-Encoder"):
        install_downloaded(tiny_bert_dir, models, mid)
    monkeypatch.setenv("MEDRET_MODELS_DIR", str(models))
    db = tmp_path / "db"
    assert download(db) == 0
    capsys.readouterr()
    build = ["index", "build", "--corpus", "Textbooks", "--retriever", "MedCPT", "--db-dir", str(db), "--device", "cpu"]
    assert cli.main(build) == 0
    assert "MedRAG's precomputed embeddings in" in capsys.readouterr().out
    assert not (db / "textbooks" / "medret" / "index").exists()
    assert cli.main([*build, "--index-type", "hnsw"]) == 0
    assert "MedCPT index (hnsw) for textbooks" in capsys.readouterr().out
    (own,) = [p for p in (db / "textbooks" / "medret" / "index").iterdir() if not p.name.startswith(".")]
    assert json.loads((own / "manifest.json").read_text())["count"] == sum(len(v) for v in vectors.values())
