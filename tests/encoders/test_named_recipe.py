"""Issue 22 item 2: a named dense retriever is one entry of encoders.specs.REGISTRY; the retriever names, the
planner's dimensions and the messages follow from it. MedEmbed (a BGE-small fine-tune: CLS pooling, normalised,
384 dimensions) was added that way: searchable by name from a local models folder, and planned by `medret plan`."""
from __future__ import annotations

import json

import numpy as np

from medret.api import get_retriever
from medret.cli import main
from medret.encoders.specs import REGISTRY
from medret.index.locate import medrag_applies
from medret.retrievers import DENSE, retriever_parts, valid_retrievers
from tests.conftest import install_downloaded
from tests.index.test_encoder_identity import DOCS, QUERIES, assert_same_ranking, write_corpus

MODEL_ID = "abhinand/MedEmbed-small-v0.1"


def cls_normalised(model_dir, texts):
    """Reference encoding written here: the [CLS] vector of the last layer, L2-normalised, 512 tokens at most."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(str(model_dir)), AutoModel.from_pretrained(str(model_dir)).eval()
    with torch.no_grad():
        batch = tok(texts, padding=True, truncation=True, max_length=512, return_tensors="pt")
        v = model(**batch).last_hidden_state[:, 0].double().numpy()
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_medembed_is_one_registry_entry_and_everything_follows():
    assert "medembed" in DENSE and retriever_parts("BM25+MedEmbed") == ("bm25", "medembed")
    assert "MedEmbed" in valid_retrievers()
    assert (REGISTRY["medembed"].query_model, REGISTRY["medembed"].dim) == (MODEL_ID, 384)
    # MedRAG published no MedEmbed embeddings: its index is always medret's own (as e5's)
    assert [medrag_applies(s) for s in REGISTRY.values()] == [True, True, True, False, False]


def test_medembed_searches_by_name_from_a_local_models_folder(tmp_path, make_tiny_bert):
    corpus = write_corpus(tmp_path / "corpus")
    models = tmp_path / "models"
    # as `medret models download` leaves it: a hand copy of a tiny model is refused by the published shape
    install_downloaded(make_tiny_bert(tmp_path / "tiny", seed=3), models, MODEL_ID)
    docs = [f"{t} {c}" if t.endswith((".", "?", "!")) else f"{t}. {c}" for t, c in DOCS]  # MedRAG's concat
    ids = [f"part_a_{i}" for i in range(len(DOCS) // 2)] + [f"part_b_{i}" for i in range(len(DOCS) - len(DOCS) // 2)]
    scores = cls_normalised(models / MODEL_ID, QUERIES) @ cls_normalised(models / MODEL_ID, docs).T
    hits = get_retriever(str(corpus), "MedEmbed", models_dir=str(models), device="cpu").search(QUERIES, 4)
    for h, row in zip(hits, scores):
        order = np.argsort(-row, kind="stable")[:4]
        assert_same_ranking(h, ([ids[j] for j in order], row[order], row))


def test_medembed_is_planned_with_its_dimension(capsys):
    assert main(["plan", "--corpus", "Textbooks", "--retriever", "MedEmbed", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dim"] == 384
