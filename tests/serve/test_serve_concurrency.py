"""Many concurrent clients: no errors, every answer equals the in-process one, requests are merged into batches."""
from __future__ import annotations

import random
import threading

import pytest
import requests

from medret import get_retriever
from medret.config import RetrieverConfig
from medret.serve.app import ServeSettings

N_CLIENTS = 64
PER_CLIENT = 4


def run_clients(srv, jobs_per_client, expected):
    barrier = threading.Barrier(len(jobs_per_client))
    failures: list[str] = []

    def client(jobs):
        session = requests.Session()
        barrier.wait()
        for j in jobs:
            queries, topk, scores = j
            r = session.post(srv.url, json={"queries": queries, "topk": topk, "return_scores": scores}, timeout=60)
            if r.status_code != 200:
                failures.append(f"HTTP {r.status_code}: {r.text[:200]}")
            elif r.json() != expected[id(j)]:
                failures.append(f"wrong answer for {queries[:2]}... topk={topk}")
        session.close()

    threads = [threading.Thread(target=client, args=(jobs,)) for jobs in jobs_per_client]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return failures


@pytest.mark.parametrize("max_wait_ms", [0.0, 5.0])
def test_64_concurrent_clients_mixed_batches(pubmedqa_corpus, pubmedqa_data, serve_thread, max_wait_ms):
    from medret.eval.pubmedqa import queries_and_qrels

    questions, _ = queries_and_qrels(pubmedqa_data)
    local = get_retriever(str(pubmedqa_corpus), "BM25")
    rng = random.Random(21)
    jobs_per_client = []
    expected = {}
    for _ in range(N_CLIENTS):
        jobs = []
        for _ in range(PER_CLIENT):
            n = rng.choice([1, 1, 2, 3, 8, 16, 40])
            job = ([rng.choice(questions) for _ in range(n)], rng.choice([3, 5]), rng.random() < 0.8)
            expected[id(job)] = local.retrieve(*job)
            jobs.append(job)
        jobs_per_client.append(jobs)
    srv = serve_thread(RetrieverConfig(corpus_name=str(pubmedqa_corpus), retriever_name="BM25"),
                       ServeSettings(max_batch_queries=256, max_wait_ms=max_wait_ms))
    failures = run_clients(srv, jobs_per_client, expected)
    assert failures == []
    stats = requests.get(srv.base + "/stats", timeout=30).json()
    n_requests = N_CLIENTS * PER_CLIENT
    assert stats["requests_served"] == n_requests and stats["requests_failed"] == 0
    assert stats["queries_received"] == sum(len(j[0]) for jobs in jobs_per_client for j in jobs)
    assert stats["largest_batch"] <= 256
    # merged: fewer engine calls than requests (each call is one topk group of one merged batch)
    assert stats["batches_run"] < n_requests, stats
    assert stats["requests_batched"] == n_requests
    assert stats["queries_searched"] <= stats["queries_received"]
