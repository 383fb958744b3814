"""Sharded exact dense search: the merge and the shard-local top-k, checked against an independent brute force
(full score matrix, then a (score desc, row asc) sort). Shards as Ray actors: tests/transports/test_ray_sharded.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from medret.errors import ConfigError
from medret.index.sharded import (
    DenseShard,
    ShardedDenseIndex,
    exact_topk_slice,
    merge_shard_results,
    plan_shards,
    score_block,
)


def brute_force(X, Q, k, block, metric="ip"):
    """All scores (same block kernel), then Python's sort on (-score, row): the definition of the result."""
    S = np.concatenate([score_block(torch.from_numpy(Q), torch.from_numpy(X[a:a + block]), metric).numpy()
                        for a in range(0, len(X), block)], axis=1)
    kk = min(k, len(X))
    rows = np.array([sorted(range(len(X)), key=lambda j: (-S[i, j], j))[:kk] for i in range(len(Q))])
    return np.take_along_axis(S, rows, 1), rows


def tied_data(seed, n=700, d=6, nq=9):
    rng = np.random.default_rng(seed)
    X = rng.integers(-2, 3, (n, d)).astype(np.float32)  # small integers: many exactly equal scores
    X[100:140] = X[5]  # and identical rows
    return X, rng.integers(-2, 3, (nq, d)).astype(np.float32)


@pytest.mark.parametrize("n_rows,n_shards,block", [(1000, 3, 64), (100, 8, 64), (64, 2, 64), (1, 1, 16),
                                                   (1000, 1000, 7)])
def test_plan_shards_covers_rows_on_block_boundaries(n_rows, n_shards, block):
    ranges = plan_shards(n_rows, n_shards, block)
    assert ranges[0][0] == 0 and ranges[-1][1] == n_rows
    assert all(a < b for a, b in ranges) and all(r[1] == s[0] for r, s in zip(ranges, ranges[1:]))
    assert all(a % block == 0 for a, _ in ranges)
    assert len(ranges) == min(n_shards, -(-n_rows // block))
    sizes = [-(-(b - a) // block) for a, b in ranges]  # blocks per shard differ by at most one
    assert max(sizes) - min(sizes) <= 1


def test_plan_shards_refuses_bad_input():
    with pytest.raises(ConfigError, match="n_shards=0"):
        plan_shards(10, 0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_merge_equals_brute_force_on_random_candidate_lists(seed):
    rng = np.random.default_rng(seed)
    n, k = 5, 7
    parts, all_s, all_r = [], [], []
    start = 0
    for width in rng.integers(1, 12, 4):
        s = rng.integers(0, 4, (n, width)).astype(np.float32)  # heavy ties
        r = np.tile(np.arange(start, start + width), (n, 1))
        start += width
        parts.append((s, r))
        all_s.append(s)
        all_r.append(r)
    S, R = np.concatenate(all_s, 1), np.concatenate(all_r, 1)
    ms, mr = merge_shard_results(parts, k)
    for i in range(n):
        want = sorted(zip(S[i], R[i]), key=lambda t: (-t[0], t[1]))[:k]
        assert [int(r) for r in mr[i]] == [int(r) for _, r in want]
        assert [float(s) for s in ms[i]] == [float(s) for s, _ in want]


def test_merge_puts_padding_last():
    s = np.array([[1.0, -np.inf]], np.float32)
    r = np.array([[3, -1]])
    ms, mr = merge_shard_results([(s, r), (np.array([[0.5]], np.float32), np.array([[7]]))], 3)
    assert mr.tolist() == [[3, 7, -1]]


@pytest.mark.parametrize("k", [1, 4, 40, 700, 900])
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_sharded_search_equals_brute_force_with_ties(k, metric):
    X, Q = tied_data(3)
    bs, br = brute_force(X, Q, k, 64, metric)
    s, r = exact_topk_slice(X, Q, k, 0, metric, block=64)  # unsharded
    assert np.array_equal(r, br) and np.array_equal(s, bs)
    for n_shards in (2, 3, 5):
        ranges = plan_shards(len(X), n_shards, 64)
        idx = ShardedDenseIndex([DenseShard(a, b, metric, 64, embeddings=X[a:b]) for a, b in ranges], ranges,
                                X.shape[1], metric)
        ss, sr = idx.search(Q, k)
        assert np.array_equal(sr, br), f"{n_shards} shards"
        assert np.array_equal(ss, bs), "scores must be bit-identical to the unsharded ones"


def test_shard_start_must_be_block_aligned():
    X, Q = tied_data(0)
    with pytest.raises(ConfigError, match="multiples of block"):
        exact_topk_slice(X[10:], Q, 3, 10, block=64)


def test_row_map_applies_after_the_merge():
    X, Q = tied_data(4)
    row_map = np.arange(len(X))[::-1].copy()
    ranges = plan_shards(len(X), 3, 64)
    idx = ShardedDenseIndex([DenseShard(a, b, block=64, embeddings=X[a:b]) for a, b in ranges], ranges,
                            X.shape[1], row_map=row_map)
    _, br = brute_force(X, Q, 5, 64)
    assert np.array_equal(idx.search(Q, 5)[1], row_map[br])
