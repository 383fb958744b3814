"""Issue 24 item 21: a query holding a lone surrogate is a clear QueryError (the tokenizer raised a raw TypeError),
and a token limit above the model's positions is refused when the model loads (torch failed at the first long
input)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from medret import cli, get_retriever
from medret.encoders.hf import Encoder
from medret.encoders.specs import resolve_spec
from medret.errors import ConfigError, QueryError


@pytest.mark.parametrize("retriever", ["BM25", "DENSE"])
@pytest.mark.parametrize("query,code,pos", [("sepsis \ud83d elderly", "D83D", 7), ("\udcff", "DCFF", 0)])
def test_a_lone_surrogate_is_a_clear_query_error(retriever, query, code, pos, toy_corpus, tiny_bert_dir):
    kw = {"pooling": "mean"} if retriever == "DENSE" else {}
    r = get_retriever(str(toy_corpus), str(tiny_bert_dir) if retriever == "DENSE" else "BM25", device="cpu", **kw)
    with pytest.raises(QueryError, match=rf"queries\[1\] holds a lone surrogate U\+{code} at position {pos}"):
        r.search(["sepsis", query], 3)
    assert len(r.search(["sepsis \U0001f600 elderly"], 3)[0]) == 3  # a whole pair (an emoji) is text


def test_the_encoder_itself_refuses_it(tiny_bert_dir):
    enc = Encoder(resolve_spec(str(tiny_bert_dir), pooling="mean"), "cpu")
    with pytest.raises(QueryError, match=r"queries\[0\] holds a lone surrogate U\+D800"):
        enc.encode_queries(["\ud800"])


def test_undecodable_bytes_on_the_command_line_are_one_error_line(toy_corpus, tiny_bert_dir, tmp_path):
    """argv bytes that are not UTF-8 reach Python as lone surrogates (surrogateescape)."""
    r = subprocess.run([sys.executable.encode(), b"-m", b"medret", b"search", b"sepsis \xff", b"--corpus",
                        os.fsencode(toy_corpus), b"--retriever", os.fsencode(tiny_bert_dir), b"--pooling", b"mean",
                        b"--device", b"cpu"], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, MEDRET_CACHE=str(tmp_path / "cache")))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]  # after transformers' own progress lines
    assert last.startswith("medret: error: queries[0] holds a lone surrogate U+DCFF at position 7"), r.stderr


def test_position_limit_reads_the_config():
    from transformers import BertConfig, RobertaConfig

    from medret.encoders.hf import position_limit

    assert position_limit(BertConfig(max_position_embeddings=512)) == 512
    assert position_limit(RobertaConfig(max_position_embeddings=514)) == 512  # positions start after padding


def test_a_token_limit_above_the_models_positions_is_refused_at_load(toy_corpus, tiny_bert_dir, capsys):
    import json

    limit = json.loads((tiny_bert_dir / "config.json").read_text())["max_position_embeddings"]
    assert limit == 520  # the premise: what conftest's tiny BERT was saved with
    with pytest.raises(ConfigError, match=rf"query token limit {limit + 1} .* allow {limit} tokens"):
        Encoder(resolve_spec(str(tiny_bert_dir), pooling="mean", query_max_len=limit + 1), "cpu")
    enc = Encoder(resolve_spec(str(tiny_bert_dir), pooling="mean", query_max_len=limit, doc_max_len=limit + 80),
                  "cpu")  # the query side fits; the document side is refused when it is loaded
    assert enc.encode_queries(["sepsis " * 600]).shape == (1, 32)  # a long query, cut at the limit, encodes
    with pytest.raises(ConfigError, match=rf"document token limit {limit + 80} \(--doc-max-length"):
        enc.encode_docs([{"title": "a", "content": "b"}])
    rc = cli.main(["search", "sepsis", "--corpus", str(toy_corpus), "--retriever", str(tiny_bert_dir),
                   "--pooling", "mean", "--device", "cpu", "--max-length", "1024"])
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if "medret: error:" in ln]  # besides transformers' progress lines
    assert rc == 1 and "Traceback" not in err and len(errors) == 1, err
    assert errors[0].startswith("medret: error: the query token limit 1024")
    assert f"--query-max-length {limit} or less" in errors[0]
