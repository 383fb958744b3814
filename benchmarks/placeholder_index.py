"""Build a dense index whose document vectors are seeded random placeholders, for query-side benchmarks.

    python benchmarks/placeholder_index.py CORPUS_FOLDER MODEL_DIR [--pooling cls | --like e5] [--fp16]

The index is written by medret's normal builder (``build_dense_index``) at the place the engine looks for that
encoder, so ``get_retriever(CORPUS_FOLDER, MODEL_DIR, pooling=...)`` (or ``like=...``) finds it. Queries are still
encoded by the real model;
only the document side is skipped. Use it where encoding the corpus on CPU would take too long (BERT-base over
PubMedQA's 3,358 snippets: ~45 min on 2 cores) and the measurement does not depend on the vectors' values
(latency, throughput, start-up, memory). Never use it for quality numbers.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class RandomDocEncoder:
    """Seeded random document vectors of dimension ``dim``."""

    def __init__(self, dim: int, seed: int = 0):
        self.dim, self.seed, self.calls = dim, seed, 0

    def encode_docs(self, docs, batch_size: int = 0) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.calls])
        self.calls += 1
        return rng.standard_normal((len(docs), self.dim)).astype(np.float32)


def build_placeholder_index(corpus: str, model: str, pooling: str | None = "cls", fp16: bool = False,
                            chunk_rows: int = 100_000, progress: bool = True, like: str | None = None) -> Path:
    """The placeholder index of ``model`` (``--pooling``, or a named recipe with ``like``) at the place the engine
    looks for that encoder (``<source>/medret/index/<model>-<key>/``); returns that folder."""
    from transformers import AutoConfig

    from medret.config import RetrieverConfig
    from medret.corpus.registry import resolve_corpus
    from medret.corpus.store import open_corpus_store
    from medret.encoders.specs import spec_for
    from medret.index.dense_build import build_dense_index
    from medret.index.identity import encoder_identity, keyed_dir
    from medret.index.manifest import read_manifest

    c = resolve_corpus(corpus, None)
    store = open_corpus_store(c, build=True, progress=progress)
    config = RetrieverConfig(corpus_name=corpus, retriever_name=model, pooling=None if like else pooling, like=like,
                             fp16=fp16)
    spec = spec_for(model, config)
    identity = encoder_identity(spec)
    out = keyed_dir(c.sources[0], identity)
    if read_manifest(out) is None:
        dim = AutoConfig.from_pretrained(model).hidden_size
        build_dense_index(store, out, config, encoder=RandomDocEncoder(dim), progress=progress, chunk_rows=chunk_rows,
                          identity=identity)
    store.close()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpus")
    ap.add_argument("model")
    ap.add_argument("--pooling", default="cls", choices=["cls", "mean"])
    ap.add_argument("--like", default=None, help="a named retriever's recipe instead of --pooling (e.g. e5)")
    ap.add_argument("--fp16", action="store_true")
    a = ap.parse_args(argv)
    print(build_placeholder_index(a.corpus, a.model, a.pooling, a.fp16, like=a.like))
    return 0


if __name__ == "__main__":
    sys.exit(main())
