"""The cross-encoder for offline nodes: `medret models download MedCPT-Cross-Encoder` (against a local stand-in for
the hub), then reranking with the hub gone; and `medret doctor`'s reranker line (present, a one-label
sequence-classification model, loads and scores)."""
from __future__ import annotations

import json
import shutil

from medret import cli, get_retriever
from medret.encoders import download as md
from tests.hubfake import DownServer, FakeHub, hub_env
from tests.rerank.reference import QUERIES, assert_same

CROSS_ID = "ncbi/MedCPT-Cross-Encoder"


def first_stage(queries, depth):
    return [[h["document"] for h in row] for row in get_retriever("sample", "BM25").retrieve(queries, depth)["result"]]


def test_required_model_of_the_named_cross_encoder():
    assert [(n.retriever, n.role, n.model_id) for n in md.required_models("MedCPT-Cross-Encoder")] == \
        [("MedCPT-Cross-Encoder", "reranker", CROSS_ID)]
    assert [n.model_id for n in md.required_models("ms-marco-MiniLM-L12-v2")] == \
        ["cross-encoder/ms-marco-MiniLM-L12-v2"]


def test_download_then_rerank_offline(cross_encoder_dir, reference, tmp_path, monkeypatch, capsys):
    files = {p.name: p.read_bytes() for p in cross_encoder_dir.iterdir() if p.is_file()}
    hub = FakeHub({("model", CROSS_ID): files})
    hub_env(monkeypatch, hub.endpoint, tmp_path / "hf_home")
    dest = tmp_path / "models"
    try:
        assert cli.main(["models", "download", "MedCPT-Cross-Encoder", "--dir", str(dest), "--no-progress"]) == 0
    finally:
        hub.close()
    assert f"--models-dir {dest}" in capsys.readouterr().out
    for name, data in files.items():
        assert (dest / CROSS_ID / name).read_bytes() == data
    with DownServer() as down:
        monkeypatch.setenv("HF_ENDPOINT", down.endpoint)
        r = get_retriever("sample", "BM25", reranker="MedCPT-Cross-Encoder", models_dir=str(dest), rerank_depth=10)
        assert_same(r.retrieve(QUERIES, 3, True), reference.rerank(QUERIES, first_stage(QUERIES, 10), 3))
        assert r.info()["reranker"] == "MedCPT-Cross-Encoder"
        assert down.asked_for(CROSS_ID) == []


def doctor(capsys, *argv):
    rc = cli.main(["doctor", "--json", "--corpus", "sample", "--retriever", "BM25", "--device", "cpu", *argv])
    checks = [c for c in json.loads(capsys.readouterr().out)["checks"] if c["key"] == "reranker"]
    return rc, checks


def test_doctor_checks_the_cross_encoder(cross_encoder_dir, tiny_bert_dir, tmp_path, monkeypatch, capsys):
    rc, [c] = doctor(capsys, "--reranker", str(cross_encoder_dir))
    assert c["status"] == "ok" and c["title"].startswith(f"cross-encoder {cross_encoder_dir.name} loads from "
                                                         f"{cross_encoder_dir} on cpu and scores a pair")
    rc, [c] = doctor(capsys, "--reranker", str(tiny_bert_dir))
    assert rc == 1 and c["status"] == "fail" and "is not a cross-encoder" in c["title"]
    assert "architectures=['BertModel']" in c["detail"] and "num_labels=1" in c["fix"]
    # the named one, not downloaded, the hub down: a fail with the offline fix; once in --models-dir: ok
    with DownServer() as down:
        hub_env(monkeypatch, down.endpoint, tmp_path / "hf_home")
        rc, [c] = doctor(capsys, "--reranker", "MedCPT-Cross-Encoder", "--models-dir", str(tmp_path / "m"))
        assert rc == 1 and c["status"] == "fail" and "hub cannot be reached" in c["title"]
        assert "medret models download MedCPT-Cross-Encoder" in c["fix"]
        shutil.copytree(cross_encoder_dir, tmp_path / "m" / CROSS_ID)
        rc, [c] = doctor(capsys, "--reranker", "MedCPT-Cross-Encoder", "--models-dir", str(tmp_path / "m"))
        assert c["status"] == "ok" and str(tmp_path / "m" / CROSS_ID) in c["title"]
    rc, checks = doctor(capsys)
    assert checks == []  # no rerank stage, no line
