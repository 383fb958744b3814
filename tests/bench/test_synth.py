"""Synthetic MedRAG-layout corpora: file layout, ids, length distribution, determinism, resumability."""
import hashlib

import numpy as np
import orjson
import pytest

from medret.bench.synth import write_synthetic_corpus
from medret.corpus.registry import resolve_corpus
from medret.corpus.store import open_corpus_store
from medret.errors import ConfigError


def test_layout_ids_and_lengths(tmp_path):
    folder = write_synthetic_corpus(tmp_path / "syn", 2500, lines_per_file=1000, median_words=80, sigma=0.4,
                                    min_words=20, max_words=300, seed=5)
    files = sorted((folder / "chunk").glob("*.jsonl"))
    assert [f.name for f in files] == ["synth0001.jsonl", "synth0002.jsonl", "synth0003.jsonl"]
    counts = []
    words = []
    for f in files:
        lines = f.read_bytes().splitlines()
        counts.append(len(lines))
        for i, raw in enumerate(lines):
            d = orjson.loads(raw)
            assert d["id"] == f"{f.stem}_{i}"
            assert d["contents"] == f"{d['title']}. {d['content']}"
            assert 4 <= len(d["title"].split()) <= 14
            words.append(len(d["content"].split()))
    assert counts == [1000, 1000, 500]
    assert min(words) >= 20 and max(words) <= 300
    # log-normal(median 80, sigma 0.4): sample median within 5 %, log-sd near 0.4
    assert abs(np.median(words) / 80 - 1) < 0.05
    assert abs(np.std(np.log(words)) - 0.4) < 0.04
    store = open_corpus_store(resolve_corpus(str(folder), None))
    assert len(store) == 2500
    assert store.get([1999])[0]["id"] == "synth0002_999"
    store.close()


def digest(folder):
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted((folder / "chunk").glob("*.jsonl")))).hexdigest()


def test_deterministic_and_resumable(tmp_path):
    a = write_synthetic_corpus(tmp_path / "a", 300, lines_per_file=100, seed=1)
    b = write_synthetic_corpus(tmp_path / "b", 300, lines_per_file=100, seed=1)
    c = write_synthetic_corpus(tmp_path / "c", 300, lines_per_file=100, seed=2)
    assert digest(a) == digest(b) != digest(c)
    # an interrupted run left file 2 missing and a temp file behind: a rerun completes it identically
    (b / "chunk" / "synth0002.jsonl").unlink()
    (b / "chunk" / ".synth0002.jsonl.tmp-1").write_bytes(b"partial")
    write_synthetic_corpus(tmp_path / "b", 300, lines_per_file=100, seed=1)
    assert digest(b) == digest(a)


def test_bad_arguments():
    with pytest.raises(ConfigError, match="n_snippets=0"):
        write_synthetic_corpus("/nonexistent", 0)
    with pytest.raises(ConfigError, match="min_words=50, max_words=10"):
        write_synthetic_corpus("/nonexistent", 10, min_words=50, max_words=10)


def test_vocabulary_is_zipf_like(tmp_path):
    folder = write_synthetic_corpus(tmp_path / "z", 400, lines_per_file=400, seed=3)
    from collections import Counter

    c = Counter(w for raw in (folder / "chunk" / "synth0001.jsonl").read_bytes().splitlines()
                for w in orjson.loads(raw)["content"].lower().rstrip(".").split())
    freq = sorted(c.values(), reverse=True)
    assert len(c) > 500  # a broad vocabulary, not a handful of words
    assert freq[0] > 20 * freq[len(freq) // 2]  # heavy head, long tail
