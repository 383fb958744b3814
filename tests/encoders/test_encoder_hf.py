"""The HF encoder on a tiny random BERT: pooling, prefixes, pair input, order, errors — against manual forwards."""
from __future__ import annotations

import numpy as np
import pytest

from medret.encoders.specs import resolve_spec
from medret.errors import ConfigError, ModelNotFoundError

QUERIES = [
    "sepsis",
    "what is the mortality risk of sepsis in elderly icu patients",
    "heart failure treatment",
    "",
    "delirium in the icu and mortality of elderly patients with pneumonia and sepsis",
]
DOCS = [
    {"title": "Sepsis", "content": "Sepsis in elderly ICU patients carries a high mortality risk."},
    {"title": "Heart failure", "content": "Heart failure reduces cardiac output and causes congestion."},
    {"title": "Delirium", "content": "Delirium in the ICU is common in elderly patients and predicts mortality. " * 3},
    {"title": "Pneumonia?", "content": "Pneumonia often leads to sepsis."},
]


@pytest.fixture(scope="module")
def hf(tiny_bert_dir):
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    model = AutoModel.from_pretrained(tiny_bert_dir).eval()

    def hidden(*texts, max_length=512):
        # one text: no padding; segment ids as BERT defines them (0 for the first text, 1 for the second)
        enc = tok(*texts, return_tensors="pt", truncation=True, max_length=max_length, return_token_type_ids=True)
        with torch.no_grad():
            return model(**enc).last_hidden_state[0].numpy().astype(np.float64)

    return tok, hidden


def make(spec_name, tiny_bert_dir, **kw):
    from medret.encoders.hf import Encoder

    return Encoder(resolve_spec(spec_name, **kw), "cpu", query_model_path=tiny_bert_dir, doc_model_path=tiny_bert_dir)


def test_cls_pooling_matches_manual_first_token(tiny_bert_dir, hf):
    _, hidden = hf
    enc = make("MedCPT", tiny_bert_dir)
    got = enc.encode_queries(QUERIES, batch_size=2)
    assert got.dtype == np.float32 and got.shape == (len(QUERIES), 32)
    for i, q in enumerate(QUERIES):
        np.testing.assert_allclose(got[i], hidden(q, max_length=64)[0], rtol=1e-4, atol=1e-5)


def test_mean_pooling_matches_manual_average_and_order_is_restored(tiny_bert_dir, hf):
    _, hidden = hf
    enc = make("contriever", tiny_bert_dir)
    got = enc.encode_queries(QUERIES, batch_size=2)  # batches mix lengths after sorting: padding must not leak
    for i, q in enumerate(QUERIES):
        np.testing.assert_allclose(got[i], hidden(q).mean(axis=0), rtol=1e-4, atol=1e-5)
    # the same result whatever the batch size
    np.testing.assert_allclose(enc.encode_queries(QUERIES, batch_size=64), got, rtol=1e-4, atol=1e-5)


def test_e5_prefix_mean_and_normalization(tiny_bert_dir, hf):
    _, hidden = hf
    enc = make("e5", tiny_bert_dir)
    got = enc.encode_queries(QUERIES[:3])
    for i, q in enumerate(QUERIES[:3]):
        v = hidden("query: " + q).mean(axis=0)
        np.testing.assert_allclose(got[i], v / np.linalg.norm(v), rtol=1e-4, atol=1e-5)
    docs = enc.encode_docs(DOCS[:2])
    v = hidden('passage: "Sepsis"\n' + DOCS[0]["content"]).mean(axis=0)
    np.testing.assert_allclose(docs[0], v / np.linalg.norm(v), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(docs, axis=1), 1.0, rtol=1e-5)


def test_medcpt_documents_are_encoded_as_title_content_pairs(tiny_bert_dir, hf):
    _, hidden = hf
    enc = make("MedCPT", tiny_bert_dir)
    got = enc.encode_docs(DOCS, batch_size=3)
    for i, d in enumerate(DOCS):
        np.testing.assert_allclose(got[i], hidden(d["title"], d["content"].strip())[0], rtol=1e-4, atol=1e-5)


def test_specter_and_contriever_document_text(tiny_bert_dir, hf):
    _, hidden = hf
    spec_docs = make("specter", tiny_bert_dir).encode_docs(DOCS)
    con_docs = make("contriever", tiny_bert_dir).encode_docs(DOCS)
    for i, d in enumerate(DOCS):
        np.testing.assert_allclose(spec_docs[i], hidden(d["title"] + "[SEP]" + d["content"].strip())[0],
                                   rtol=1e-4, atol=1e-5)
    expected = "Pneumonia? Pneumonia often leads to sepsis."  # '?.' -> '?'
    np.testing.assert_allclose(con_docs[3], hidden(expected).mean(axis=0), rtol=1e-4, atol=1e-5)


def test_local_model_directory_spec(tiny_bert_dir, hf):
    from medret.encoders.hf import Encoder

    _, hidden = hf
    spec = resolve_spec(str(tiny_bert_dir), pooling="cls", query_max_len=8)
    enc = Encoder(spec, "cpu")  # the model id is the directory: same from_pretrained path users run
    assert enc.dim == 32 and enc.fp16 is False
    np.testing.assert_allclose(enc.encode_queries([QUERIES[1]])[0], hidden(QUERIES[1], max_length=8)[0],
                               rtol=1e-4, atol=1e-5)


def test_models_dir_env_override(tiny_bert_dir, tmp_path, monkeypatch):
    from medret.encoders.hf import Encoder
    from tests.conftest import install_downloaded

    target = install_downloaded(tiny_bert_dir, tmp_path / "models", "ncbi/MedCPT-Query-Encoder")
    monkeypatch.setenv("MEDRET_MODELS_DIR", str(tmp_path / "models"))
    enc = Encoder(resolve_spec("MedCPT"), "cpu")
    assert enc._part("query").location == str(target)


def test_missing_model_error_names_model_and_fixes(tmp_path):
    from medret.encoders.hf import Encoder

    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelNotFoundError) as e:
        Encoder(resolve_spec("MedCPT"), "cpu", query_model_path=missing)
    msg = str(e.value)
    assert "ncbi/MedCPT-Query-Encoder" in msg and str(missing) in msg
    assert "no such folder" in msg and "local model directory" in msg and "medret models download MedCPT" in msg


def test_doc_model_loaded_lazily_and_shared(tiny_bert_dir):
    enc = make("e5", tiny_bert_dir)
    assert set(enc._parts) == {"query"}
    enc.encode_docs(DOCS[:1])
    assert enc._parts["doc"] is enc._parts["query"]  # same weights are loaded once


def test_bad_inputs_and_empty(tiny_bert_dir):
    enc = make("MedCPT", tiny_bert_dir)
    assert enc.encode_queries([]).shape == (0, 32)
    with pytest.raises(ConfigError, match="batch_size=0"):
        enc.encode_queries(["a"], batch_size=0)
    with pytest.raises(ConfigError, match=r"queries\[1\]"):
        enc.encode_queries(["a", None])  # type: ignore[list-item]


@pytest.mark.parametrize("cpu", [True, False])
def test_batches_cover_every_text_once_and_bound_padding_on_cpu(cpu):
    from medret.encoders.hf import CPU_MIN_ROWS, CPU_PAD_SHARE, batches

    rng = np.random.default_rng(3)
    for _ in range(200):
        lengths = np.sort(rng.integers(1, 80, size=int(rng.integers(1, 700))))[::-1]
        bs = int(rng.integers(1, 300))
        got = batches(lengths, bs, cpu)
        assert [i for b in got for i in range(b.start, b.stop)] == list(range(len(lengths)))  # in order, once
        assert all(0 < b.stop - b.start <= bs for b in got)
        if not cpu:  # GPU: fixed-size batches
            assert [b.stop - b.start for b in got[:-1]] == [bs] * (len(got) - 1)
            continue
        for b, nxt in zip(got, got[1:] + [None]):
            width = lengths[b.start]
            tail = lengths[b.start + CPU_MIN_ROWS:b.stop]
            assert (tail >= width * (1 - CPU_PAD_SHARE)).all()  # padding bounded past the minimum rows
            if nxt is not None and b.stop - b.start < bs and b.stop - b.start > CPU_MIN_ROWS:
                assert lengths[b.stop] < width * (1 - CPU_PAD_SHARE)  # cut only where the next would pad too much


def test_cpu_length_cuts_do_not_change_vectors(tiny_bert_dir, hf, monkeypatch):
    import medret.encoders.hf as hf_mod

    _, hidden = hf
    enc = make("contriever", tiny_bert_dir)
    texts = [" ".join(["sepsis"] * n) for n in (1, 2, 3, 5, 8, 13, 21, 30)] + QUERIES
    monkeypatch.setattr(hf_mod, "CPU_MIN_ROWS", 1)  # cut as often as the padding rule allows
    got = enc.encode_queries(texts, batch_size=64)
    for i, q in enumerate(texts):
        np.testing.assert_allclose(got[i], hidden(q).mean(axis=0), rtol=1e-4, atol=1e-5)
