"""BM25 without Java: bm25s sparse index over a document store, with stemming and English stop words.

For a multi-source corpus (MedCorp) one index is built over the union of its sources, so every score uses
the same IDF and document-length statistics. MedRAG instead ranks each source with its own statistics and
compares the raw scores, which are not on one scale.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import orjson

from medret.atomic import atomic_path
from medret.errors import IndexBuildError
from medret.index.select import select_topk

log = logging.getLogger(__name__)
K1, B, METHOD = 1.2, 0.75, "lucene"


def text_of(doc: dict) -> str:
    return f"{doc['title']}. {doc['content']}" if doc.get("title") else doc["content"]


def _tokenizer():
    import Stemmer
    from bm25s.tokenization import Tokenizer

    return Tokenizer(stemmer=Stemmer.Stemmer("english"), stopwords="en")


class BM25Index:
    def __init__(self, folder: Path, mmap: bool = True):
        import bm25s

        self.folder = Path(folder)
        try:
            self.manifest = orjson.loads((self.folder / "manifest.json").read_bytes())
            self.model = bm25s.BM25.load(str(self.folder), mmap=mmap, show_progress=False)
        except (OSError, ValueError) as e:
            raise IndexBuildError(f"BM25 index {self.folder} is missing or damaged ({e}); rebuild it with "
                                  f"`medret index build --retriever BM25 --rebuild`") from None
        self._tok = _tokenizer()
        # query words map to the index's stems; unknown stems are dropped (update_vocab=False)
        self._tok.stem_to_sid = dict(self.model.vocab_dict)
        self._empty = self.model.vocab_dict.get("", -1)

    @property
    def checksum(self) -> str:
        return self.manifest["store_checksum"]

    def tokenize(self, queries: list[str]) -> list[list[int]]:
        ids = self._tok.tokenize(queries, update_vocab=False, return_as="ids", show_progress=False)
        return [[i for i in q if i != self._empty] for q in ids]

    def search(self, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows), each (len(queries), k'), k' = min(k, n_docs); best first, ties by row."""
        n = int(self.manifest["rows"])
        kk = min(k, n)
        scores = np.zeros((len(queries), kk), dtype=np.float32)
        rows = np.zeros((len(queries), kk), dtype=np.int64)
        for i, ids in enumerate(self.tokenize(queries)):
            s = self.model.get_scores_from_ids(ids) if ids else np.zeros(n, dtype=np.float32)
            scores[i], rows[i] = select_topk(np.asarray(s, dtype=np.float32), kk)
        return scores, rows


def build_bm25(store, folder: Path, progress: bool = False, batch_size: int = 10_000) -> Path:
    """Tokenize every snippet of the store and write a bm25s index, atomically, with a manifest."""
    import bm25s
    from bm25s.tokenization import Tokenized

    tok = _tokenizer()
    ids: list[list[int]] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(store), desc="BM25 tokenize", unit="doc")
    for _, docs in store.iter_batches(batch_size):
        ids.extend(tok.tokenize([text_of(d) for d in docs], update_vocab=True, return_as="ids", show_progress=False))
        if bar:
            bar.update(len(docs))
    if bar:
        bar.close()
    if not ids:
        raise IndexBuildError("cannot build a BM25 index over an empty corpus")
    model = bm25s.BM25(k1=K1, b=B, method=METHOD)
    model.index(Tokenized(ids=ids, vocab=tok.get_vocab_dict()), show_progress=progress)
    with atomic_path(folder) as tmp:
        model.save(str(tmp), show_progress=False)
        manifest = {"retriever": "bm25", "rows": len(store), "store_checksum": store.checksum,
                    "k1": K1, "b": B, "method": METHOD, "tokenizer": "bm25s: lower, \\w\\w+, english stop words, "
                    "Snowball english stemmer"}
        (tmp / "manifest.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    log.info("BM25 index of %d snippets written to %s", len(store), folder)
    return folder
