"""BM25 without Java: bm25s sparse index over a document store, with stemming and English stop words.

For a multi-source corpus (MedCorp) one index is built over the union of its sources, so every score uses
the same IDF and document-length statistics. MedRAG instead ranks each source with its own statistics and
compares the raw scores, which are not on one scale.
"""
from __future__ import annotations

import itertools
import logging
import math
import threading
from pathlib import Path

import bm25s
import numpy as np
import orjson
import Stemmer
from bm25s.tokenization import Tokenizer
from tqdm.auto import tqdm

from medret.errors import IndexBuildError
from medret.index.select import select_topk, select_topk_rows
from medret.progress import closing_bar
from medret.storage.atomic import atomic_path
from medret.storage.checksums import sha256_file
from medret.storage.disk import preallocate, writing
from medret.storage.leftovers import remove_stale
from medret.storage.locks import artifact_lock

log = logging.getLogger(__name__)
K1, B, METHOD = 1.2, 0.75, "lucene"
DATA, INDICES, INDPTR = "data.csc.index.npy", "indices.csc.index.npy", "indptr.csc.index.npy"
_SAMPLE = 4096  # postings checked at each end of data/indices when an index is opened
# the query tokenizer caches every distinct word it has seen (word -> stem, word -> id); cleared past this size
WORD_CACHE_MAX = 1_000_000


def text_of(doc: dict) -> str:
    return f"{doc['title']}. {doc['content']}" if doc.get("title") else doc["content"]


def _tokenizer():
    return Tokenizer(stemmer=Stemmer.Stemmer("english"), stopwords="en")


def damaged_error(folder: Path, e: BaseException, name: str | None = None) -> IndexBuildError:
    """The one-line error for a damaged BM25 index: names the file (found by loading each in turn)."""
    if name is None:
        name = "manifest.json"
        try:
            orjson.loads((folder / name).read_bytes())
            for name in (DATA, INDICES, INDPTR):
                np.load(folder / name, mmap_mode="r", allow_pickle=False)
            name = "vocab.index.json / params.index.json"
        except Exception as err:  # noqa: BLE001
            e = err
    target = " or ".join(str(folder / n) for n in name.split(" / "))
    return IndexBuildError(f"BM25 index file {target} is missing or damaged "
                           f"({type(e).__name__}: {str(e)[:160]}); rebuild the index with `medret index build "
                           f"--corpus NAME --retriever BM25 --rebuild`")


def check_sizes(folder: Path, manifest: dict) -> None:
    """Every file the manifest lists has the size it had when built (one stat each)."""
    for name, size in (manifest.get("files") or {}).items():
        p = folder / name
        actual = p.stat().st_size if p.is_file() else None
        if actual != size:
            raise damaged_error(folder, ValueError(f"{actual} bytes, {size} when built"), name)


def check_arrays(folder: Path, manifest: dict, model) -> None:
    """Cheap checks at open: array shapes, and the first and last postings (ids in range, weights > 0)."""
    sc = model.scores
    data, indices, indptr = (np.asarray(sc[k]) for k in ("data", "indices", "indptr"))
    n = int(manifest["rows"])
    if data.ndim != 1 or indices.shape != data.shape or indptr.ndim != 1 or not len(indptr) \
            or int(indptr[0]) != 0 or int(indptr[-1]) != len(data):
        raise damaged_error(folder, ValueError(f"data {data.shape}, indices {indices.shape}, indptr ends at "
                                               f"{int(indptr[-1]) if len(indptr) else None}"), INDPTR)
    ends = np.r_[0:min(_SAMPLE, len(data)), max(0, len(data) - _SAMPLE):len(data)]
    ids = indices[ends]
    if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= n):
        raise damaged_error(folder, ValueError(f"document ids outside 0..{n - 1}"), INDICES)
    w = data[ends]
    if len(w) and not (np.isfinite(w).all() and (w > 0).all()):
        raise damaged_error(folder, ValueError("weights that are not finite and positive"), DATA)


class BM25Index:
    def __init__(self, folder: Path, mmap: bool = True):
        self.folder = Path(folder)
        try:
            self.manifest = orjson.loads((self.folder / "manifest.json").read_bytes())
        except (OSError, ValueError) as e:
            raise damaged_error(self.folder, e, "manifest.json") from None
        check_sizes(self.folder, self.manifest)
        try:
            self.model = bm25s.BM25.load(str(self.folder), mmap=mmap, show_progress=False)
        except Exception as e:  # noqa: BLE001 - a damaged .npy/.json raises many types; name the file instead
            raise damaged_error(self.folder, e) from None
        check_arrays(self.folder, self.manifest, self.model)
        self._tok = _tokenizer()
        # query words map to the index's stems; unknown stems are dropped. With update_vocab=False the tokenizer
        # only reads this dict, so it is the index's own (MedCorp's vocabulary is tens of millions of stems: a
        # copy would double the largest object of the process)
        self._tok.stem_to_sid = self.model.vocab_dict
        self._empty = self.model.vocab_dict.get("", -1)
        sc = self.model.scores  # CSC over terms: term t's postings are indices/data[indptr[t]:indptr[t+1]]
        # plain ndarray views of the (memory-mapped) arrays: slicing a np.memmap costs ~1 µs of Python per slice
        self._data, self._indices, self._indptr = (np.asarray(sc[k]) for k in ("data", "indices", "indptr"))
        self._scorer: PostingScorer | None = None
        self._lock = threading.Lock()

    @property
    def checksum(self) -> str:
        return self.manifest["store_checksum"]

    def tokenize(self, queries: list[str]) -> list[list[int]]:
        tok = self._tok
        ids = tok.tokenize(queries, update_vocab=False, return_as="ids", show_progress=False)
        if len(tok.word_to_stem) > WORD_CACHE_MAX:  # its per-word caches would grow for the whole job
            tok.word_to_stem.clear()
            tok.word_to_id.clear()
        return [[i for i in q if i != self._empty] for q in ids]

    def search(self, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows), each (len(queries), k'), k' = min(k, n_docs); best first, ties by row. Only snippets
        that hold at least one query term are returned (as pyserini's BM25, which Search-R1 uses): the rest of a
        row is row -1 (score 0), so a query with no indexed term finds nothing.

        Scores equal bm25s's ``get_scores_from_ids`` (the same float32 additions, term by term, in query order)
        but only the documents in the query terms' posting lists are touched: the cost is the postings' length,
        not the corpus size (bm25s allocates and partitions an array of every document per query).
        """
        n = int(self.manifest["rows"])
        kk = min(k, n)
        scores = np.zeros((len(queries), kk), dtype=np.float32)
        rows = np.zeros((len(queries), kk), dtype=np.int64)
        token_ids = self.tokenize(queries)
        with self._lock:
            if self._scorer is None:
                self._scorer = PostingScorer(self._data, self._indices, self._indptr, n)
            try:
                for i, ids in enumerate(token_ids):
                    scores[i], rows[i] = self._scorer.topk(ids, kk)
            except (IndexError, ValueError) as e:  # document ids out of range in indices.csc.index.npy
                self._scorer = None  # its buffers may hold partial sums
                raise damaged_error(self.folder, e, INDICES) from None
        if not np.isfinite(scores).all() or (scores < 0).any():  # a BM25 weight is finite and positive
            raise damaged_error(self.folder, ValueError("non-finite or negative scores"), DATA)
        return scores, rows


# Which way a query is scored (all give bm25s's answer; see PostingScorer): up to SPARSE_POSTINGS postings,
# sum them (~27 ns a posting here; below that MaxScore's per-query overhead costs more than it saves); more:
# MaxScore pruning (~2.6x cheaper per posting on the 1M synthetic corpus), unless the terms it must take exceed
# ESSENTIAL_SHARE of the corpus: then bm25s's whole-corpus way. Measured with benchmarks/bm25_scoring.py.
SPARSE_POSTINGS = 262_144
ESSENTIAL_SHARE = 0.25
_SLACK = 1e-4  # pruning compares float32 partial sums: keep a candidate unless it is clearly out


class PostingScorer:
    """Exact top-k BM25 over the query terms' posting lists, with reusable per-document buffers.

    Scores are bit-identical to bm25s's ``get_scores_from_ids`` (float32 additions term by term in query order;
    adding a term's 0 to a document it misses changes nothing), and ties go to the lower row. Three ways:

    * few postings (``SPARSE_POSTINGS``): concatenate them in query order, ``np.add.at`` (which adds in that
      order), and find the distinct documents without sorting: ``stamp[docs] = position`` keeps one position
      per document, ``stamp[docs] == position`` holds at exactly that one;
    * many postings (common words): MaxScore. Terms are taken in decreasing order of their largest possible
      contribution (a term's maximum score, computed once per term). Partial sums of the terms taken so far
      are lower bounds of the final scores; their k-th largest, θ, is a lower bound of the final k-th score.
      Once the terms not yet taken could add less than θ together, no document outside the postings taken
      can reach the top k, and of those only the ones whose partial sum plus that remainder reaches θ can.
      Their exact scores are then summed in query order from each term's postings (binary search in its
      sorted document ids), and the k best chosen;
    * when the terms that must be taken cover a large part of the corpus anyway, bm25s's own way: every term
      into the whole buffer, top k of all of it.

    Memory: 8 bytes per document, once, plus one float per distinct query term seen. Not thread-safe.
    """

    def __init__(self, data: np.ndarray, indices: np.ndarray, indptr: np.ndarray, n_docs: int):
        self.data, self.indices, self.indptr, self.n = data, indices, indptr, n_docs
        self.acc = np.zeros(n_docs, dtype=data.dtype)
        self.stamp = np.zeros(n_docs, dtype=np.int64 if len(data) >= 2**31 else np.int32)
        self._term_max: dict[int, float] = {}  # term -> max score, or -1.0 if its ids are not sorted
        self.paths = {"distinct": 0, "maxscore": 0, "pruned": 0, "dense": 0}  # queries scored each way

    def topk(self, ids: list[int], k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k best matching snippets: (scores, rows) of length k; past the matches, row -1 and score 0.

        A snippet matches when it holds a query term; every match scores > 0 (Lucene's idf and a term's count
        are positive), so bm25s's zero-score rows — arbitrary snippets, the lowest rows first — are not returned,
        as pyserini/Lucene (Search-R1's BM25) returns only matches."""
        if not ids:  # no indexed term: nothing matches
            return np.zeros(k, dtype=np.float32), np.full(k, -1, dtype=np.int64)
        ptr = self.indptr
        span = {t: (int(ptr[t]), int(ptr[t + 1])) for t in ids}
        total = sum(e - s for s, e in (span[t] for t in ids))
        if total <= SPARSE_POSTINGS:
            self.paths["distinct"] += 1
            cand, vals = self._distinct_sum([span[t] for t in ids])
        else:
            found = self._maxscore(ids, span, k)
            if found is None:
                self.paths["dense"] += 1
                vals, rows = self._dense_topk([span[t] for t in ids], k)
                rows[vals <= 0] = -1  # not a match: in the top k only because fewer than k snippets match
                vals[vals <= 0] = 0
                return vals, rows
            self.paths["maxscore"] += 1
            cand, vals = found
        vals = vals.astype(np.float32, copy=False)
        cand = cand.astype(np.int64)
        vals, rows = select_topk_rows(vals, cand, k)
        if len(rows) < k:  # fewer matching snippets than k: the rest of the row is "nothing found"
            vals = np.concatenate([vals, np.zeros(k - len(rows), dtype=np.float32)])
            rows = np.concatenate([rows, np.full(k - len(rows), -1, dtype=np.int64)])
        return vals, rows

    def _distinct_sum(self, spans: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
        """(documents, their sums over ``spans`` in the given order); leaves the buffers clean."""
        if len(spans) == 1:  # one term: its postings are the scores (distinct documents)
            s, e = spans[0]
            return self.indices[s:e], self.data[s:e]
        docs = np.concatenate([self.indices[s:e] for s, e in spans])
        np.add.at(self.acc, docs, np.concatenate([self.data[s:e] for s, e in spans]))
        pos = np.arange(len(docs), dtype=self.stamp.dtype)
        self.stamp[docs] = pos
        cand = docs[self.stamp[docs] == pos]
        vals = self.acc[cand]
        self.acc[cand] = 0
        return cand, vals

    def _max_of(self, t: int, s: int, e: int) -> float:
        m = self._term_max.get(t)
        if m is None:
            docs = self.indices[s:e]
            ok = e - s < 2 or bool(np.all(docs[1:] > docs[:-1]))
            m = self._term_max[t] = float(self.data[s:e].max()) if ok and e > s else (-1.0 if not ok else 0.0)
        return m

    def _maxscore(self, ids: list[int], span: dict[int, tuple[int, int]], k: int):
        """(candidates, exact scores) holding the top k, or None when pruning would not pay."""
        mult: dict[int, int] = {}
        for t in ids:
            mult[t] = mult.get(t, 0) + 1
        bound = {}
        for t in mult:
            m = self._max_of(t, *span[t])
            if m < 0:  # unsorted postings (not written by bm25s or medret): no binary search
                return None
            bound[t] = m * mult[t]
        order = sorted(mult, key=lambda t: -bound[t])
        rest = sum(bound.values())
        budget = ESSENTIAL_SHARE * self.n
        acc = self.acc
        parts: list[np.ndarray] = []  # the distinct documents of the terms taken (a BM25 weight is > 0)
        used = 0
        theta = 0.0
        try:
            for i, t in enumerate(order):
                s, e = span[t]
                used += e - s
                if used > budget:
                    return None
                docs = self.indices[s:e]
                parts.append(docs[acc[docs] == 0])
                acc[docs] += self.data[s:e] * mult[t]  # distinct within a term; partial sums bound from below
                rest -= bound[t]
                if i == len(order) - 1:  # every term taken: nothing left to look up
                    rest = 0.0
                    break
                n_cand = sum(len(p) for p in parts)
                if n_cand >= k:
                    cand = np.concatenate(parts) if len(parts) > 1 else parts[0]
                    part = acc[cand]
                    theta = float(np.partition(part, n_cand - k)[n_cand - k])
                    if rest < theta * (1 - _SLACK):
                        self.paths["pruned"] += 1
                        break
            cand = np.concatenate(parts) if len(parts) > 1 else parts[0]
            part = acc[cand].astype(np.float64)
        finally:
            for p in parts:
                acc[p] = 0
        # the terms not taken, largest first: add each to the survivors' partial sums, raise θ, prune again
        keep = part + rest >= theta * (1 - _SLACK)
        cand, part = cand[keep], part[keep]
        order_cand = np.argsort(cand, kind="stable")
        cand, part = cand[order_cand], part[order_cand]
        for t in order[i + 1:]:
            part += self._lookup(span[t], cand) * mult[t]
            rest -= bound[t]
            if len(cand) > k:
                theta = max(theta, float(np.partition(part, len(part) - k)[len(part) - k]))
            keep = part + rest >= theta * (1 - _SLACK)
            cand, part = cand[keep], part[keep]
        exact = np.zeros(len(cand), dtype=acc.dtype)
        for t in ids:  # query order, as bm25s adds; a term a document lacks adds 0, which changes nothing
            exact += self._lookup(span[t], cand)
        return cand, exact

    def _lookup(self, span: tuple[int, int], cand: np.ndarray) -> np.ndarray:
        """A term's weight (postings ``span``) for each of the sorted documents ``cand``; 0 where it is absent."""
        s, e = span
        if e <= s:
            return np.zeros(len(cand), dtype=self.acc.dtype)
        docs = self.indices[s:e]
        at = np.minimum(np.searchsorted(docs, cand), len(docs) - 1)
        return np.where(docs[at] == cand, self.data[s:e][at], 0).astype(self.acc.dtype, copy=False)

    def _dense_topk(self, spans: list[tuple[int, int]], k: int) -> tuple[np.ndarray, np.ndarray]:
        """bm25s's own algorithm on the reused buffer: every posting into the whole buffer, top k of all."""
        acc = self.acc
        for s, e in spans:
            np.add.at(acc, self.indices[s:e], self.data[s:e])
        out = select_topk(acc, k)
        acc.fill(0)
        return out[0].astype(np.float32, copy=False), out[1]


# Streaming builder: tokens go per batch into numpy arrays and two scratch files, never into per-document lists.
_ENTRY_CHUNK = 1 << 20  # (doc, term) entries scored and placed per step of the second pass
_SCRATCH = ("_build.terms.i32", "_build.tfs.i32")
# bm25s adds a NumPy float64 scalar (the length norm) to a float32 array of term counts: float64 under NumPy 2
# (NEP 50), float32 under NumPy 1's value-based casting. Score in whichever type that addition gives here.
_WORK = (np.float64(1.0) + np.zeros(1, dtype=np.float32)).dtype


def build_bm25(store, folder: Path, progress: bool = False, batch_size: int = 10_000, *,
               only_if_missing: bool = False) -> Path:
    """Build the BM25 index of ``store`` at ``folder`` holding its build lock (:mod:`medret.storage.locks`): a second
    process waits, and with ``only_if_missing`` then finds it built and returns. Leftovers of killed builds are
    removed first; a full disk or a read-only folder raises :class:`medret.errors.StorageError`."""
    folder = Path(folder)
    with artifact_lock(folder, f"the BM25 index {folder}"):
        if only_if_missing and (folder / "manifest.json").exists():
            return folder
        remove_stale(folder)
        with writing(f"the BM25 index {folder}", folder):
            return _build_bm25(store, folder, progress, batch_size)


def _build_bm25(store, folder: Path, progress: bool = False, batch_size: int = 10_000) -> Path:
    """Tokenize every snippet of the store and write a bm25s index, atomically, with a manifest.

    The files are those ``bm25s.BM25(k1=K1, b=B, method="lucene").index(Tokenized(ids, vocab))`` followed by
    ``save`` writes for the same tokenizer, byte for byte (same vocabulary ids, same float32 scores), so
    ``bm25s.BM25.load`` and :class:`BM25Index` read them unchanged; bm25s's own indexing is not used.

    Memory: pass 1 tokenizes one batch at a time and keeps, per snippet, its number of distinct terms and its
    length (2 x int32), plus document frequencies as a numpy array sized to the vocabulary; each batch's
    distinct (term, count) pairs go to two int32 scratch files in the temporary index folder. Pass 2 reads
    them back in chunks of ``_ENTRY_CHUNK`` entries, scores each chunk and places it, by a counting sort on
    the term, straight into the memory-mapped ``data``/``indices`` .npy files (float32 + int32). Peak
    resident memory is therefore about 8 bytes x nnz (the output pages, file-backed, which the kernel may
    write back) + 8 bytes x snippets + ~16 bytes x vocabulary + the tokenizer's word dictionaries + one batch
    + ~80 bytes x ``_ENTRY_CHUNK`` (~80 MB) of per-chunk temporaries, where nnz = number of distinct
    (snippet, term) pairs; disk holds another 8 bytes x nnz of scratch during the build. Measured on synthetic
    MedRAG corpora (medret.bench.synth), peak RSS above the interpreter's: 200k snippets (nnz 9.9M) 152 MiB
    vs 502 MiB for the former list + ``BM25.index`` path; 400k (nnz 19.9M) 233 MiB vs 983 MiB.
    """
    n_docs = len(store)
    if n_docs == 0:
        raise IndexBuildError("cannot build a BM25 index over an empty corpus")
    tok = _tokenizer()
    bar = None
    if progress:
        bar = tqdm(total=n_docs, desc="BM25 tokenize", unit="doc")
    with atomic_path(folder) as tmp:
        tmp.mkdir(parents=True)
        scratch = [tmp / name for name in _SCRATCH]
        df = np.zeros(1 << 16, dtype=np.int64)
        lengths: list[np.ndarray] = []
        n_terms: list[np.ndarray] = []
        with closing_bar(bar), open(scratch[0], "wb") as f_terms, open(scratch[1], "wb") as f_tfs:
            for _, docs in store.iter_batches(batch_size):
                ids = tok.tokenize([text_of(d) for d in docs], update_vocab=True, return_as="ids",
                                   show_progress=False)
                vocab_size = len(tok.get_vocab_dict())
                terms, tfs, per_doc, lens = _distinct_terms(ids, vocab_size)
                del ids
                if vocab_size > len(df):
                    df = np.concatenate([df, np.zeros(max(vocab_size, 2 * len(df)) - len(df), dtype=np.int64)])
                counts = np.bincount(terms)
                df[:len(counts)] += counts
                terms.tofile(f_terms)
                tfs.tofile(f_tfs)
                n_terms.append(per_doc)
                lengths.append(lens)
                if bar:
                    bar.update(len(docs))
        doc_len = np.concatenate(lengths)
        doc_terms = np.concatenate(n_terms)
        del lengths, n_terms
        if len(doc_len) != n_docs:
            raise IndexBuildError(f"the store yielded {len(doc_len)} snippets but reports {n_docs}; "
                                  f"rebuild the document store")
        vocab = tok.get_vocab_dict()
        n_vocab = len(vocab)  # bm25s sizes the matrix before it adds the empty token
        df = df[:n_vocab]
        idf = _lucene_idf(df, n_docs)
        indptr = np.zeros(n_vocab + 1, dtype=np.int64)
        np.cumsum(df, out=indptr[1:])
        nnz = int(indptr[-1])
        if "" not in vocab:
            vocab[""] = max(vocab.values()) + 1

        # params.index.json, vocab.index.json and indptr by bm25s's own save; data and indices are then
        # (re)written in place below
        model = bm25s.BM25(k1=K1, b=B, method=METHOD)
        model.vocab_dict = vocab
        model.nonoccurrence_array = None
        model.scores = {"data": np.zeros(0, dtype=np.float32), "indices": np.zeros(0, dtype=np.int32),
                        "indptr": indptr, "num_docs": n_docs}
        model.save(str(tmp), show_progress=False)
        data = np.lib.format.open_memmap(tmp / DATA, mode="w+", dtype=np.float32, shape=(nnz,))
        rows = np.lib.format.open_memmap(tmp / INDICES, mode="w+", dtype=np.int32, shape=(nnz,))
        for name, arr in ((DATA, data), (INDICES, rows)):  # a full disk fails here, not as SIGBUS in a page write
            preallocate(tmp / name, arr.offset + arr.nbytes)
        avg_len = doc_len.mean(dtype=np.float64)
        heads = indptr[:-1].copy()  # next free slot of every column
        entry_ptr = np.zeros(n_docs + 1, dtype=np.int64)
        np.cumsum(doc_terms, out=entry_ptr[1:])
        with open(scratch[0], "rb") as f_terms, open(scratch[1], "rb") as f_tfs:
            d0 = 0
            while d0 < n_docs:
                d1 = int(np.searchsorted(entry_ptr, entry_ptr[d0] + _ENTRY_CHUNK, side="right")) - 1
                d1 = min(max(d1, d0 + 1), n_docs)
                count = int(entry_ptr[d1] - entry_ptr[d0])
                terms = np.fromfile(f_terms, dtype=np.int32, count=count)
                tfs = np.fromfile(f_tfs, dtype=np.int32, count=count)
                if len(terms) != count or len(tfs) != count:
                    raise IndexBuildError(f"BM25 scratch file in {tmp} is truncated (disk full?)")
                per_doc = doc_terms[d0:d1]
                # bm25s, per document: tf / (k1 * ((1 - b) + b * l_d / l_avg) + tf), times the float32 idf
                norm = K1 * ((1 - B) + B * doc_len[d0:d1].astype(np.float64) / avg_len)
                tf = tfs.astype(np.float32).astype(_WORK)
                del tfs
                tfc = tf / (np.repeat(norm, per_doc).astype(_WORK) + tf)
                del tf
                scores = (idf[terms].astype(_WORK) * tfc).astype(np.float32)
                del tfc
                # counting sort by term; stable, so every column keeps its rows ascending as bm25s's CSC does
                order = np.argsort(terms, kind="stable")
                terms = terms[order]
                first = np.ones(count, dtype=bool)
                first[1:] = terms[1:] != terms[:-1]
                starts = np.flatnonzero(first)
                del first
                sizes = np.diff(np.append(starts, count))
                pos = np.arange(count, dtype=np.int64)
                pos -= np.repeat(starts, sizes)  # rank within the term's run
                pos += heads[terms]
                data[pos] = scores[order]
                del scores
                rows[pos] = (np.repeat(np.arange(d0, d1, dtype=np.int32), per_doc))[order]
                heads[terms[starts]] += sizes
                del order, terms, pos
                d0 = d1
        if not np.array_equal(heads, indptr[1:]):
            raise IndexBuildError(f"BM25 build of {folder} is inconsistent (column fill does not match the "
                                  f"document frequencies); rebuild with `--rebuild`")
        data.flush()
        rows.flush()
        del data, rows
        for p in scratch:
            p.unlink()
        files = sorted(p.name for p in tmp.iterdir() if p.is_file())
        manifest = {"retriever": "bm25", "rows": n_docs, "store_checksum": store.checksum,
                    "k1": K1, "b": B, "method": METHOD, "tokenizer": "bm25s: lower, \\w\\w+, english stop words, "
                    "Snowball english stemmer",
                    # read once more after writing (data/indices are filled out of order through memory maps);
                    # `medret doctor` compares sizes at every open, hashes with --deep
                    "files": {f: (tmp / f).stat().st_size for f in files},
                    "file_sha256": {f: sha256_file(tmp / f) for f in files}}
        (tmp / "manifest.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    log.info("BM25 index of %d snippets (%d term entries) written to %s", n_docs, nnz, folder)
    return folder


def _distinct_terms(ids: list[list[int]], vocab_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per document of a batch: its distinct term ids (ascending) with their counts, how many, and its length."""
    n = len(ids)
    lens = np.fromiter(map(len, ids), dtype=np.int64, count=n)
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lens.sum()))
    key = np.repeat(np.arange(n, dtype=np.int64), lens) * vocab_size + flat
    del flat
    key, tf = np.unique(key, return_counts=True)
    doc, term = np.divmod(key, vocab_size)
    per_doc = np.bincount(doc, minlength=n)
    return term.astype(np.int32), tf.astype(np.int32), per_doc.astype(np.int32), lens.astype(np.int32)


def _lucene_idf(df: np.ndarray, n_docs: int) -> np.ndarray:
    """bm25s's lucene idf per term as float32, with math.log on Python numbers exactly as bm25s computes it
    (once per distinct document frequency); 0 for terms in no document."""
    idf = np.zeros(len(df), dtype=np.float32)
    values, inverse = np.unique(df, return_inverse=True)
    per_value = np.array([math.log(1 + (n_docs - v + 0.5) / (v + 0.5)) if v else 0.0 for v in values.tolist()],
                         dtype=np.float64)
    idf[:] = per_value[inverse.reshape(-1)]
    return idf
