"""Retriever specs: registry values, resolution, document formatting, tokenized input lengths."""
from __future__ import annotations

import dataclasses

import pytest

from medret.encoders.specs import (
    EncoderSpec,
    format_doc,
    format_docs,
    get_spec,
    known_names,
    medrag_concat,
    resolve_spec,
)
from medret.errors import ConfigError


def test_registry_matches_the_published_retrievers():
    m = resolve_spec("MedCPT")
    assert (m.query_model, m.doc_model) == ("ncbi/MedCPT-Query-Encoder", "ncbi/MedCPT-Article-Encoder")
    assert (m.pooling, m.metric, m.normalize, m.query_max_len, m.doc_max_len, m.doc_pair_input) == (
        "cls", "ip", False, 64, 512, True)
    c = resolve_spec("contriever")
    assert (c.query_model, c.doc_model, c.pooling, c.metric, c.normalize) == (
        "facebook/contriever", "facebook/contriever", "mean", "ip", False)
    s = resolve_spec("SPECTER")
    assert (s.query_model, s.pooling, s.metric) == ("allenai/specter", "cls", "l2")
    e = resolve_spec("E5")
    assert (e.query_model, e.pooling, e.normalize, e.metric) == ("intfloat/e5-base-v2", "mean", True, "ip")
    assert (e.query_prefix, e.doc_prefix) == ("query: ", "passage: ")
    assert (e.query_max_len, e.doc_max_len) == (256, 256)  # Search-R1's retrieval server / index builder
    assert all(x.dim == 768 for x in (m, c, s, e))


@pytest.mark.parametrize("name", ["medcpt", "MEDCPT", " MedCPT ", "ncbi/MedCPT-Query-Encoder",
                                  "ncbi/medcpt-article-encoder"])
def test_lookup_is_case_insensitive_and_accepts_model_ids(name):
    assert resolve_spec(name).name == "MedCPT"
    assert get_spec(name).name == "MedCPT"


def test_overrides_replace_registered_values():
    s = resolve_spec("MedCPT", doc_max_len=256, normalize=True)
    assert s.doc_max_len == 256 and s.normalize is True and s.doc_model == "ncbi/MedCPT-Article-Encoder"


def test_unknown_model_without_pooling_lists_valid_names(tmp_path):
    with pytest.raises(ConfigError) as e:
        resolve_spec(str(tmp_path))
    msg = str(e.value)
    for n in known_names():
        assert n in msg
    assert "pooling" in msg and "that directory exists" in msg
    with pytest.raises(ConfigError, match="retriever=''"):
        resolve_spec("")


def test_local_model_with_explicit_pooling(tmp_path):
    d = tmp_path / "my-encoder"
    d.mkdir()
    s = resolve_spec(str(d), pooling="CLS", metric="l2", doc_pair_input=True)
    assert (s.name, s.query_model, s.doc_model, s.pooling, s.metric) == ("my-encoder", str(d), str(d), "cls", "l2")
    assert s.doc_format == "pair" and s.doc_pair_input and s.dim is None
    assert s.slug == "my-encoder"
    with pytest.raises(ConfigError, match="pooling='max'"):
        resolve_spec(str(d), pooling="max")


def test_spec_validation():
    base = resolve_spec("e5")
    with pytest.raises(ConfigError, match="metric='cos'"):
        dataclasses.replace(base, metric="cos")
    with pytest.raises(ConfigError, match="query_max_len=0"):
        dataclasses.replace(base, query_max_len=0)
    # pair input is derived from doc_format, never set apart from it (it cannot contradict it)
    assert not base.doc_pair_input and dataclasses.replace(base, doc_format="pair").doc_pair_input
    with pytest.raises(TypeError):
        dataclasses.replace(base, doc_pair_input=True)
    # a manifest written when doc_pair_input was a field still reads (the key is passed over)
    old = {**base.to_dict(), "doc_pair_input": False}
    assert "doc_pair_input" not in base.to_dict() and EncoderSpec.from_dict(old) == base


def test_roundtrip_and_same_encoding():
    s = resolve_spec("MedCPT")
    assert EncoderSpec.from_dict(s.to_dict()) == s
    assert s.same_encoding(dataclasses.replace(s, query_max_len=128, name="x"))
    assert not s.same_encoding(dataclasses.replace(s, doc_max_len=128))


def test_document_formats_follow_medrag_and_search_r1():
    t, c = "Sepsis", "Sepsis kills.. often?. Fluids help. "
    assert format_doc(resolve_spec("MedCPT"), " Sepsis ", c) == ("Sepsis", "Sepsis kills.. often?. Fluids help.")
    # contriever: ". ".join, then '..' -> '.' and '?.' -> '?' over the whole text, then stripped
    assert format_doc(resolve_spec("contriever"), t, c) == "Sepsis. Sepsis kills. often? Fluids help."
    assert format_doc(resolve_spec("contriever"), "Why?", "Because") == "Why? Because"
    assert format_doc(resolve_spec("specter"), t, "Body", sep_token="[SEP]") == "Sepsis[SEP]Body"
    assert format_doc(resolve_spec("e5"), t, "Body") == 'passage: "Sepsis"\nBody'
    with pytest.raises(ConfigError, match="sep_token"):
        format_doc(resolve_spec("specter"), t, "Body")
    assert medrag_concat("Shock", "Low pressure") == "Shock. Low pressure"
    assert medrag_concat("Shock!", "Low pressure") == "Shock! Low pressure"
    local = resolve_spec("/some/model", pooling="mean")
    assert format_doc(local, "Is it?", "Yes") == "Is it? Yes"
    with pytest.raises(ConfigError, match=r"docs\[1\]"):
        format_docs(local, [{"title": "a", "content": "b"}, {"title": "no content"}])


# ------------------------------------------------------------------ tokenized lengths (tiny tokenizer)


@pytest.fixture(scope="module")
def encoders(tiny_bert_dir):
    from medret.encoders.hf import Encoder

    def make(name: str):
        return Encoder(resolve_spec(name), "cpu", query_model_path=tiny_bert_dir, doc_model_path=tiny_bert_dir)

    return {n: make(n) for n in ("MedCPT", "contriever", "specter", "e5")}


LONG = " ".join(["sepsis mortality risk in elderly icu patients"] * 120)  # 840 words


def test_query_max_lengths(encoders):
    for name, expected in (("MedCPT", 64), ("contriever", 512), ("specter", 512), ("e5", 256)):
        enc = encoders[name]
        ids = enc.tokenize("query", [enc.spec.query_prefix + LONG], None, enc.spec.query_max_len)["input_ids"][0]
        assert len(ids) == expected, name


def test_medcpt_documents_are_pairs_truncated_to_512(encoders):
    enc = encoders["MedCPT"]
    tok = enc._part("doc").tokenizer
    first, second = format_doc(enc.spec, "Sepsis", LONG)
    out = enc.tokenize("doc", [first], [second], enc.spec.doc_max_len)
    ids, types = out["input_ids"][0], out["token_type_ids"][0]
    assert len(ids) == 512
    n_title = len(tok("Sepsis", add_special_tokens=False)["input_ids"])
    # [CLS] title [SEP] content... [SEP]: segment 0 covers CLS + title + SEP, segment 1 the rest
    assert types[: n_title + 2] == [0] * (n_title + 2) and set(types[n_title + 2 :]) == {1}
    assert ids[0] == tok.cls_token_id and ids[n_title + 1] == tok.sep_token_id and ids[-1] == tok.sep_token_id


def test_e5_prefixes_reach_the_tokenizer(encoders):
    enc = encoders["e5"]
    tok = enc._part("query").tokenizer
    ids = enc.tokenize("query", ["query: sepsis"], None, 256)["input_ids"][0]
    assert tok.convert_ids_to_tokens(ids) == ["[CLS]", "query", ":", "sepsis", "[SEP]"]
