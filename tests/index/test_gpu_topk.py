"""medret.index.gpu_topk.exact_topk against brute force (float64, lowest row first on ties), on CPU."""
import numpy as np
import pytest
import torch

from medret.errors import ConfigError
from medret.index.gpu_topk import auto_chunk_rows, exact_topk, ordered_int


def brute(emb, q, k, metric="ip"):
    e = np.asarray(emb, dtype=np.float64)
    qq = np.asarray(q, dtype=np.float64)
    s = qq @ e.T if metric == "ip" else -((qq[:, None, :] - e[None]) ** 2).sum(-1)
    rows = np.stack([np.lexsort((np.arange(s.shape[1]), -r))[:k] for r in s])
    return np.take_along_axis(s, rows, 1), rows


@pytest.mark.parametrize("method", ["blockmax", "naive"])
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_equals_brute_force_with_many_ties(method, metric):
    # small integer vectors: scores are exact in float32 and ties are everywhere
    rng = np.random.default_rng(1)
    for trial in range(12):
        n = int(rng.integers(1, 2500))
        emb = rng.integers(-2, 3, size=(n, 6)).astype(np.float32)
        q = rng.integers(-2, 3, size=(5, 6)).astype(np.float32)
        k = int(rng.integers(1, 25))
        chunk = int(rng.integers(1, 600))
        block = int(rng.integers(1, 40))
        s, r = exact_topk(torch.from_numpy(emb), torch.from_numpy(q), k, chunk_rows=chunk, block_rows=block,
                          method=method, metric=metric)
        bs, br = brute(emb, q, k, metric)
        assert s.dtype == torch.float32 and r.dtype == torch.int64
        assert r.shape == (5, min(k, n))
        np.testing.assert_array_equal(r.numpy(), br, err_msg=f"trial {trial}: n={n} k={k} chunk={chunk} block={block}")
        np.testing.assert_allclose(s.numpy(), bs, rtol=0, atol=1e-4)


def test_all_equal_scores_return_the_lowest_rows():
    emb = torch.ones(1000, 4)
    s, r = exact_topk(emb, torch.ones(2, 4), 7, chunk_rows=256, block_rows=16)
    assert r.tolist() == [list(range(7))] * 2
    assert s.tolist() == [[4.0] * 7] * 2


def test_random_floats_match_brute_force():
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(5000, 32, generator=g)
    q = torch.randn(9, 32, generator=g)
    s, r = exact_topk(emb, q, 10, chunk_rows=1000, block_rows=64)
    bs, br = brute(emb.numpy(), q.numpy(), 10)
    for a, b in zip(r.numpy(), br):
        assert set(a) == set(b)
    np.testing.assert_allclose(s.numpy(), bs, rtol=1e-5, atol=1e-5)


def test_segments_and_numpy_memmaps_number_rows_consecutively(tmp_path):
    rng = np.random.default_rng(3)
    parts = [rng.standard_normal((n, 16)).astype(np.float16) for n in (700, 1, 1300)]
    np.save(tmp_path / "a.npy", parts[0])
    mm = np.load(tmp_path / "a.npy", mmap_mode="r")
    segs = [mm, torch.from_numpy(parts[1]), parts[2]]
    q = rng.standard_normal((4, 16)).astype(np.float32)
    s, r = exact_topk(segs, torch.from_numpy(q), 6, chunk_rows=300, block_rows=32)
    bs, br = brute(np.concatenate(parts).astype(np.float32), q, 6)
    np.testing.assert_array_equal(r.numpy(), br)
    np.testing.assert_allclose(s.numpy(), bs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("storage", [torch.float16, torch.bfloat16])
def test_recall_of_half_precision_against_a_float32_reference(storage):
    """fp16/bf16 storage (and fp16/bf16 matmul) keep recall@5 against the fp32 exact reference >= 0.99."""
    g = torch.Generator().manual_seed(7)
    emb32 = torch.randn(20000, 64, generator=g)
    q = torch.randn(32, 64, generator=g)
    _, ref = brute(emb32.numpy(), q.numpy(), 5)
    for compute in (None, storage):  # None: float32 math on CPU over the stored half vectors
        s, r = exact_topk(emb32.to(storage), q, 5, chunk_rows=4096, compute_dtype=compute)
        recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(r.numpy(), ref)])
        assert recall >= 0.98 if storage == torch.bfloat16 else recall >= 0.99, (storage, compute, recall)
        # the returned scores are float32 inner products of the stored vectors, best first
        stored = emb32.to(storage).float().numpy()
        expect = np.einsum("nd,nkd->nk", q.numpy(), stored[r.numpy()])
        np.testing.assert_allclose(s.numpy(), expect, rtol=1e-4, atol=1e-4)
        assert (np.diff(s.numpy(), axis=1) <= 1e-6).all()


def test_half_matmul_with_rescoring_finds_the_exact_top_of_the_stored_vectors():
    g = torch.Generator().manual_seed(11)
    emb = torch.randn(8000, 48, generator=g).half()
    q = torch.randn(16, 48, generator=g)
    s, r = exact_topk(emb, q, 5, chunk_rows=2048, compute_dtype=torch.float16, oversample=20)
    bs, br = brute(emb.float().numpy(), q.numpy(), 5)
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(r.numpy(), br)])
    assert recall >= 0.99


def test_k_larger_than_the_corpus_and_single_query_vector():
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    s, r = exact_topk(emb, torch.tensor([1.0, 2.0]), 10)
    assert r.tolist() == [[2, 1, 0]]
    assert s.tolist() == [[3.0, 2.0, 1.0]]


def test_ordered_int_preserves_float_order():
    x = torch.tensor([-np.inf, -3.5, -1e-30, -0.0, 0.0, 1e-30, 2.0, 65504.0, np.inf], dtype=torch.float32)
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        o = ordered_int(x.to(dt)).tolist()
        v = x.to(dt).tolist()
        for i in range(len(v) - 1):
            assert (o[i] < o[i + 1]) == (v[i] < v[i + 1]) and (o[i] == o[i + 1]) == (v[i] == v[i + 1]), (dt, i)


def test_temporary_memory_bound():
    rows = auto_chunk_rows(512, 128, 2, 512 << 20)
    assert rows % 128 == 0
    assert rows * 512 * 2 <= 512 << 20  # the (n x chunk) fp16 score block stays within the bound
    assert auto_chunk_rows(1, 128, 2, 512 << 20) == 1 << 22  # capped


def test_bad_input_names_the_field():
    emb = torch.zeros(10, 4)
    with pytest.raises(ConfigError, match="k=0"):
        exact_topk(emb, torch.zeros(1, 4), 0)
    with pytest.raises(ConfigError, match="q.shape"):
        exact_topk(emb, torch.zeros(1, 5), 3)
    with pytest.raises(ConfigError, match="method="):
        exact_topk(emb, torch.zeros(1, 4), 3, method="fast")
    with pytest.raises(ConfigError, match="metric="):
        exact_topk(emb, torch.zeros(1, 4), 3, metric="cos")
    with pytest.raises(ConfigError, match="emb segment 1"):
        exact_topk([emb, torch.zeros(3, 5)], torch.zeros(1, 4), 3)
