"""`medret models download` against a local stand-in for the hub, then offline loading through the normal path;
and the loader's behaviour when the hub cannot be reached (one request, one message, no retry storm)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medret import cli
from medret.encoders import download as md
from medret.encoders.locate import DOWNLOAD_RECORD, model_location
from medret.errors import ConfigError, MedretError
from tests.conftest import TOY_DOCS, install_downloaded, write_chunks
from tests.hubfake import COMMIT, DownServer, FakeHub, hub_env

QUERY_ID, DOC_ID = "ncbi/MedCPT-Query-Encoder", "ncbi/MedCPT-Article-Encoder"
# files a hub model repository often has besides what from_pretrained needs: none of them may be fetched
DECOYS = {"pytorch_model.bin": b"\x80" * 4096, "tf_model.h5": b"h5" * 3000, "flax_model.msgpack": b"m" * 3000,
          "onnx/model.onnx": b"o" * 3000, "1_Pooling/config.json": b"{}", ".gitattributes": b"*.bin lfs\n"}


def folder_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.fixture(scope="module")
def models(tiny_bert_dir, tmp_path_factory) -> dict[str, Path]:
    """The query encoder (the session's tiny BERT) and an article encoder with other weights, both saved with
    save_pretrained."""
    import torch
    from transformers import AutoModel

    article = tmp_path_factory.mktemp("tiny-article")
    torch.manual_seed(1)
    m = AutoModel.from_pretrained(tiny_bert_dir)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    m.save_pretrained(article)
    for name in os.listdir(tiny_bert_dir):
        if name.startswith(("tokenizer", "special_tokens", "vocab")):
            shutil.copy(Path(tiny_bert_dir) / name, article / name)
    return {QUERY_ID: Path(tiny_bert_dir), DOC_ID: article}


@pytest.fixture
def hub(models, monkeypatch, tmp_path):
    repos = {("model", mid): {**folder_files(folder), **DECOYS} for mid, folder in models.items()}
    h = FakeHub(repos)
    hub_env(monkeypatch, h.endpoint, tmp_path / "hf_home")
    yield h
    h.close()


def download_cli(*argv: str) -> int:
    return cli.main(["models", "download", *argv, "--no-progress"])


def medcpt_reference(models: dict[str, Path], query: str, docs: list[tuple[str, str]], k: int):
    """Brute force with transformers directly: CLS of the query encoder (max 64 tokens) against CLS of the article
    encoder over (title, content) pairs, inner product."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    def cls(folder: Path, *texts, max_length: int) -> np.ndarray:
        tok = AutoTokenizer.from_pretrained(folder)
        model = AutoModel.from_pretrained(folder).eval()
        enc = tok(*texts, return_tensors="pt", truncation=True, max_length=max_length, return_token_type_ids=True)
        with torch.no_grad():
            return model(**enc).last_hidden_state[0, 0].numpy().astype(np.float64)

    q = cls(models[QUERY_ID], query, max_length=64)
    d = np.stack([cls(models[DOC_ID], t, c, max_length=512) for t, c in docs])
    scores = d @ q
    order = np.argsort(-scores, kind="stable")[:k]
    return order.tolist(), scores[order]


def test_required_models_of_each_retriever(tiny_bert_dir):
    need = lambda r: [(n.retriever, n.role, n.model_id) for n in md.required_models(r)]  # noqa: E731
    assert need("MedCPT") == [("MedCPT", "query", QUERY_ID), ("MedCPT", "doc", DOC_ID)]
    assert need("RRF-4") == [("Contriever", "query+doc", "facebook/contriever"),
                             ("SPECTER", "query+doc", "allenai/specter"),
                             ("MedCPT", "query", QUERY_ID), ("MedCPT", "doc", DOC_ID)]
    assert need("RRF-2") == need("MedCPT") == need("bm25+MedCPT+medcpt")
    assert need("e5") == [("e5", "query+doc", "intfloat/e5-base-v2")]
    assert need("BM25") == [] and need(str(tiny_bert_dir)) == []
    with pytest.raises(ConfigError):
        md.required_models("NoSuchRetriever")


def test_download_then_search_offline_matches_brute_force(hub, models, tmp_path, monkeypatch, capsys):
    dest = tmp_path / "models"
    assert download_cli("MedCPT", "--dir", str(dest)) == 0
    out = capsys.readouterr().out
    assert f"--models-dir {dest}" in out
    for mid, folder in models.items():
        got = dest / mid
        # exactly what from_pretrained needs: the saved files, none of the other frameworks' weights or sub-folders
        assert sorted(p.name for p in got.iterdir()) == sorted(list(folder_files(folder)) + [DOWNLOAD_RECORD])
        for name, data in folder_files(folder).items():
            assert (got / name).read_bytes() == data
        record = json.loads((got / DOWNLOAD_RECORD).read_text())
        assert record["complete"] is True and record["revision"] == COMMIT
    fetched = {e["path"].rsplit("/", 1)[-1] for e in hub.log if e["method"] == "GET" and "/api/" not in e["path"]}
    assert not fetched & {"pytorch_model.bin", "tf_model.h5", "flax_model.msgpack", "model.onnx", ".gitattributes"}

    # the hub goes away: the models load from DIR through --models-dir, and the hub is never asked
    hub.close()
    with DownServer() as down:
        monkeypatch.setenv("HF_ENDPOINT", down.endpoint)
        corpus = write_chunks(tmp_path / "toy", {"toy": TOY_DOCS})
        query = "sepsis mortality in elderly icu patients"
        rc = cli.main(["search", query, "--corpus", str(corpus), "--retriever", "MedCPT", "--device", "cpu",
                       "--models-dir", str(dest), "--topk", "4", "--json"])
        assert rc == 0
        result = json.loads(capsys.readouterr().out)["result"][0]
        order, scores = medcpt_reference(models, query, TOY_DOCS, 4)
        assert [h["document"]["id"] for h in result] == [f"toy_{i}" for i in order]
        np.testing.assert_allclose([h["score"] for h in result], scores, rtol=1e-4, atol=1e-4)
        # the same through MEDRET_MODELS_DIR and the Python API
        from medret import clear_cache, get_retriever

        clear_cache()
        monkeypatch.setenv("MEDRET_MODELS_DIR", str(dest))
        hits = get_retriever(corpus_name=str(corpus), retriever_name="MedCPT", device="cpu").search([query], 4)[0]
        assert [h.id for h in hits] == [f"toy_{i}" for i in order]
        assert down.asked_for(QUERY_ID) == down.asked_for(DOC_ID) == []


def test_default_folder_needs_no_flag(hub, models, tmp_path, monkeypatch, capsys):
    assert download_cli("MedCPT", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    root = Path(os.environ["MEDRET_CACHE"]) / "models"
    assert out["dir"] == str(root) and {m["model_id"] for m in out["models"]} == {QUERY_ID, DOC_ID}
    assert model_location(QUERY_ID) == str(root / QUERY_ID) and model_location(DOC_ID) == str(root / DOC_ID)


def test_dropped_connection_and_partial_file_resume_with_range(hub, models, tmp_path):
    dest = tmp_path / "models"
    weights = (models[QUERY_ID] / "model.safetensors").read_bytes()
    served = f"/lfs/model/{QUERY_ID}/model.safetensors"
    hub.drop_once[served] = len(weights) // 3
    # and the article encoder's weights were left half-written by an earlier, killed run
    doc_weights = (models[DOC_ID] / "model.safetensors").read_bytes()
    part = dest / DOC_ID / ".model.safetensors.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(doc_weights[:1000])
    assert download_cli("MedCPT", "--dir", str(dest)) == 0
    assert (dest / QUERY_ID / "model.safetensors").read_bytes() == weights
    assert (dest / DOC_ID / "model.safetensors").read_bytes() == doc_weights
    ranges = [e["range"] for e in hub.gets(served)]
    assert ranges[0] is None and ranges[1] == f"bytes={len(weights) // 3}-"
    assert [e["range"] for e in hub.gets(f"/lfs/model/{DOC_ID}/model.safetensors")] == ["bytes=1000-"]
    assert not part.exists()


def test_corrupted_file_is_refused_and_the_folder_is_not_used_until_complete(hub, models, tmp_path, capsys):
    dest = tmp_path / "models"
    served = f"/lfs/model/{QUERY_ID}/model.safetensors"
    hub.corrupt.add(served)
    assert download_cli("MedCPT", "--dir", str(dest)) == 1
    assert "sha256" in capsys.readouterr().err
    got = dest / QUERY_ID
    assert not (got / "model.safetensors").exists() and not (got / ".model.safetensors.part").exists()
    assert json.loads((got / DOWNLOAD_RECORD).read_text())["complete"] is False
    assert model_location(QUERY_ID, models_dir=dest) == QUERY_ID  # the half-downloaded folder is passed over
    hub.corrupt.clear()
    before = len(hub.log)
    assert download_cli("MedCPT", "--dir", str(dest)) == 0
    assert model_location(QUERY_ID, models_dir=dest) == str(got)
    # the first run had verified config.json (fetched in name order, before the weights): it is not fetched again
    again = [e["path"] for e in hub.log[before:] if e["method"] == "GET" and "/api/" not in e["path"]
             and QUERY_ID in e["path"]]
    assert sorted({p.rsplit("/", 1)[-1] for p in again}) == sorted(n for n in folder_files(models[QUERY_ID])
                                                                    if n != "config.json")
    n = len(hub.log)
    assert download_cli("MedCPT", "--dir", str(dest)) == 0  # complete: only the listing, no file transfers
    assert all("/api/" in e["path"] for e in hub.log[n:])


def test_list_shows_sizes_and_downloads_nothing(hub, models, tmp_path, capsys):
    dest = tmp_path / "models"
    assert download_cli("MedCPT", "--dir", str(dest), "--list", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    sizes = {f["path"]: f["size"] for f in out["models"][0]["files"]}
    assert sizes == {n: len(b) for n, b in folder_files(models[QUERY_ID]).items()}
    assert out["models"][0]["bytes_to_fetch"] == sum(sizes.values())
    assert not dest.exists()
    assert download_cli(str(models[QUERY_ID]), "--dir", str(dest)) == 0  # a local folder: nothing to do
    assert "no models to download" in capsys.readouterr().out


def test_download_without_the_hub_fails_once_with_the_fix(models, tmp_path, monkeypatch, capsys):
    with DownServer() as down:
        hub_env(monkeypatch, down.endpoint, tmp_path / "hf_home")
        assert download_cli("MedCPT", "--dir", str(tmp_path / "m")) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "login node" in err[0] and "--models-dir" in err[0]
        assert len(down.asked_for(QUERY_ID)) == 1 and down.asked_for(DOC_ID) == []
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MedretError, match="HF_HUB_OFFLINE"):
        md.download("MedCPT", tmp_path / "m")


def _search_subprocess(tmp_path: Path, env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    corpus = write_chunks(tmp_path / "toy", {"toy": TOY_DOCS})
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "MEDRET_MODELS_DIR", "HF_HUB_CACHE")}
    env.update({"HF_HOME": str(tmp_path / "empty_hf_home"), "NO_PROXY": "127.0.0.1,localhost",
                "no_proxy": "127.0.0.1,localhost", **env_extra})
    return subprocess.run([sys.executable, "-m", "medret.cli", "search", "sepsis", "--corpus", str(corpus),
                           "--retriever", "MedCPT", "--device", "cpu"], env=env, capture_output=True, text=True,
                          timeout=300)


def test_unreachable_hub_fails_at_once_with_one_message(tmp_path):
    """Before: every file was asked six times (five retries, each logged twice), ~50 s and ~45 log lines."""
    with DownServer() as down:
        proc = _search_subprocess(tmp_path, {"HF_ENDPOINT": down.endpoint})
        # one reachability request, no retries, and the article encoder is never reached
        assert len(down.asked_for(QUERY_ID)) == 1 and down.asked_for(DOC_ID) == []
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    msg = lines[0]
    assert msg.startswith("medret: error: cannot load the query model of retriever 'MedCPT'")
    assert "HTTP 503" in msg and "medret models download MedCPT --dir DIR" in msg
    assert "--models-dir DIR" in msg and "MEDRET_MODELS_DIR=DIR" in msg and "HF_HUB_OFFLINE=1" in msg


def test_closed_port_fails_with_one_line(tmp_path):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there: connection refused
    proc = _search_subprocess(tmp_path, {"HF_ENDPOINT": f"http://127.0.0.1:{port}"})
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot be reached" in lines[0] and "medret models download MedCPT" in lines[0]


def _put_in_hf_cache(hf_home: Path, model_id: str, folder: Path) -> None:
    """The Hugging Face cache layout (refs/main -> snapshots/<commit>/<files>) as the hub library writes it."""
    repo = hf_home / "hub" / ("models--" + model_id.replace("/", "--"))
    snap = repo / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    for name, data in folder_files(folder).items():
        (snap / name).write_bytes(data)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)


def test_model_in_the_hf_cache_loads_without_asking_the_hub(models, tmp_path, monkeypatch):
    from medret.encoders.hf import Encoder
    from medret.encoders.specs import resolve_spec

    with DownServer() as down:
        hub_env(monkeypatch, down.endpoint, tmp_path / "hf_home")
        for mid, folder in models.items():
            _put_in_hf_cache(tmp_path / "hf_home", mid, folder)
        enc = Encoder(resolve_spec("MedCPT"), "cpu")
        enc.encode_docs([{"title": "t", "content": "c"}])  # loads the document model too
        assert enc._part("query").location == QUERY_ID and enc.dim == 32
        assert down.asked_for(QUERY_ID) == down.asked_for(DOC_ID) == []
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the documented offline switch works the same
        assert Encoder(resolve_spec("MedCPT"), "cpu").dim == 32


# ------------------------------------------------------------------------------------------------ medret doctor


def _doctor(capsys, *argv: str) -> tuple[int, dict[str, list[dict]]]:
    rc = cli.main(["doctor", "--json", *argv])
    by_key: dict[str, list[dict]] = {}
    for c in json.loads(capsys.readouterr().out)["checks"]:
        by_key.setdefault(c["key"], []).append(c)
    return rc, by_key


def test_doctor_checks_every_model_of_the_retriever(models, tmp_path, monkeypatch, capsys):
    db = tmp_path / "db"
    write_chunks(db / "textbooks", {"Internal_Harrison": TOY_DOCS[:4], "Pharmacology_Katzung": TOY_DOCS[4:]})
    dest = tmp_path / "models"
    for mid, folder in models.items():
        install_downloaded(folder, dest, mid)
    args = ("--corpus", "Textbooks", "--db-dir", str(db), "--retriever", "MedCPT", "--device", "cpu",
            "--models-dir", str(dest))
    with DownServer() as down:
        hub_env(monkeypatch, down.endpoint, tmp_path / "hf_home")
        rc, checks = _doctor(capsys, *args)
        [q], [d] = checks["encoder"], checks["doc-encoder"]
        assert q["status"] == d["status"] == "ok"
        assert q["title"].startswith(f"query encoder MedCPT loads from {dest / QUERY_ID} on cpu (dim 32")
        assert d["title"].startswith(f"document encoder MedCPT loads from {dest / DOC_ID} on cpu (dim 32")

        # the article encoder is missing while the index still has to be built: that fails, at once
        shutil.rmtree(dest / DOC_ID)
        rc, checks = _doctor(capsys, *args)
        [d] = checks["doc-encoder"]
        assert rc == 1 and d["status"] == "fail" and "hub cannot be reached" in d["title"] and "503" in d["detail"]
        assert "medret models download MedCPT --dir DIR" in d["fix"]
        assert len(down.asked_for(DOC_ID)) == 1 and down.asked_for(QUERY_ID) == []

        # once the index is built, searching does not need it: a warning that says so
        install_downloaded(models[DOC_ID], dest, DOC_ID)
        from medret import clear_cache, get_retriever

        get_retriever(corpus_name="Textbooks", retriever_name="MedCPT", db_dir=str(db), device="cpu",
                      models_dir=str(dest)).search(["sepsis"], 2)
        clear_cache()
        shutil.rmtree(dest / DOC_ID)
        rc, checks = _doctor(capsys, *args)
        [d] = checks["doc-encoder"]
        assert d["status"] == "warn" and "searching a built one does not load it" in d["title"]
        assert [c["status"] for c in checks["search"]] == ["ok"]


def test_every_command_that_loads_models_takes_models_dir(models, tmp_path, monkeypatch, capsys):
    from medret.config import RetrieverConfig
    from medret.integrations.cli import rollout_block

    parser = cli.build_parser()
    for argv in (["search", "q"], ["index", "build"], ["serve"], ["doctor"], ["rollout-smoke", "--backend", "local"],
                 ["bench"]):
        assert parser.parse_args(argv + ["--models-dir", "/m"]).models_dir == "/m", argv
    assert RetrieverConfig.from_args(parser.parse_args(["search", "q", "--models-dir", "/m"])).models_dir == "/m"
    assert rollout_block(parser.parse_args(["rollout-smoke", "--backend", "local", "--models-dir", "/m"]))[
        "models_dir"] == "/m"
    # index build loads the article encoder from there: with the hub down and an empty cache nothing else could
    dest = tmp_path / "models"
    for mid, folder in models.items():
        install_downloaded(folder, dest, mid)
    corpus = write_chunks(tmp_path / "toy", {"toy": TOY_DOCS})
    with DownServer() as down:
        hub_env(monkeypatch, down.endpoint, tmp_path / "hf_home")
        assert cli.main(["index", "build", "--corpus", str(corpus), "--retriever", "MedCPT", "--device", "cpu",
                         "--models-dir", str(dest)]) == 0
        assert down.asked_for(DOC_ID) == down.asked_for(QUERY_ID) == []
        shutil.rmtree(dest / DOC_ID)
        assert cli.main(["index", "build", "--corpus", str(corpus), "--retriever", "MedCPT", "--device", "cpu",
                         "--models-dir", str(dest), "--rebuild"]) == 1
        assert "document model of retriever 'MedCPT'" in capsys.readouterr().err


def test_hub_warnings_are_printed_once_under_the_cli():
    """huggingface_hub prints through its own handler and passed each record on to the CLI's too: twice."""
    code = ("from medret import cli\n"
            "assert cli.main(['models', 'download', 'BM25']) == 0\n"
            "from huggingface_hub.utils import logging as hl\n"
            "hl.get_logger('huggingface_hub.utils._http').warning('retrying in 1s')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("retrying in 1s") == 1


def test_a_downloaded_model_changed_since_is_refused_by_name(hub, models, tmp_path, capsys, monkeypatch):
    """Issue 24 item 3: a folder `models download` wrote is checked against its record (not against the recipe's
    shape: the hub's model is the one named), and a file changed since the download is named."""
    from medret.encoders.hf import Encoder
    from medret.encoders.specs import resolve_spec

    dest = tmp_path / "models"
    assert download_cli("MedCPT", "--dir", str(dest)) == 0
    hub.close()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert Encoder(resolve_spec("MedCPT"), "cpu", models_dir=dest).encode_queries(["sepsis"]).shape == (1, 32)
    config = dest / QUERY_ID / "config.json"
    original = config.read_bytes()
    cfg = json.loads(original)
    cfg["hidden_size"], cfg["intermediate_size"] = 48, 96  # another model's config copied over the download's
    config.write_text(json.dumps(cfg))
    with pytest.raises(MedretError) as e:
        Encoder(resolve_spec("MedCPT"), "cpu", models_dir=dest)
    msg = str(e.value)
    assert "differs from what `medret models download` fetched" in msg and "config.json is" in msg, msg
    config.write_bytes(original)  # the same bytes again (a new mtime): the content check lets it pass
    Encoder(resolve_spec("MedCPT"), "cpu", models_dir=dest)
    weights = dest / DOC_ID / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, one byte flipped
    weights.write_bytes(bytes(data))
    with pytest.raises(MedretError, match=r"model.safetensors changed since the download \(sha256 differs\)"):
        Encoder(resolve_spec("MedCPT"), "cpu", models_dir=dest, load_query=False)._part("doc")
