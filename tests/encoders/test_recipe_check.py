"""A model folder found for a named retriever's model id is held to the recipe (issue 24 item 3): a hand-copied
32-d random BERT in `$MEDRET_MODELS_DIR/ncbi/MedCPT-Query-Encoder` is refused by the loader and failed by doctor,
each naming what differs; a folder given on purpose (--query-model) is the user's choice; the query and document
encoders must agree in width."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from medret import cli, get_retriever
from medret.encoders.hf import Encoder
from medret.encoders.recipe_check import RECIPE_MODELS, shape_differences
from medret.encoders.specs import REGISTRY, resolve_spec
from medret.errors import ModelNotFoundError

QUERY_ID = "ncbi/MedCPT-Query-Encoder"


@pytest.fixture
def hand_copied(tiny_bert_dir, tmp_path, monkeypatch) -> Path:
    models = tmp_path / "models"
    shutil.copytree(tiny_bert_dir, models / QUERY_ID)
    monkeypatch.setenv("MEDRET_MODELS_DIR", str(models))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return models / QUERY_ID


def tiny_config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


def test_the_recipe_table_agrees_with_the_named_retrievers():
    for spec in REGISTRY.values():  # every model a named retriever loads is in the table, at the recipe's width
        for model in (spec.query_model, spec.doc_model):
            assert RECIPE_MODELS[model].hidden_size == spec.dim, model


def test_shape_differences_name_each_field(hand_copied):
    cfg = tiny_config(hand_copied)
    assert (cfg["hidden_size"], cfg["model_type"]) == (32, "bert") and cfg["vocab_size"] != 30522  # the premise
    assert shape_differences(QUERY_ID, hand_copied) == [
        f"hidden_size 32 where {QUERY_ID} has 768", f"vocab_size {cfg['vocab_size']} where {QUERY_ID} has 30522"]
    cfg.update(model_type="roberta", hidden_size=768, vocab_size=30522)
    (hand_copied / "config.json").write_text(json.dumps(cfg))
    assert shape_differences(QUERY_ID, hand_copied) == [f"model_type 'roberta' where {QUERY_ID} has 'bert'"]


def test_the_loader_refuses_a_hand_copied_model_of_the_wrong_shape(hand_copied, toy_corpus):
    with pytest.raises(ModelNotFoundError) as e:
        Encoder(resolve_spec("MedCPT"), "cpu")
    msg = str(e.value)
    assert str(hand_copied) in msg and "hidden_size 32 where ncbi/MedCPT-Query-Encoder has 768" in msg
    assert "vocab_size" in msg and "medret models download MedCPT" in msg and "--query-model" in msg
    with pytest.raises(ModelNotFoundError, match="hidden_size 32"):
        get_retriever(corpus_name=str(toy_corpus), retriever_name="MedCPT", device="cpu")
    assert not (toy_corpus / "medret" / "index").exists()  # nothing was encoded with it


def test_search_cli_says_what_differs_in_one_line(hand_copied, toy_corpus, capsys):
    rc = cli.main(["search", "sepsis", "--corpus", str(toy_corpus), "--retriever", "MedCPT", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("medret: error:") and err.count("\n") == 1, err
    assert "hidden_size 32 where ncbi/MedCPT-Query-Encoder has 768" in err


def test_doctor_fails_the_hand_copied_model(hand_copied, toy_corpus, capsys):
    rc = cli.main(["doctor", "--json", "--corpus", str(toy_corpus), "--retriever", "MedCPT", "--device", "cpu"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 1 and not out["ok"]
    [fail] = [c for c in out["checks"] if c["key"] == "encoder" and c["status"] == "fail"]
    assert str(hand_copied) in fail["title"] and "not the model the recipe names" in fail["title"]
    assert "hidden_size 32 where ncbi/MedCPT-Query-Encoder has 768" in fail["detail"]
    assert "medret models download MedCPT" in fail["fix"]
    assert not [c for c in out["checks"] if c["key"] == "encoder" and c["status"] == "ok"]


def test_a_folder_given_on_purpose_is_the_users_choice(hand_copied, tiny_bert_dir):
    enc = Encoder(resolve_spec("MedCPT"), "cpu", query_model_path=tiny_bert_dir, load_query=True)
    assert enc.encode_queries(["sepsis"]).shape == (1, 32)


def test_query_and_document_encoders_must_agree_in_width(tiny_bert_dir, make_tiny_bert, tmp_path, capsys,
                                                         toy_corpus):
    wide = make_tiny_bert(tmp_path / "wide", seed=3, hidden=48)
    with pytest.raises(ModelNotFoundError) as e:
        Encoder(resolve_spec("MedCPT"), "cpu", query_model_path=tiny_bert_dir, doc_model_path=wide)
    msg = str(e.value)
    assert "disagree in width" in msg and f"{tiny_bert_dir} makes 32-d" in msg and f"{wide} 48-d" in msg
    Encoder(resolve_spec("MedCPT"), "cpu", query_model_path=tiny_bert_dir, doc_model_path=tiny_bert_dir)  # agree
    rc = cli.main(["doctor", "--json", "--corpus", str(toy_corpus), "--retriever", "MedCPT", "--device", "cpu",
                   "--query-model", str(tiny_bert_dir), "--doc-model", str(wide)])
    out = json.loads(capsys.readouterr().out)
    assert rc == 1
    assert any(c["status"] == "fail" and "disagree in width" in c["detail"] for c in out["checks"]), out["checks"]


def test_doctor_names_the_recorded_revision_of_a_downloaded_model(tiny_bert_dir, toy_corpus, tmp_path, monkeypatch,
                                                                   capsys):
    from tests.conftest import install_downloaded

    install_downloaded(tiny_bert_dir, tmp_path / "models", QUERY_ID, revision="abcdef0123456789" * 2 + "abcdef01")
    monkeypatch.setenv("MEDRET_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cli.main(["doctor", "--json", "--corpus", str(toy_corpus), "--retriever", "MedCPT", "--device", "cpu"])
    checks = json.loads(capsys.readouterr().out)["checks"]
    [q] = [c for c in checks if c["key"] == "encoder"]
    assert q["status"] == "ok" and "(dim 32" in q["title"]  # a downloaded model is the hub's: not held to 768
    assert "downloaded by medret at revision abcdef012345, files as recorded" in q["detail"]


def test_index_build_refuses_a_hand_copied_document_model(tiny_bert_dir, toy_corpus, tmp_path, monkeypatch, capsys):
    """The document side is checked where it is loaded: by the index build's encoder."""
    from tests.conftest import install_downloaded

    models = tmp_path / "models"
    install_downloaded(tiny_bert_dir, models, QUERY_ID)  # the query model as downloaded: fine
    doc = models / "ncbi" / "MedCPT-Article-Encoder"
    shutil.copytree(tiny_bert_dir, doc)  # the document model copied by hand: 32-d
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rc = cli.main(["index", "build", "--corpus", str(toy_corpus), "--retriever", "MedCPT", "--device", "cpu",
                   "--models-dir", str(models)])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert f"the document model of retriever 'MedCPT' in {doc} is not ncbi/MedCPT-Article-Encoder" in err, err
    assert "hidden_size 32 where ncbi/MedCPT-Article-Encoder has 768" in err and "--doc-model" in err
    assert not list((toy_corpus / "medret").glob("index/*/manifest.json"))  # no index was recorded as built
