"""Reading MedRAG's precomputed indexes (a fake one written here) and mapping their rows to the store."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medret.errors import IndexBuildError
from medret.index.medrag import (
    embedding_files,
    medrag_index_dir,
    open_medrag_embeddings,
    open_medrag_faiss,
    open_medrag_index,
    read_metadatas,
)

DIM = 16
# Stems chosen so that name order (MedRAG's sorted(os.listdir)) differs from numeric order.
FILES = {"pubmed_2": 3, "pubmed_10": 5, "pubmed_1": 4, "pubmed_7": 0}


class FakeStore:
    """Duck-typed store whose rows follow a file order different from MedRAG's, so the mapping is not identity."""

    def __init__(self, order):
        self.files = [(stem, FILES[stem]) for stem in order]
        self.ids = [f"{stem}_{i}" for stem, n in self.files for i in range(n)]
        self.checksum = "fake"

    def __len__(self):
        return len(self.ids)

    def get(self, rows):
        return [{"id": self.ids[int(r)], "title": "", "content": ""} for r in rows]


def write_medrag(root: Path, model: str = "ncbi/MedCPT-Article-Encoder", metric: str = "ip", seed: int = 0):
    """A MedRAG-layout source: chunk/*.jsonl, index/<model>/embedding/*.npy, faiss.index, metadatas.jsonl."""
    import faiss

    rng = np.random.default_rng(seed)
    (root / "chunk").mkdir(parents=True)
    idx_dir = medrag_index_dir(root, model)
    (idx_dir / "embedding").mkdir(parents=True)
    vectors = {}
    for stem, n in FILES.items():
        with open(root / "chunk" / f"{stem}.jsonl", "w") as f:
            for i in range(n):
                f.write(json.dumps({"id": f"{stem}_{i}", "title": f"T {stem} {i}", "content": f"text {i}",
                                    "contents": f"T {stem} {i}. text {i}"}) + "\n")
        if n:  # MedRAG writes no .npy for an empty chunk file
            vectors[stem] = rng.standard_normal((n, DIM)).astype(np.float32)
            np.save(idx_dir / "embedding" / f"{stem}.npy", vectors[stem])
    index = faiss.IndexFlatIP(DIM) if metric == "ip" else faiss.IndexFlatL2(DIM)
    meta = []
    for stem in sorted(vectors):  # the order MedRAG adds them in
        index.add(vectors[stem])
        meta += [{"index": i, "source": stem} for i in range(len(vectors[stem]))]
    faiss.write_index(index, str(idx_dir / "faiss.index"))
    (idx_dir / "metadatas.jsonl").write_text("".join(json.dumps(m) + "\n" for m in meta))
    return idx_dir, vectors


def brute_ids(vectors, q, k, metric):
    ids, mat = [], []
    for stem, v in vectors.items():
        ids += [f"{stem}_{i}" for i in range(len(v))]
        mat.append(v)
    mat = np.concatenate(mat)
    s = q @ mat.T if metric == "ip" else -((q[:, None] - mat[None]) ** 2).sum(-1)
    order = np.argsort(-s, axis=1)[:, :k]
    return [[ids[j] for j in row] for row in order], np.take_along_axis(s, order, 1)


@pytest.mark.parametrize("metric,model", [("ip", "ncbi/MedCPT-Article-Encoder"), ("l2", "allenai/specter")])
@pytest.mark.parametrize("opener", ["faiss", "embeddings"])
def test_medrag_index_maps_rows_to_store_and_matches_brute_force(tmp_path, metric, model, opener):
    idx_dir, vectors = write_medrag(tmp_path / "pubmed", model=model, metric=metric)
    store = FakeStore(order=["pubmed_7", "pubmed_2", "pubmed_10", "pubmed_1"])
    if opener == "faiss":
        index = open_medrag_faiss(idx_dir, store)
    else:
        index = open_medrag_embeddings(idx_dir, store)
        assert isinstance(index.embeddings[0], np.memmap)
    assert index.metric == metric and index.ntotal == 12 and index.row_map is not None
    q = np.random.default_rng(9).standard_normal((6, DIM)).astype(np.float32)
    scores, rows = index.search(q, 5)
    expected_ids, expected_scores = brute_ids(vectors, q, 5, metric)
    got_ids = [[d["id"] for d in store.get(r)] for r in rows]
    assert got_ids == expected_ids
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-4, atol=1e-4)


def test_faiss_and_embeddings_paths_agree_and_prefer(tmp_path):
    idx_dir, _ = write_medrag(tmp_path / "pubmed")
    store = FakeStore(order=sorted(FILES, reverse=True))
    q = np.random.default_rng(1).standard_normal((4, DIM)).astype(np.float32)
    a = open_medrag_index(idx_dir, store, prefer="faiss")
    b = open_medrag_index(idx_dir, store, prefer="embeddings")
    # MedRAG's faiss.index is an IndexFlatIP: its vectors are searched in place by the exact path too
    assert a.backend == b.backend == "exact" and a._flat_owner is not None and b._flat_owner is None
    np.testing.assert_array_equal(a.search(q, 4)[1], b.search(q, 4)[1])


def test_chunk_file_order_is_medrag_sorted_name_order(tmp_path):
    idx_dir, _ = write_medrag(tmp_path / "pubmed")
    assert [p.stem for p in embedding_files(idx_dir)] == ["pubmed_1", "pubmed_10", "pubmed_2"]
    stems, codes, lines = read_metadatas(idx_dir / "metadatas.jsonl")
    assert stems == ["pubmed_1", "pubmed_10", "pubmed_2"]
    assert lines.tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 4, 0, 1, 2]


def test_with_the_real_document_store(tmp_path):
    from medret.corpus.registry import resolve_corpus
    from medret.corpus.store import DocStore

    idx_dir, vectors = write_medrag(tmp_path / "pubmed")
    source = resolve_corpus(str(tmp_path / "pubmed"), None).sources[0]
    store = DocStore.open(source)
    index = open_medrag_index(idx_dir, store, prefer="faiss", cache_dir=tmp_path / "cache")
    q = np.random.default_rng(4).standard_normal((5, DIM)).astype(np.float32)
    rows = index.search(q, 3)[1]
    assert [[d["id"] for d in store.get(r)] for r in rows] == brute_ids(vectors, q, 3, "ip")[0]
    assert len(list((tmp_path / "cache").glob("medrag_rowmap_*.npy"))) == 1
    again = open_medrag_faiss(idx_dir, store, cache_dir=tmp_path / "cache")  # from the cached row map
    np.testing.assert_array_equal(again.search(q, 3)[1], rows)
    store.close()


def test_mismatches_are_refused(tmp_path):
    idx_dir, _ = write_medrag(tmp_path / "pubmed")
    store = FakeStore(order=list(FILES))
    # a chunk file the corpus does not have
    other = FakeStore(order=["pubmed_1", "pubmed_2", "pubmed_7"])
    with pytest.raises(IndexBuildError, match="'pubmed_10'.jsonl"):
        open_medrag_faiss(idx_dir, other)
    # a line beyond the chunk file
    meta = idx_dir / "metadatas.jsonl"
    lines = meta.read_text().splitlines()
    lines[0] = json.dumps({"index": 99, "source": "pubmed_1"})
    meta.write_text("\n".join(lines) + "\n")
    with pytest.raises(IndexBuildError, match="line 99 of pubmed_1.jsonl"):
        open_medrag_faiss(idx_dir, store)
    # metadata and faiss from different builds
    meta.write_text("\n".join(lines[1:]).replace('"index": 99', '"index": 0') + "\n")
    with pytest.raises(IndexBuildError, match="11 rows but"):
        open_medrag_faiss(idx_dir, store)
    meta.write_text("not json\n")
    with pytest.raises(IndexBuildError, match="not MedRAG metadata"):
        open_medrag_faiss(idx_dir, store)


def test_embedding_rows_must_match_chunk_files(tmp_path):
    idx_dir, _ = write_medrag(tmp_path / "pubmed")
    np.save(idx_dir / "embedding" / "pubmed_2.npy", np.zeros((2, DIM), np.float32))
    with pytest.raises(IndexBuildError, match="has 2 rows but chunk file pubmed_2.jsonl has 3"):
        open_medrag_embeddings(idx_dir, FakeStore(order=list(FILES)))


def test_lfs_pointer_and_missing_index(tmp_path):
    idx_dir, _ = write_medrag(tmp_path / "pubmed")
    (idx_dir / "faiss.index").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 12\n")
    with pytest.raises(IndexBuildError, match="git-lfs pointer"):
        open_medrag_faiss(idx_dir, FakeStore(order=list(FILES)))
    with pytest.raises(IndexBuildError, match="no MedRAG index"):
        open_medrag_index(tmp_path / "nothing", FakeStore(order=list(FILES)))
