"""Shards as Ray actors (medret.transports.ray.RayShardHost) and a sharded dense retriever through the Ray backend,
checked against the unsharded search and an independent brute force (tests/index/test_sharded.py)."""
from __future__ import annotations

import numpy as np
import pytest

from medret.index.sharded import exact_topk_slice, plan_shards
from tests.index.test_sharded import brute_force, tied_data


@pytest.mark.integration
def test_shards_as_ray_actors_equal_unsharded_and_dense_index(ray_cluster):
    """Random float data over 3 Ray actors == one unsharded exact search == medret's DenseIndex (no ties here)."""
    from medret.index.dense import DenseIndex

    rng = np.random.default_rng(7)
    X = rng.standard_normal((3000, 24)).astype(np.float32)
    Q = rng.standard_normal((13, 24)).astype(np.float32)
    from medret.index.sharded import shard_embeddings
    from medret.transports.ray import RayShardHost

    idx = shard_embeddings(X, 3, RayShardHost("", actor_options={"num_cpus": 0}), block=256)
    try:
        where = idx.describe()
        assert [(w["start"], w["end"]) for w in where] == plan_shards(3000, 3, 256)
        assert len({w["pid"] for w in where}) == 3  # three separate actor processes
        for k in (1, 10, 100):
            ss, sr = idx.search(Q, k)
            us, ur = exact_topk_slice(X, Q, k, 0, block=256)
            assert np.array_equal(sr, ur) and np.array_equal(ss, us)
            ds, dr = DenseIndex.build(X).search(Q, k)
            assert np.array_equal(sr, dr)
            np.testing.assert_allclose(ss, ds, rtol=1e-5, atol=1e-5)
        # with ties: still equal to the brute force definition
        Xt, Qt = tied_data(5)
        tidx = shard_embeddings(Xt, 4, RayShardHost("", actor_options={"num_cpus": 0}), block=64)
        bs, br = brute_force(Xt, Qt, 50, 64)
        ts, tr = tidx.search(Qt, 50)
        assert np.array_equal(tr, br) and np.array_equal(ts, bs)
        tidx.close()
    finally:
        idx.close()


@pytest.mark.integration
def test_sharded_dense_retriever_through_the_ray_backend(ray_cluster, toy_corpus, tiny_bert_dir, monkeypatch):
    """A dense retriever whose index is split over 2 shard actors answers exactly like the local retriever."""
    from medret import get_retriever
    from medret.transports.ray import kill_actors

    monkeypatch.setenv("MEDRET_RAY_JOB", "sharded-test")
    opts = dict(pooling="cls", device="cpu")
    local = get_retriever(str(toy_corpus), str(tiny_bert_dir), **opts)
    queries = ["sepsis in the elderly", "kidney injury", "stroke risk", "insulin"]
    want = local.search(queries, 5)  # builds the index the actors then load (same files)
    remote = get_retriever(str(toy_corpus), str(tiny_bert_dir), backend="ray", ray_address=ray_cluster["address"],
                           ray_shards=2, **opts)
    try:
        got = remote.search(queries, 5)
        assert [[h.id for h in row] for row in got] == [[h.id for h in row] for row in want]
        np.testing.assert_allclose([[h.score for h in row] for row in got], [[h.score for h in row] for row in want],
                                   rtol=1e-5, atol=1e-5)
        shards = remote.info()["ray"]["shards"][0]
        assert len(shards) == 2 and shards[0]["end"] == shards[1]["start"]
        assert {s["source"] for s in shards} == {"npy"}  # each shard mapped its own rows from the index files
    finally:
        kill_actors(remote.config)
