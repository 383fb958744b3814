"""Dense search: exact paths (torch, numpy, faiss flat) equal a brute-force numpy search; ANN recall; I/O."""
from __future__ import annotations

import numpy as np
import pytest

from medret.errors import ConfigError, IndexBuildError
from medret.index.dense import DenseIndex
from medret.index.exact import exact_search
from medret.index.faiss_ops import factory_string


def brute(x: np.ndarray, q: np.ndarray, k: int, metric: str):
    x = x.astype(np.float64)
    q = q.astype(np.float64)
    if metric == "ip":
        s = q @ x.T
    else:
        s = -((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, 1), order


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1200, 24)).astype(np.float32)
    q = rng.standard_normal((9, 24)).astype(np.float32)
    return x, q


def clustered(n=6000, d=32, n_clusters=60, nq=100, seed=3):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_clusters, d)).astype(np.float32) * 3
    lab = rng.integers(0, n_clusters, n)
    x = centers[lab] + rng.standard_normal((n, d)).astype(np.float32)
    q = centers[rng.integers(0, n_clusters, nq)] + rng.standard_normal((nq, d)).astype(np.float32)
    return x.astype(np.float32), q.astype(np.float32)


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("chunk_rows", [7, 64, None])
def test_exact_search_equals_brute_force(data, metric, chunk_rows):
    x, q = data
    s, r = exact_search(x, q, 10, metric, chunk_rows=chunk_rows)
    bs, br = brute(x, q, 10, metric)
    assert s.dtype == np.float32 and r.dtype == np.int64 and s.shape == (9, 10)
    np.testing.assert_array_equal(r, br)
    np.testing.assert_allclose(s, bs, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_exact_search_fp16_memmapped_segments(tmp_path, data, metric):
    x, q = data
    x16 = x.astype(np.float16)
    np.save(tmp_path / "a.npy", x16[:500])
    np.save(tmp_path / "b.npy", x16[500:])
    segs = [np.load(tmp_path / "a.npy", mmap_mode="r"), np.load(tmp_path / "b.npy", mmap_mode="r")]
    assert isinstance(segs[0], np.memmap)
    bs, br = brute(x16.astype(np.float32), q, 5, metric)
    s, r = exact_search(segs, q, 5, metric, chunk_rows=128)
    np.testing.assert_array_equal(r, br)  # rows across segments are numbered continuously
    np.testing.assert_allclose(s, bs, rtol=1e-4, atol=1e-3)


def test_exact_search_k_larger_than_corpus_and_single_query(data):
    x, q = data
    s, r = exact_search(x[:4], q[0], 10, "ip")
    assert s.shape == (1, 4)
    assert sorted(r[0].tolist()) == [0, 1, 2, 3]
    assert np.all(np.diff(s[0]) <= 0)


def test_temp_memory_bound_chunking_matches(data):
    x, q = data
    s1, r1 = exact_search(x, q, 3, "ip", max_temp_bytes=1)  # forces the minimum chunk size
    bs, br = brute(x, q, 3, "ip")
    np.testing.assert_array_equal(r1, br)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_flat_equals_brute_force_and_l2_is_negative_squared_distance(data, metric):
    x, q = data
    idx = DenseIndex.build(x, metric, "flat")
    assert idx.backend == "exact"
    s, r = idx.search(q, 8)
    bs, br = brute(x, q, 8, metric)
    np.testing.assert_array_equal(r, br)
    np.testing.assert_allclose(s, bs, rtol=1e-4, atol=1e-3)
    if metric == "l2":
        assert (s <= 0).all()
        d0 = ((q[0] - x[r[0, 0]]) ** 2).sum()
        assert s[0, 0] == pytest.approx(-d0, rel=1e-4)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_a_flat_faiss_file_is_searched_in_place_by_the_exact_path(data, tmp_path, metric):
    """MedRAG ships IndexFlatIP files: medret maps them and searches their vectors itself (faster, GPU-able),
    with faiss's own answer."""
    import faiss

    from medret.index.faiss_ops import read_faiss_index

    x, q = data
    ref = faiss.IndexFlatIP(x.shape[1]) if metric == "ip" else faiss.IndexFlatL2(x.shape[1])
    ref.add(x)
    faiss.write_index(ref, str(tmp_path / "flat.index"))
    idx = DenseIndex(metric=metric, dim=x.shape[1], index_type="flat",
                     faiss_index=read_faiss_index(tmp_path / "flat.index"))
    assert idx.backend == "exact" and idx.faiss_index is None and idx.ntotal == len(x)
    np.testing.assert_array_equal(idx.embeddings[0], x)
    s, r = idx.search(q, 6)
    fd, fr = ref.search(q, 6)
    np.testing.assert_array_equal(r, fr)
    np.testing.assert_allclose(s, fd if metric == "ip" else -fd, rtol=1e-4, atol=1e-3)
    other = "l2" if metric == "ip" else "ip"
    with pytest.raises(IndexBuildError, match=f"open it with metric='{metric}'"):
        DenseIndex(metric=other, dim=x.shape[1], index_type="flat",
                   faiss_index=read_faiss_index(tmp_path / "flat.index"))


def test_fp16_flat_uses_exact_backend(data):
    x, q = data
    idx = DenseIndex.build(x.astype(np.float16), "ip", "flat")
    assert idx.backend == "exact" and idx.dtype == "float16"
    s, r = idx.search(q, 4)
    np.testing.assert_array_equal(r, brute(x.astype(np.float16).astype(np.float32), q, 4, "ip")[1])


def test_hnsw_recall_against_flat():
    # HNSW (M=32, efSearch=128) over 6k clustered vectors explores far more than the 10 neighbours
    # asked for, so it should find nearly all of the exact top-10; 0.9 leaves slack for graph randomness.
    x, q = clustered()
    flat_rows = DenseIndex.build(x, "ip", "flat").search(q, 10)[1]
    idx = DenseIndex.build(x, "ip", "hnsw")
    rows = idx.search(q, 10)[1]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, flat_rows)])
    assert recall >= 0.9, recall


def test_ivfpq_recall_against_flat():
    # IVF-PQ compresses each 16-d vector to 4 codes of 6 bits; on clustered data the coarse quantizer finds
    # the right cluster and PQ ranks within it coarsely. Exact top-10 neighbours inside a dense cluster are
    # close in distance, so ~2/3 recall@10 is what such short codes give (measured 0.68 on two seeds);
    # 0.5 catches a broken index (random rows would give ~0.003).
    x, q = clustered(n=3000, d=16, n_clusters=30)
    flat_rows = DenseIndex.build(x, "l2", "flat").search(q, 10)[1]
    idx = DenseIndex.build(x, "l2", "ivfpq")
    assert idx.faiss_index.ntotal == len(x)
    rows = idx.search(q, 10)[1]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, flat_rows)])
    assert recall >= 0.5, recall
    # recall@10 of the IVF-PQ top-50 (re-ranking depth) is much higher
    rows50 = idx.search(q, 50)[1]
    recall50 = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows50, flat_rows)])
    assert recall50 >= 0.9, recall50


def test_factory_string_passthrough_and_invalid():
    x, q = clustered(n=2000)
    idx = DenseIndex.build(x, "ip", "IVF16,Flat", search_params={"nprobe": 16})
    s, r = idx.search(q[:5], 5)
    np.testing.assert_array_equal(r, brute(x, q[:5], 5, "ip")[1])  # nprobe = nlist: exhaustive
    with pytest.raises(ConfigError, match="index_type='NotAnIndex'"):
        DenseIndex.build(x, "ip", "NotAnIndex")


def test_ivfpq_factory_parameters():
    assert factory_string("ivfpq", 768, 54_000_000) == "IVF32768,PQ96x8np"
    assert factory_string("ivfpq", 16, 3000) == "IVF76,PQ4x6np"  # 3000 // 39 lists, 4-d sub-vectors
    assert factory_string("flat", 10, 10) == "Flat"
    assert factory_string("hnsw", 10, 10) == "HNSW32,Flat"


@pytest.mark.parametrize("kind", ["flat32", "flat16", "hnsw"])
def test_save_load_roundtrip_mmap(tmp_path, data, kind):
    x, q = data
    if kind == "flat16":
        idx = DenseIndex.build(x.astype(np.float16), "ip", "flat")
    elif kind == "flat32":
        idx = DenseIndex.build(x, "ip", "flat")
    else:
        idx = DenseIndex.build(x, "ip", "hnsw", search_params={"ef_search": 64})
    before = idx.search(q, 6)
    out = idx.save(tmp_path / "ix")
    assert not list(tmp_path.glob(".ix.tmp-*"))
    loaded = DenseIndex.load(out, mmap=True)
    assert loaded.backend == idx.backend and loaded.ntotal == len(x) and loaded.metric == "ip"
    if kind == "flat16":
        assert isinstance(loaded.embeddings[0], np.memmap)
    if kind == "hnsw":
        assert loaded.faiss_index.hnsw.efSearch == 64
    after = loaded.search(q, 6)
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_allclose(before[0], after[0], rtol=1e-5)


def test_row_map_translates_rows(data):
    x, q = data
    perm = np.random.default_rng(0).permutation(len(x)).astype(np.int64)
    idx = DenseIndex(metric="ip", dim=x.shape[1], index_type="flat", embeddings=[x], row_map=perm)
    s, r = idx.search(q, 3)
    np.testing.assert_array_equal(r, perm[brute(x, q, 3, "ip")[1]])
    with pytest.raises(IndexBuildError, match="row_map"):
        DenseIndex(metric="ip", dim=x.shape[1], index_type="flat", embeddings=[x], row_map=perm[:5])


def test_bad_inputs(data):
    x, q = data
    idx = DenseIndex.build(x, "ip", "flat")
    with pytest.raises(ConfigError, match="qemb.shape"):
        idx.search(q[:, :5], 3)
    for k in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match="k="):
            idx.search(q, k)
    with pytest.raises(ConfigError, match="metric="):
        exact_search(x, q, 3, "cosine")
    with pytest.raises(IndexBuildError, match="dense.json"):
        DenseIndex.load(x.shape and "/nonexistent/dir")


def test_torch_resident_tensor_path(data):
    import torch

    x, q = data
    idx = DenseIndex.build(x.astype(np.float16), "l2", "flat")
    t = torch.from_numpy(x.astype(np.float16))
    s, r = exact_search(t, q, 5, "l2")
    np.testing.assert_array_equal(r, idx.search(q, 5)[1])
