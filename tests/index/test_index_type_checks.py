"""`--index-type` is checked before anything is built (issue 14): a bad value for a dense retriever once failed only
after the whole embedding pass, and any value was silently ignored for BM25."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from medret.cli import main
from medret.config import EngineOptions
from medret.encoders.specs import resolve_spec
from medret.errors import ConfigError
from medret.index.dense_build import build_dense_index, partial_dir

SPEC = resolve_spec("MedCPT")


def config_for(**options) -> EngineOptions:
    return EngineOptions(**{"retriever_name": "MedCPT", "device": "cpu", "fp16": True, **options})


CONFIG = config_for()


class ListStore:
    def __init__(self, n: int):
        self.docs = [{"id": f"c_{i}", "title": f"T{i}", "content": f"content {i}"} for i in range(n)]
        self.checksum = hashlib.sha256(str(n).encode()).hexdigest()

    def __len__(self) -> int:
        return len(self.docs)

    def get(self, rows):
        return [self.docs[int(r)] for r in rows]


class CountingEncoder:
    """12-dimensional vectors; counts the documents it is asked to encode."""

    dim = 12

    def __init__(self):
        self.encoded = 0

    def encode_docs(self, docs, batch_size=64):
        self.encoded += len(docs)
        return np.random.default_rng(len(docs)).standard_normal((len(docs), self.dim)).astype(np.float32)


@pytest.mark.parametrize("index_type,says", [
    ("bogus", "could not parse"),
    ("IVF4,PQ5", "for the model's 12-dimensional vectors"),  # 5 does not divide 12: faiss refuses at this width
])
def test_a_bad_index_type_is_refused_before_anything_is_encoded_or_written(tmp_path, index_type, says):
    enc = CountingEncoder()
    out = tmp_path / "ix"
    with pytest.raises(ConfigError) as e:
        build_dense_index(ListStore(30), out, CONFIG, encoder=enc, chunk_rows=10, progress=False, index_type=index_type)
    msg = str(e.value)
    assert f"index_type (--index-type)={index_type!r} is invalid" in msg and says in msg
    assert "flat, hnsw, ivfpq" in msg and "faiss factory string" in msg
    assert enc.encoded == 0
    assert not out.exists() and not partial_dir(out).exists()


def test_a_factory_string_that_fits_the_width_is_accepted(tmp_path):
    enc = CountingEncoder()
    out = build_dense_index(ListStore(300), tmp_path / "ix", config_for(fp16=False), encoder=enc, chunk_rows=100,
                            progress=False, index_type="IVF4,PQ4x4np")
    assert enc.encoded == 300 and (out / "faiss.index").is_file()


def test_index_type_for_bm25_is_refused_and_nothing_is_built(toy_corpus, capsys):
    assert main(["index", "build", "--corpus", str(toy_corpus), "--retriever", "BM25", "--index-type", "hnsw"]) == 1
    err = capsys.readouterr().err
    assert "index_type (--index-type)='hnsw' does not apply to retriever 'BM25'" in err
    assert "drop --index-type" in err
    assert not (toy_corpus / "medret").exists()  # neither the document store nor the BM25 index
    assert main(["index", "build", "--corpus", str(toy_corpus), "--retriever", "BM25"]) == 0  # without it: built
    assert (toy_corpus / "medret" / "bm25" / "manifest.json").is_file()


@pytest.mark.parametrize("index_type,says", [
    ("bogus", "could not parse"),
    ("IVF4,PQ7", "for the model's 32-dimensional vectors"),  # the tiny BERT is 32-d (its config.json)
])
def test_a_bad_dense_index_type_fails_before_the_store_or_the_embedding_pass(toy_corpus, tiny_bert_dir, capsys,
                                                                              index_type, says):
    argv = ["index", "build", "--corpus", str(toy_corpus), "--retriever", str(tiny_bert_dir), "--pooling", "mean",
            "--device", "cpu", "--index-type", index_type]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"index_type (--index-type)={index_type!r} is invalid" in err and says in err, err
    assert not (toy_corpus / "medret").exists()  # no store, no partial index: nothing was encoded or written
